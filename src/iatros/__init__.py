"""Iatros: a self-hosted AI gateway and orchestrator for clinical assistants."""

__version__ = "0.1.0"
