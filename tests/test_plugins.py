"""Plugins through entry points: a third party's are picked up, a broken one is skipped.

Each test installs a real distribution the way pip would leave it: a package directory
and a ``*.dist-info`` folder with ``METADATA`` and ``entry_points.txt``, put on
``sys.path``. ``importlib.metadata`` then finds its entry points beside Iatros's own
built-ins, which register in the same groups.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from iatros import plugins
from iatros.cache import CacheSettings, ResponseCache
from iatros.knowledge import KnowledgeBase, KnowledgeSettings, supported_extensions
from iatros.knowledge.parsers import registry
from iatros.tools import ToolContext, load_tools, openai_tool
from tests.knowledge.conftest import hashing_embed

RTF_PARSER = """
from iatros.knowledge.document import Block, ParsedDocument
from iatros.knowledge.types import IngestError

class RtfParser:
    content_type = "rtf"
    extensions = (".rtf",)

    def check(self, head: bytes) -> None:
        if not head.startswith(b"{\\\\rtf"):
            raise IngestError("not an RTF file")

    def parse(self, data: bytes) -> ParsedDocument:
        words = [w for w in data.decode("ascii").split() if not w.startswith(("{", "\\\\"))]
        return ParsedDocument("rtf", [Block(" ".join(w.strip("}") for w in words))])

class NotAParser:
    content_type = "nothing"
"""

CACHE_BACKEND = """
from iatros.cache.backends.memory import MemoryBackend

STARTED = []

class AcmeBackend(MemoryBackend):
    name = "acme"

    async def start(self) -> None:
        STARTED.append(self)
        await super().start()

def factory(settings, hooks):
    return AcmeBackend(settings.max_memory_bytes, clock=hooks.clock)
"""

TOOLS = """
from iatros.tools import ToolContext, ToolResult

class Dose:
    name = "pediatric_dose"
    description = "Weight-based dose of a drug for a child."
    parameters = {"type": "object", "properties": {"kg": {"type": "number"}}}

    async def __call__(self, arguments, context: ToolContext) -> ToolResult:
        return ToolResult(f"{arguments['kg'] * 15} mg", {"tenant": context.tenant})

class BadName:
    name = "no spaces allowed"
    description = "x"
    parameters = {"type": "object"}

    async def __call__(self, arguments, context):
        raise AssertionError
"""


def install(
    root: Path, dist: str, modules: dict[str, str], groups: dict[str, dict[str, str]]
) -> None:
    """Lay out ``dist`` as an installed distribution under ``root`` (on sys.path)."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_report()
    registry.reload()
    yield root
    for name in [m for m in sys.modules if m.startswith("acme_")]:
        del sys.modules[name]
    registry.reload()  # (the fixture's sys.path entry is gone again)


def skipped(group: str) -> dict[str, str | None]:
    return {
        s.name: s.error
        for s in plugins.plugin_report()
        if s.group == group and s.state == "skipped"
    }


def test_a_broken_parser_plugin_is_skipped_and_the_others_work(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install(
        site,
        "acme-parsers",
        {"acme_rtf": RTF_PARSER, "acme_broken": "raise RuntimeError('missing native library')"},
        {
            "iatros.parsers": {
                "rtf": "acme_rtf:RtfParser",
                "broken": "acme_broken:Parser",
                "hollow": "acme_rtf:NotAParser",
            }
        },
    )
    with caplog.at_level(logging.WARNING, logger="iatros.plugins"):
        extensions = supported_extensions()
    assert extensions[".rtf"] == "rtf"
    assert {".pdf", ".docx", ".md", ".html", ".txt"} <= set(extensions)  # built-ins unaffected
    problems = skipped(plugins.PARSERS)
    assert problems.keys() == {"broken", "hollow"}
    assert "missing native library" in (problems["broken"] or "")
    assert "not a parser" in (problems["hollow"] or "")
    logged = {(r.getMessage(), getattr(r, "plugin", None)) for r in caplog.records}
    assert {("plugin skipped", "broken"), ("plugin skipped", "hollow")} <= logged
    loaded = {s.name for s in plugins.plugin_report() if s.state == "loaded"}
    assert {"rtf", "pdf", "docx", "markdown", "html", "text"} <= loaded


async def test_a_third_party_parser_is_used_for_ingestion(site: Path, tmp_path: Path) -> None:
    install(
        site,
        "acme-parsers",
        {"acme_rtf": RTF_PARSER},
        {"iatros.parsers": {"rtf": "acme_rtf:RtfParser"}},
    )
    kb = KnowledgeBase(KnowledgeSettings(), tmp_path / "data", hashing_embed())
    await kb.start()
    try:
        report = await kb.ingest_file(
            "t", "c", rb"{\rtf1 Tetanus booster every ten years}", "note.rtf"
        )
        assert (report.status, report.content_type) == ("indexed", "rtf")
        hits = await kb.search("t", "c", "tetanus booster")
        assert hits[0].document == "note.rtf" and "Tetanus booster" in hits[0].text
        misnamed = await kb.ingest_file("t", "c", b"plain text", "fake.rtf")
        assert misnamed.error == "not an RTF file"
    finally:
        await kb.close()


async def test_a_third_party_cache_backend_is_chosen_by_name(site: Path) -> None:
    install(
        site,
        "acme-cache",
        {"acme_cache": CACHE_BACKEND},
        {"iatros.cache_backends": {"acme": "acme_cache:factory"}},
    )
    cache = ResponseCache(CacheSettings(backend="acme"))
    await cache.start()
    try:
        assert cache.backend.name == "acme"
        started = sys.modules["acme_cache"].STARTED
        assert len(started) == 1 and started[0] is cache.backend
    finally:
        await cache.close()
    with pytest.raises(
        ValidationError, match=r"unknown cache backend 'acme2' \(registered: acme, memory, redis\)"
    ):
        CacheSettings(backend="acme2")


async def test_a_knowledge_backend_that_cannot_load_is_named(site: Path, tmp_path: Path) -> None:
    install(
        site,
        "acme-index",
        {"acme_index": "import not_installed_engine"},
        {"iatros.knowledge_backends": {"acme": "acme_index:factory"}},
    )
    with pytest.raises(ValidationError, match="unknown knowledge backend 'nope'"):
        KnowledgeSettings(backend="nope")
    kb = KnowledgeBase(KnowledgeSettings(backend="acme"), tmp_path / "data", hashing_embed())
    with pytest.raises(plugins.PluginError, match=r"acme_index:factory.*not_installed_engine"):
        await kb.start()
    await kb.close()
    assert "not_installed_engine" in (skipped(plugins.KNOWLEDGE_BACKENDS)["acme"] or "")


BUILT_IN_TOOLS = (
    "datetime_now",
    "dental_red_flags",
    "dose_by_weight",
    "http_get",
    "knowledge_search",
    "review_ask",
    "scribe_note",
)


async def test_tools_are_loaded_and_bad_ones_skipped(site: Path) -> None:
    install(
        site,
        "acme-tools",
        {"acme_tools": TOOLS},
        {
            "iatros.tools": {
                "dose": "acme_tools:Dose",
                "bad": "acme_tools:BadName",
                "gone": "acme_gone:X",
            }
        },
    )
    tools = load_tools()
    assert set(tools) == {"pediatric_dose", *BUILT_IN_TOOLS}  # beside the built-ins
    result = await tools["pediatric_dose"]({"kg": 20}, ToolContext(tenant="t", request_id="r"))
    assert (result.content, result.data) == ("300 mg", {"tenant": "t"})
    assert openai_tool(tools["pediatric_dose"])["function"]["name"] == "pediatric_dose"
    problems = skipped(plugins.TOOLS)
    assert problems.keys() == {"bad", "gone"}
    assert "unusable tool name" in (problems["bad"] or "")
    assert "ModuleNotFoundError" in (problems["gone"] or "")


def test_the_built_ins_register_through_entry_points() -> None:
    assert plugins.available(plugins.CACHE_BACKENDS) == ["memory", "redis"]
    assert plugins.available(plugins.KNOWLEDGE_BACKENDS) == ["embedded", "postgres", "qdrant"]
    assert plugins.available(plugins.PARSERS) == ["docx", "html", "markdown", "pdf", "text"]
    assert plugins.available(plugins.TOOLS) == sorted(BUILT_IN_TOOLS)


def test_the_inventory_lists_every_group_without_importing(site: Path) -> None:
    install(site, "acme-tools", {}, {"iatros.tools": {"gone": "acme_gone:X"}})
    load_tools()
    rows = {(s.group, s.name): s for s in plugins.inventory()}
    assert rows[(plugins.TOOLS, "gone")].state == "skipped"
    assert rows[(plugins.KNOWLEDGE_BACKENDS, "qdrant")].state in ("available", "loaded")
    assert rows[(plugins.PROVIDERS, "local")].distribution == "iatros"
    assert {g for g, _ in rows} == set(plugins.GROUPS)  # (tools: the one installed here)
