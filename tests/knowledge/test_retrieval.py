"""Retrieval and grounding with the real MiniLM model: right document, right page, escalation."""

from __future__ import annotations

from pathlib import Path

import pytest

from iatros.knowledge import KnowledgeSettings, Passage, grounding

from .conftest import Embed, open_kb

pytestmark = pytest.mark.model

T = "clinic-a"
QUESTIONS = [
    ("How many puffs of salbutamol during an asthma attack?", "docs/asthma-guideline.pdf", 2),
    ("What material seals the canals after a root canal?", "docs/dental-protocol.docx", 2),
    ("At what age is the MMR vaccine given?", "docs/vaccines.md", None),
    ("When is the clinic open?", "docs/clinic-hours.html", None),
    ("What starting dose of metformin should I use?", "docs/diabetes.txt", None),
]
OUT_OF_SCOPE = [
    "Who won the football world cup in 1998?",
    "How do I reset my wifi router password?",
    "Quelle est la capitale du Canada ?",
]


@pytest.mark.parametrize("backend", ["embedded", "qdrant"])
async def test_citations_point_at_the_right_document_and_page(
    tmp_path: Path, corpus_dir: Path, embed: Embed, backend: str
) -> None:
    async with open_kb(tmp_path / "data", embed, backend=backend) as kb:
        report = await kb.ingest_paths(T, "docs", [corpus_dir])
        assert not report.errors
        for mode in ("hybrid", "dense", "lexical"):
            for question, document, page in QUESTIONS:
                passages = await kb.search(T, "docs", question, k=3, mode=mode)
                assert (passages[0].document, passages[0].page) == (document, page), (
                    mode,
                    question,
                )
        passages = await kb.search(T, "docs", QUESTIONS[0][0], k=3)
        sources = grounding.sources_payload(passages)
        assert sources[0]["index"] == 1
        assert (sources[0]["document"], sources[0]["page"]) == ("docs/asthma-guideline.pdf", 2)
        assert "salbutamol" in sources[0]["snippet"]
        assert 0.0 <= sources[0]["score"] <= 1.0


async def test_out_of_scope_questions_escalate(
    tmp_path: Path, corpus_dir: Path, embed: Embed
) -> None:
    min_score = KnowledgeSettings().min_score
    async with open_kb(tmp_path / "data", embed) as kb:
        await kb.ingest_paths(T, "docs", [corpus_dir])
        for question, _, _ in QUESTIONS:
            passages = await kb.search(T, "docs", question)
            assert not grounding.should_escalate(passages, min_score), question
            assert grounding.confidence(passages) > 0.5
        for question in OUT_OF_SCOPE:
            passages = await kb.search(T, "docs", question)
            assert grounding.should_escalate(passages, min_score), question
            assert grounding.confidence(passages) < 0.5
    assert grounding.no_answer_text(OUT_OF_SCOPE[2]) == grounding.NO_ANSWER_TEXT_FR
    assert grounding.no_answer_text(OUT_OF_SCOPE[0]) == grounding.NO_ANSWER_TEXT


async def test_grounded_prompt_numbers_the_sources(
    tmp_path: Path, corpus_dir: Path, embed: Embed
) -> None:
    async with open_kb(tmp_path / "data", embed) as kb:
        await kb.ingest_paths(T, "docs", [corpus_dir])
        question = QUESTIONS[0][0]
        passages = await kb.search(T, "docs", question, k=3)
    messages = grounding.build_grounded_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        passages,
    )
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and messages[1:][1]["content"] == question
    assert "[1] docs/asthma-guideline.pdf, page 2: " in system
    assert "[3] " in system and "[4] " not in system
    assert grounding.NO_ANSWER_TEXT in system
    assert len(system) < 3000 + 600


def _passage(score: float, text: str = "text", page: int | None = 1) -> Passage:
    return Passage("d1", "doc.pdf", page, "1", text, text[:50], score)


def test_confidence_and_escalation_are_consistent() -> None:
    low, mid, high = _passage(0.1), _passage(KnowledgeSettings().min_score), _passage(0.9)
    assert grounding.confidence([]) == 0.0
    assert (
        grounding.confidence([low])
        < grounding.confidence([mid])
        < grounding.confidence([high])
        <= 1.0
    )
    assert grounding.should_escalate([], 0.3)
    assert grounding.should_escalate([low], 0.3)
    assert not grounding.should_escalate([low, high], 0.3)


def test_prompt_budget_and_citations() -> None:
    long_text = " ".join(f"Sentence {i} about dosage of amoxicillin." for i in range(200))
    passages = [_passage(0.8, long_text), _passage(0.7, "Short.", page=None)]
    messages = grounding.build_grounded_messages(
        [{"role": "user", "content": [{"type": "text", "text": "amoxicillin dosage?"}]}],
        passages,
        max_chars=1000,
    )
    system = messages[0]["content"]
    assert len(system) < 1600
    assert "[2] doc.pdf: Short." in system  # no page: no "page" label
    assert grounding.cited_sources("Take 500 mg [2][1], see [2] and [9].", 2) == [2, 1]
    fr = grounding.build_grounded_messages(
        [{"role": "user", "content": "Quelle dose d'amoxicilline pour un enfant ?"}], passages
    )
    assert grounding.NO_ANSWER_TEXT_FR in fr[0]["content"]
