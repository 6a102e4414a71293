"""The clinical scribe: consultation audio or transcript → draft note → sign-off → export."""
