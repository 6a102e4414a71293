"""Index engines behind one interface (:class:`SearchBackend`), chosen by configuration."""

from iatros.knowledge.backends.base import SearchBackend

__all__ = ["SearchBackend"]
