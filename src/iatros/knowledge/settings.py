"""Knowledge-base settings: one pydantic model the gateway config can embed as a section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iatros.plugins import KNOWLEDGE_BACKENDS, check_registered


class KnowledgeSettings(BaseModel):
    """How documents are chunked, where the indexes live and when answers escalate.

    ``backend`` picks the index engine: ``embedded`` (tantivy BM25 + usearch HNSW files
    under the data directory, no server), ``qdrant`` (dense and BM25-style sparse vectors
    with each chunk's text and metadata in Qdrant, so instances on one Qdrant server
    search each other's documents; ``qdrant_url=None`` runs qdrant-client's local mode,
    one process only, which is what the tests use) or a plugin's. The metadata database
    (document lists, versions, jobs) is SQLite under the data directory in every case.
    """

    model_config = ConfigDict(extra="forbid")

    backend: str = "embedded"
    """An ``iatros.knowledge_backends`` entry point: ``embedded``, ``qdrant`` or a plugin's."""
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: str | None = None
    """Local mode only (no ``qdrant_url``): the directory, ``<data_dir>/knowledge/qdrant``
    by default. One process at a time may open it."""
    postgres_url: str | None = None
    """``backend: postgres``: the PostgreSQL database holding the shared chunk table
    (usually the one in ``database_url``; in YAML ``${IATROS_DATABASE_URL}``)."""
    qdrant_collection: str = "iatros_chunks"
    """The one Qdrant collection holding every tenant's chunks (payload-partitioned)."""

    chunk_tokens: int = Field(500, ge=32, le=8192)
    """Target chunk size in approximate tokens (regex word/punctuation tokens)."""
    chunk_overlap: int = Field(50, ge=0)
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1)
    """Files over this size are refused from their size alone, before being read."""
    archive_max_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024)
    """What one document may expand to: the members of a zip-based file (DOCX) together,
    or the decompressed page contents of a PDF. A 50 MiB DOCX of photos is about 50 MiB
    expanded; a 444 KB DOCX holding a 400 MiB zero-filled part is refused before it is
    expanded (see iatros.knowledge.archives)."""
    archive_max_markup_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    """XML inside a zip-based file, together: it becomes an lxml tree several times its
    size in memory, so it gets a smaller limit (32 MiB is thousands of pages of text)."""
    archive_max_ratio: float = Field(200.0, ge=10.0)
    """Largest expanded:compressed ratio of one zip member (or of a PDF's contents), for
    anything over 1 MiB expanded. Text and XML compress 3-30:1; zeros about 1000:1."""
    archive_max_entries: int = Field(10_000, ge=16)
    """Members of a zip-based file (a DOCX has tens, plus one per image)."""
    archive_max_xml_tags: int = Field(2_000_000, ge=1000)
    """Tags (``<``) in the XML of a zip-based file, together: each becomes a tree node
    (about 100 bytes in lxml, then walked in Python). Word writes one every 20-40 bytes,
    so 2 million covers the XML limit; 30 MiB of empty paragraphs would be 5 million."""
    pdf_max_stream_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)
    """Largest decompressed PDF stream (pypdf's own default is 75 MB); a page's text
    is typically tens of KB. Over it, the PDF is refused as a decompression bomb."""
    embed_batch: int = Field(64, ge=1, le=4096)
    """Texts per call to the embedding function (batches span several small files)."""

    top_k: int = Field(5, ge=1, le=100)
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Escalate when the best passage's relevance (query-passage cosine) is below this.

    Calibrated on PubMedQA (bench/results/knowledge-summary.md): at 0.5, 98% of answerable
    questions are answered, 70% of same-domain questions whose abstract is not indexed and
    100% of off-topic ones escalate. 0.575 balances the two (94% / 93%) but escalates
    paraphrased questions that PubMedQA's title-like questions do not represent."""
    verification: Literal["withhold", "flag", "off"] = "withhold"
    """What happens to a grounded answer with a decisive detail (a dose, a drug, a side, a
    negation) its sources do not support (``iatros.gateway.verification``): ``withhold``
    it, quote the closest source and pass the question to a reviewer; ``flag`` the detail
    and quote the source beside the answer; ``off``: no check. Per route:
    ``models.<name>.verification``."""
    reviewed_min_overlap: float = Field(0.6, ge=0.0, le=1.0)
    """A reviewer's saved answer (a review answered "save to knowledge") is given verbatim
    when it is the best relevant passage, its question shares at least this share of
    content words with the one asked (Jaccard) and has the same clinical details: a
    human's answer is not paraphrased by a model."""
    fusion: Literal["zscore", "rrf"] = "zscore"
    """How hybrid search merges the dense and BM25 lists.

    ``zscore`` (default): each list's scores are standardised over its candidates and
    added with ``dense_weight``; ``rrf``: reciprocal rank fusion with ``rrf_k``. On
    PubMedQA mixed with hard distractors, RRF ranked the gold abstract first less often
    than BM25 alone (0.934 vs 0.944) while z-score fusion beat both (0.974); see
    bench/results/knowledge-summary.md."""
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    rrf_k: int = Field(60, ge=1)
    candidates: int = Field(100, ge=1, le=10_000)
    """Hits taken from each of the dense and lexical indexes before fusion."""

    job_lease_s: float = Field(60.0, gt=0)
    """How long a claimed upload job stays with its worker without a heartbeat (renewed
    every third of it); a job of a worker that died is taken over after this."""
    job_poll_s: float = Field(5.0, gt=0)
    """How often a worker looks for jobs it did not submit (queued elsewhere, or orphaned)."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        return check_registered(KNOWLEDGE_BACKENDS, name, "knowledge backend")

    @model_validator(mode="after")
    def _check(self) -> KnowledgeSettings:
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError("chunk_overlap must be less than half of chunk_tokens")
        return self
