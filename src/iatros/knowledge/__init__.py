"""Knowledge base: ingest documents, retrieve passages (hybrid BM25 + dense), ground answers.

The public surface is re-exported here; the modules behind it are private details.
``SUPPORTED_EXTENSIONS`` lists the built-in formats; :func:`supported_extensions` also
counts the parser plugins installed.

    kb = KnowledgeBase(KnowledgeSettings(), data_dir, embed)
    await kb.start()
    await kb.ingest_paths("clinic-a", "protocols", [Path("docs/")])
    passages = await kb.search("clinic-a", "protocols", "amoxicillin dose in children")
"""

from iatros.knowledge import grounding
from iatros.knowledge.chunking import Chunk, Chunker
from iatros.knowledge.context import EmbedFn
from iatros.knowledge.ingestion import ProgressFn
from iatros.knowledge.parsers import Parser, supported_extensions
from iatros.knowledge.parsing import EXTENSIONS as SUPPORTED_EXTENSIONS
from iatros.knowledge.retrieval import RerankFn, reciprocal_rank_fusion, zscore_fusion
from iatros.knowledge.service import KnowledgeBase
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.types import (
    CollectionInfo,
    DocumentInfo,
    FileReport,
    IngestError,
    IngestReport,
    InvalidFilter,
    InvalidName,
    JobStatus,
    KnowledgeError,
    NotFound,
    Passage,
    SearchMode,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "Chunker",
    "CollectionInfo",
    "DocumentInfo",
    "EmbedFn",
    "FileReport",
    "IngestError",
    "IngestReport",
    "InvalidFilter",
    "InvalidName",
    "JobStatus",
    "KnowledgeBase",
    "KnowledgeError",
    "KnowledgeSettings",
    "NotFound",
    "Parser",
    "Passage",
    "ProgressFn",
    "RerankFn",
    "SearchMode",
    "grounding",
    "reciprocal_rank_fusion",
    "supported_extensions",
    "zscore_fusion",
]
