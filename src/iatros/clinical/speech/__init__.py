"""Speech to text: audio checks, the transcriber service, hallucination filtering, formats."""
