"""Clinical features built on the gateway's services: the scribe (speech → transcript →
note → sign-off → PDF and FHIR). They ask models only through ``ChatService`` and the
``Transcriber``, so routing, governance, usage and audit apply to them as to any caller."""
