"""Knowledge-base settings: one pydantic model the gateway config can embed as a section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class KnowledgeSettings(BaseModel):
    """How documents are chunked, where the indexes live and when answers escalate.

    ``backend`` picks the index engine: ``embedded`` (tantivy BM25 + usearch HNSW files
    under the data directory, no server) or ``qdrant`` (dense and BM25-style sparse
    vectors in Qdrant; ``qdrant_url=None`` runs qdrant-client's local mode under the data
    directory, which is what the tests use). Metadata always lives in SQLite.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["embedded", "qdrant"] = "embedded"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "iatros_chunks"
    """The one Qdrant collection holding every tenant's chunks (payload-partitioned)."""

    chunk_tokens: int = Field(500, ge=32, le=8192)
    """Target chunk size in approximate tokens (regex word/punctuation tokens)."""
    chunk_overlap: int = Field(50, ge=0)
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1)
    """Files over this size are refused from their size alone, before being read."""
    embed_batch: int = Field(64, ge=1, le=4096)
    """Texts per call to the embedding function (batches span several small files)."""

    top_k: int = Field(5, ge=1, le=100)
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Escalate when the best passage's relevance (query-passage cosine) is below this.

    Calibrated on PubMedQA (bench/results/knowledge-summary.md): at 0.5, 98% of answerable
    questions are answered, 70% of same-domain questions whose abstract is not indexed and
    100% of off-topic ones escalate. 0.575 balances the two (94% / 93%) but escalates
    paraphrased questions that PubMedQA's title-like questions do not represent."""
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

    @model_validator(mode="after")
    def _check(self) -> KnowledgeSettings:
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError("chunk_overlap must be less than half of chunk_tokens")
        return self
