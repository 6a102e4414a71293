"""Radiographs: DICOM/PNG/JPEG ingestion, de-identification, annotations, reports.

The pieces, each small: :mod:`.formats` (what a file is and whether we can read it),
:mod:`.deid` (the DICOM header profile), :mod:`.burnedin` (text in the pixels),
:mod:`.pixels` (16-bit data → 8-bit renditions with window/level), :mod:`.models` and
:mod:`.records` (sealed storage), :mod:`.service` (what the API and jobs call),
:mod:`.report` and :mod:`.fhir` (exports). ``findings.py`` (AI findings through a vision
model) is the vision part's.
"""
