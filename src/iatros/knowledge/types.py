"""The knowledge base's data at its boundary: plain dataclasses and its errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SearchMode = Literal["hybrid", "dense", "lexical"]
FileStatus = Literal["indexed", "replaced", "skipped", "error"]
JobState = Literal["queued", "running", "done", "failed"]


class KnowledgeError(Exception):
    """Base class of the knowledge base's errors (the API maps them to 4xx)."""


class InvalidName(KnowledgeError, ValueError):
    """A tenant, collection or document name that cannot be used."""


class InvalidFilter(KnowledgeError, ValueError):
    """A search filter naming an unknown field or an unusable value."""


class NotFound(KnowledgeError, LookupError):
    """No such collection, document or job for this tenant (or another tenant's)."""


class IngestError(KnowledgeError):
    """One file could not be ingested; the message is meant for the user.

    ``code`` names the kind of failure so that an interface can say it in the user's
    language (the web app's ``ingest.<code>`` texts); ``params`` fill its placeholders.
    The English message stays the reference and is what the API and logs carry.
    """

    code = "unreadable_file"

    def __init__(self, message: str, *, code: str | None = None, **params: str) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.params = params


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk.

    ``score`` is a relevance in [0, 1] (the cosine similarity of the query and passage
    embeddings, clipped at 0; in ``lexical`` mode a squashed BM25 score) and is what
    ``min_score`` is compared with. ``rank_score`` is the value results are ordered by
    (reciprocal-rank-fusion score, BM25 or cosine, depending on the mode).
    """

    document_id: str
    document: str
    page: int | None
    chunk_id: str
    text: str
    snippet: str
    score: float
    rank_score: float = 0.0
    section: str | None = None
    collection: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class FileReport:
    """What happened to one file: ``status`` plus a user-readable ``error`` or ``reason``."""

    filename: str
    status: FileStatus
    document_id: str | None = None
    chunks: int = 0
    pages: int | None = None
    content_type: str | None = None
    reason: str | None = None
    error: str | None = None
    code: str | None = None
    """With ``error``: its kind (``empty_file``, ``unsupported_type``, …), see IngestError."""
    params: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileReport:
        return cls(**data)


@dataclass(slots=True)
class IngestReport:
    """The summary of a run over several files."""

    files: int = 0
    indexed: int = 0
    chunks: int = 0
    skipped: int = 0
    errors: list[FileReport] = field(default_factory=list)
    reports: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, report: FileReport) -> None:
        self.files += 1
        self.reports.append(report)
        if report.status == "error":
            self.errors.append(report)
        elif report.status == "skipped":
            self.skipped += 1
        else:
            self.indexed += 1
            self.chunks += report.chunks

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "indexed": self.indexed,
            "chunks": self.chunks,
            "skipped": self.skipped,
            "errors": [{"filename": e.filename, "error": e.error} for e in self.errors],
            "seconds": round(self.seconds, 3),
            "reports": [r.to_dict() for r in self.reports],
        }


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: str
    name: str
    content_type: str
    content_hash: str
    bytes: int
    pages: int | None
    chunks: int
    created_at: float
    updated_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    version: str
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class JobStatus:
    id: str
    collection: str
    state: JobState
    created_at: float
    updated_at: float
    files: list[str]
    results: list[FileReport] = field(default_factory=list)
    error: str | None = None

    @property
    def summary(self) -> IngestReport:
        report = IngestReport()
        for result in self.results:
            report.add(result)
        return report

    def to_dict(self) -> dict[str, Any]:
        summary = self.summary.to_dict()
        summary.pop("reports")
        return {
            "id": self.id,
            "collection": self.collection,
            "state": self.state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "files": self.files,
            "results": [r.to_dict() for r in self.results],
            "summary": summary,
            "error": self.error,
        }
