"""Exports of a scribe encounter: a PDF for people, an HL7 FHIR R4 document for systems."""
