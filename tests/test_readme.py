"""The claims of the README and the documentation site that a machine can check: cited
results files, route examples, the README's commands and picture.

The README is one screen; what it used to say lives in the site's pages (``docs/``), so
the checks read both. Every figure they quote must come from a committed results file
(DESIGN.md), so a citation of ``bench/results/...`` that names no file is a stale claim: the
figure next to it has lost its source. The same holds for the docstrings in ``src/`` and
``bench/`` that justify a choice by a measurement. And the ``x-iatros-route`` examples
must be in the format the gateway really sends: the grammar below is checked against real
responses first, then the pages' examples against the grammar, so a change of format
fails here until the docs follow. The README's two commands must be Makefile targets, its
links must point at pages that exist, and its picture of the web app (made by
``tests/web/test_readme_picture.py``) must be committed.
"""

from __future__ import annotations

import glob
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SITE_PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOCS = [README, ROOT / "bench" / "README.md", *SITE_PAGES]
SOURCES = sorted((ROOT / "src" / "iatros").rglob("*.py")) + sorted((ROOT / "bench").glob("*.py"))

CITATION = re.compile(r"bench/results/[\w.*<>{},/-]*")

_NAME = r"[\w.:/-]+"
_TRIED = rf"; tried=(?:{_NAME}(?:>{_NAME})*|none)"
ROUTE = re.compile(
    rf"(?:direct"
    rf"|{_NAME}(?:; (?:experiment|rollout)={_NAME})?(?:; release={_NAME})?; (?:"
    rf"strategy=\w+(?:; [^;]+)?; pick={_NAME}"
    rf"(?:; skipped={_NAME}\((?:context|text-only|breaker-[\w-]+)\))?"
    rf"|pinned={_NAME}"
    rf"|cache=(?:exact|semantic)(?:; similarity=\d\.\d{{3}})?"
    rf"|knowledge={_NAME}; escalate"
    rf"))(?:; panic)?(?:{_TRIED})?"
)
"""The grammar of ``x-iatros-route``: ``direct``, or the logical model followed by why
(``routing.router``: strategy and pick, a pin; ``gateway.caching``: a cache hit;
``gateway.chat``: a grounded request with nothing to ground it), then what the call did
(``gateway.pipeline``: panic routing, the deployments tried)."""


def _expand(citation: str) -> list[str]:
    """``a.{json,md}`` -> ``a.json``, ``a.md``; ``<date>`` and ``*`` become glob wildcards."""
    citation = citation.rstrip(".,")
    braces = re.search(r"\{([^{}]*)\}", citation)
    if braces is None:
        return [re.sub(r"<[^>]*>", "*", citation)]
    options = braces.group(1).split(",")
    return list(
        itertools.chain.from_iterable(
            _expand(citation[: braces.start()] + option + citation[braces.end() :])
            for option in options
        )
    )


def missing_citations(text: str) -> list[str]:
    """The ``bench/results/...`` paths cited in ``text`` that match no file."""
    missing = []
    for citation in CITATION.findall(text):
        for path in _expand(citation):
            if not glob.glob(str(ROOT / path)):
                missing.append(path)
    return missing


def route_examples(markdown: str) -> list[str]:
    """The inline-code examples that follow a mention of ``x-iatros-route`` in a paragraph
    (header names aside)."""
    examples = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        _, found, after = paragraph.partition("`x-iatros-route`")
        if not found:
            continue
        for span in re.findall(r"`([^`\n]+)`", after):
            if not span.startswith("x-"):  # header names
                examples.append(span)
    return examples


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_results_file_exists(doc: Path) -> None:
    assert missing_citations(doc.read_text()) == []


def test_every_results_file_cited_in_code_exists() -> None:
    missing = {
        str(path.relative_to(ROOT)): found
        for path in SOURCES
        if (found := missing_citations(path.read_text()))
    }
    assert missing == {}


def test_the_citation_check_sees_a_missing_file() -> None:
    text = (
        "see bench/results/latest.md and bench/results/knowledge-libs.md; written to "
        "bench/results/<date>.json and bench/results/knowledge-nothing.{json,md}."
    )
    assert missing_citations(text) == [
        "bench/results/knowledge-libs.md",
        "bench/results/knowledge-nothing.json",
        "bench/results/knowledge-nothing.md",
    ]


def test_the_route_grammar_matches_what_the_gateway_sends(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    config = upstream_config(upstream, cache={"enabled": True})
    config["models"]["triage"] = {
        "strategy": "complexity",
        "deployments": ["fake-gpt", "fake-azure-gpt"],
        "complexity": {"small": "fake-gpt", "large": "fake-azure-gpt", "threshold": 0.5},
    }
    server = server_factory(config)
    question = [{"role": "user", "content": "What is ibuprofen?"}]
    clinical = [
        {
            "role": "user",
            "content": "Can a patient on warfarin take ibuprofen? What interaction is there, "
            "and what dose adjustment for a child with renal impairment?",
        }
    ]
    bodies: list[dict[str, Any]] = [
        {"model": "assistant", "messages": question},
        {"model": "assistant", "messages": question},  # the same again: a cache hit
        {"model": "assistant", "messages": question, "iatros": {"deployment": "fake-azure-gpt"}},
        {"model": "fake-gpt", "messages": question, "iatros": {"cache": "no-cache"}},
        {"model": "triage", "messages": clinical, "iatros": {"cache": "no-cache"}},
    ]
    with server.http() as http:
        routes = []
        for body in bodies:
            resp = http.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            routes.append(resp.headers["x-iatros-route"])
    assert routes[0] == "assistant; strategy=priority; pick=fake-gpt"
    assert routes[1] == "assistant; cache=exact"
    assert routes[2] == "assistant; pinned=fake-azure-gpt"
    assert routes[3] == "direct"
    assert routes[4].startswith("triage; strategy=complexity; complexity=")
    for route in routes:
        assert ROUTE.fullmatch(route), route


@pytest.mark.parametrize(
    "route",
    [
        "assistant; knowledge=clinic-docs; escalate",
        "assistant; cache=semantic; similarity=0.973",
        "assistant; strategy=priority; pick=gpt-us; skipped=gpt-eu(breaker-open); tried=gpt-us",
        "assistant; strategy=latency; latency=41ms; pick=a; panic; tried=a>b",
    ],
)
def test_the_route_grammar_covers_the_other_outcomes(route: str) -> None:
    assert ROUTE.fullmatch(route)


@pytest.mark.parametrize("route", ["assistant:primary", "assistant:pinned", "assistant; pick="])
def test_the_route_grammar_refuses_other_shapes(route: str) -> None:
    assert not ROUTE.fullmatch(route)


def test_the_route_examples_of_the_docs_are_in_the_real_format() -> None:
    examples = {
        str(page.relative_to(ROOT)): route_examples(page.read_text())
        for page in [README, *SITE_PAGES]
    }
    assert sum(len(found) for found in examples.values()) >= 5, examples
    bad = {page: [e for e in found if not ROUTE.fullmatch(e)] for page, found in examples.items()}
    assert {page: found for page, found in bad.items() if found} == {}


def test_the_readme_is_one_screen_with_its_commands_picture_and_links() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 60, "the README is one screen: move the rest to docs/"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M), target
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "docs/assets/web-app.png" in pictures
    for picture in pictures:
        data = (ROOT / picture).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, picture
    links = [
        link
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
        if not link.startswith(("http://", "https://"))
    ]
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not (ROOT / link).exists()] == []
