"""The faithfulness check, measured: precision and recall of "unsupported", and real answers.

Two parts, both written to ``bench/results/faithfulness.json`` (and ``faithfulness.md``):

``triples``
    every question/passages/answer triple of ``bench/data/faithfulness`` (hand-written
    answers on our practice documents, English and French, and rule-made answers on
    PubMedQA abstracts read in place from ``../shared/data/pubmedqa``) through
    :func:`iatros.gateway.verification.check`. A wrong answer (one decisive detail
    changed) must come out "unsupported"; a correct one (extractive or paraphrased) must
    not. Reported: precision and recall of "unsupported" overall, per wrong kind, per
    language and per source; the false-flag rate on correct answers; every miss and
    every false flag, so a reader can see *why*. Milliseconds, no model.
``model``
    the local model (Gemma 3 270M through ``iatros serve`` with the embedded defaults, on
    a free loopback port) answers grounded questions built with the product's own prompt
    (:func:`iatros.knowledge.grounding.build_grounded_messages`, the passages as the model
    sees them), and each answer is checked against those passages: how often a real
    answer is flagged, with examples. Bounded: ``--practice`` + ``--pubmedqa`` questions,
    ``--budget`` seconds in all, ``--timeout`` per answer.

    python bench/faithfulness_bench.py            # both parts (~10-15 min on 2 cores)
    python bench/faithfulness_bench.py --smoke    # triples only, into a temporary directory
    python bench/faithfulness_bench.py --no-model # triples only, keep the model part on file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "data" / "faithfulness"))
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (the data builder lives with the data)

from iatros.gateway.verification import Verification, check  # noqa: E402

RESULTS = HERE / "results"
TARGET_FALSE_FLAG = 0.10
ADMIN_KEY = "sk-bench-faithfulness-0123456789abcdef"


# -- part 1: the triples ------------------------------------------------------------------


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _scores(rows: Sequence[tuple[build.Triple, bool]]) -> dict[str, Any]:
    """Precision/recall of "unsupported" (positive = wrong answer) over ``rows``."""
    tp = sum(1 for t, flagged in rows if t.wrong and flagged)
    fn = sum(1 for t, flagged in rows if t.wrong and not flagged)
    fp = sum(1 for t, flagged in rows if not t.wrong and flagged)
    tn = sum(1 for t, flagged in rows if not t.wrong and not flagged)
    return {
        "n": len(rows),
        "wrong": tp + fn,
        "correct": fp + tn,
        "flagged_wrong": tp,
        "missed_wrong": fn,
        "flagged_correct": fp,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "false_flag_rate": _ratio(fp, fp + tn),
    }


def _grouped(rows: Sequence[tuple[build.Triple, bool]], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[tuple[build.Triple, bool]]] = defaultdict(list)
    for row in rows:
        groups[key(row[0])].append(row)
    return {k: _scores(v) for k, v in sorted(groups.items())}


def _why(v: Verification) -> list[dict[str, Any]]:
    return [
        {"kind": d.kind, "detail": d.value, "evidence": d.evidence[:160]} for d in v.unsupported
    ]


def evaluate(triples: Iterable[build.Triple]) -> dict[str, Any]:
    rows: list[tuple[build.Triple, bool]] = []
    missed: list[dict[str, Any]] = []
    false_flags: list[dict[str, Any]] = []
    started = time.perf_counter()
    for t in triples:
        v = check(t.answer, t.passages, t.question, "flag")
        flagged = v.status == "unsupported"
        rows.append((t, flagged))
        if t.wrong and not flagged:
            missed.append({"id": t.id, "label": t.label, "swap": t.swap, "answer": t.answer})
        elif not t.wrong and flagged:
            false_flags.append({"id": t.id, "style": t.style, "answer": t.answer, "why": _why(v)})
    elapsed = time.perf_counter() - started
    overall = _scores(rows)
    wrong_kinds = {k: v for k, v in _grouped(rows, lambda t: t.kind).items() if k != "correct"}
    return {
        "count": len(rows),
        "by_label": dict(sorted(Counter(t.label for t, _ in rows).items())),
        "by_source_count": dict(sorted(Counter(t.source for t, _ in rows).items())),
        "check_ms_per_answer": round(1000 * elapsed / max(1, len(rows)), 3),
        "overall": overall,
        "by_kind": {
            k: {"n": v["wrong"], "flagged": v["flagged_wrong"], "recall": v["recall"]}
            for k, v in wrong_kinds.items()
        },
        "by_kind_and_swap": {
            k: {"n": v["wrong"], "flagged": v["flagged_wrong"], "recall": v["recall"]}
            for k, v in _grouped(
                [r for r in rows if r[0].wrong],
                lambda t: f"{t.kind}/{'swap' if t.swap else 'novel'}",
            ).items()
        },
        "by_language": _grouped(rows, lambda t: t.lang),
        "by_source": _grouped(rows, lambda t: t.source),
        "correct_by_style": {
            k: {
                "n": v["correct"],
                "flagged": v["flagged_correct"],
                "false_flag_rate": v["false_flag_rate"],
            }
            for k, v in _grouped([r for r in rows if not r[0].wrong], lambda t: t.style).items()
        },
        "targets": {
            "no_wrong_answer_unflagged": overall["missed_wrong"] == 0,
            "false_flag_rate_at_most_10pct": (overall["false_flag_rate"] or 0.0)
            <= TARGET_FALSE_FLAG,
        },
        "missed": missed,
        "false_flags": false_flags,
    }


# -- part 2: the local model's real answers -----------------------------------------------


def _server_config(models_dir: Path) -> dict[str, Any]:
    """The embedded default chat model alone; no response cache (every answer generated)."""
    from settings import iatros_has_setting

    config: dict[str, Any] = {
        "providers": {"local": {"type": "local", "models_dir": str(models_dir), "max_queue": 4}},
        "deployments": {
            "gemma-3-270m": {
                "provider": "local",
                "model": "gemma-3-270m",
                "context_window": 2048,
                "max_output_tokens": 256,
            },
        },
        "models": {"assistant": {"deployments": ["gemma-3-270m"]}},
        "embeddings": {"default_model": None},
    }
    if iatros_has_setting("cache"):
        config["cache"] = {"enabled": False}
    return config


def _questions(practice: int, pubmedqa: int) -> list[tuple[str, str, str, list[str]]]:
    """``(id, lang, question, passages)``: practice questions spread over the documents
    (each with its document and the same second source as the triples), then PubMedQA."""
    by_question: dict[tuple[str, str], tuple[str, ...]] = {}
    for t in build.practice_triples():
        by_question.setdefault((t.id.split("/")[0], t.question), t.passages)
    per_doc: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for (doc, question), passages in by_question.items():
        per_doc[doc].append((question, passages))
    spread: list[tuple[str, str, str, list[str]]] = []
    for round_ in range(max(len(v) for v in per_doc.values())):
        for doc, items in per_doc.items():
            if round_ < len(items):
                question, passages = items[round_]
                spread.append((f"{doc}/q{round_ + 1}", doc[:2], question, list(passages)))
    mine = spread[:practice]
    theirs: list[tuple[str, str, str, list[str]]] = []
    for t in build.pubmedqa_triples():
        pmid = t.id.split("/")[1]
        if len(theirs) < pubmedqa and all(pmid not in q[0] for q in theirs):
            theirs.append((f"pubmedqa/{pmid}", "en", t.question, list(t.passages)))
    # Interleaved, so that a run cut short by its time budget still has both kinds.
    out: list[tuple[str, str, str, list[str]]] = []
    while mine or theirs:
        take = max(1, round(len(mine) / max(1, len(theirs)))) if theirs else len(mine)
        out += mine[:take]
        del mine[:take]
        if theirs:
            out.append(theirs.pop(0))
    return out


def _grounded(question: str, passages: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The product's grounded prompt and the passage bodies the model sees."""
    from iatros.knowledge.grounding import build_grounded_messages, passage_bodies
    from iatros.knowledge.types import Passage

    items = [
        Passage(f"doc-{n}", f"source-{n}", None, f"chunk-{n}", text, text[:200], 0.9)
        for n, text in enumerate(passages, 1)
    ]
    bodies = passage_bodies(items, question)
    messages = build_grounded_messages(
        [{"role": "user", "content": question}], items, bodies=bodies
    )
    return messages, bodies


def _kept_answers(previous: Sequence[dict[str, Any]]) -> tuple[dict[str, str], int, int]:
    """``{id: answer}`` from earlier runs' model parts (same prompt), and how many questions
    two runs both answered, and how many of those got the very same text."""
    kept: dict[str, str] = {}
    twice = same = 0
    for model in previous:
        if model.get("prompt") not in (PROMPT, *LEGACY_PROMPTS):
            continue
        for a in model.get("answers", []):
            if "answer" not in a:
                continue
            if a["id"] in kept:
                twice += 1
                same += kept[a["id"]] == a["answer"]
            else:
                kept[a["id"]] = a["answer"]
    return kept, twice, same


def _runs(model: dict[str, Any]) -> list[dict[str, Any]]:
    if "runs" in model:
        return list(model["runs"])
    return [{k: model.get(k) for k in ("asked", "server_ready_s", "wall_s")}]


def run_model(
    practice: int,
    pubmedqa: int,
    budget_s: float,
    timeout_s: float,
    previous: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Ask, check, count. ``previous`` (``--resume``): model parts written by earlier runs
    with the same prompt; their answers are kept and only the questions none of them got
    to (or that failed) are asked. Answers are at temperature 0: a rerun gives the same
    text (``repeat_identical`` says how often that was seen), so runs cut short by their
    budget on a busy machine add up to one set. Every answer, kept or new, is checked
    again with the checker of this run.
    """
    import httpx

    from iatros.knowledge.grounding import NO_ANSWER_TEXT, NO_ANSWER_TEXT_FR
    from procs import Processes, start_iatros

    models_dir = Path.home() / ".cache" / "iatros-test-models"
    models_dir.mkdir(parents=True, exist_ok=True)
    questions = _questions(practice, pubmedqa)
    kept, twice, same = _kept_answers(previous)
    texts: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    to_ask = [q for q in questions if q[0] not in kept]
    started = time.monotonic()
    ready_s = 0.0
    if to_ask and budget_s > 0:
        with (
            tempfile.TemporaryDirectory(prefix="iatros-faith-") as work,
            Processes(Path(work)) as procs,
        ):
            server = start_iatros(
                procs, "iatros", _server_config(models_dir), ADMIN_KEY, timeout_s=300
            )
            ready_s = time.monotonic() - started
            with httpx.Client(
                base_url=server.url,
                timeout=timeout_s,
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as http:
                for qid, _, question, passages in to_ask:
                    if time.monotonic() - started > budget_s:
                        break
                    messages, _ = _grounded(question, passages)
                    t0 = time.monotonic()
                    try:
                        resp = http.post(
                            "/v1/chat/completions",
                            json={
                                "model": "assistant",
                                "messages": messages,
                                "temperature": 0,
                                "max_tokens": 128,
                            },
                        )
                        resp.raise_for_status()
                        texts[qid] = resp.json()["choices"][0]["message"]["content"] or ""
                        seconds[qid] = round(time.monotonic() - t0, 2)
                    except (httpx.HTTPError, KeyError, ValueError) as exc:
                        errors[qid] = type(exc).__name__
    asked = len(texts) + len(errors)
    answers: list[dict[str, Any]] = []
    for qid, lang, question, passages in questions:
        if qid in errors:
            answers.append({"id": qid, "lang": lang, "outcome": "error", "error": errors[qid]})
        text = kept.get(qid, texts.get(qid))
        if text is None:
            continue
        _, bodies = _grounded(question, passages)
        v = check(text, bodies, question, "flag")
        refused = any(r[:30] in text for r in (NO_ANSWER_TEXT, NO_ANSWER_TEXT_FR))
        answers.append(
            {
                "id": qid,
                "lang": lang,
                "question": question,
                "answer": text,
                "seconds": seconds.get(qid),
                "run": "this" if qid in texts else "earlier",
                "outcome": "refused" if refused else v.status,
                "details": len(v.details),
                "unsupported": _why(v),
            }
        )
    runs = [r for model in previous for r in _runs(model)]
    runs.append(
        {
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "asked": asked,
            "server_ready_s": round(ready_s, 1),
            "wall_s": round(time.monotonic() - started, 1),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
    )
    outcomes = Counter(a["outcome"] for a in answers)
    answered = [a for a in answers if a["outcome"] in ("supported", "unsupported", "no-details")]
    flagged = [a for a in answered if a["outcome"] == "unsupported"]

    def share(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ans = [a for a in rows if a["outcome"] in ("supported", "unsupported", "no-details")]
        fl = [a for a in ans if a["outcome"] == "unsupported"]
        return {
            "answered": len(ans),
            "flagged": len(fl),
            "flagged_share": _ratio(len(fl), len(ans)),
        }

    return {
        "model": "gemma-3-270m (embedded default, llama.cpp) via iatros serve",
        "prompt": PROMPT,
        "questions_planned": len(questions),
        "asked": len({a["id"] for a in answers}),
        "runs": runs,
        "repeat_identical": {"answered_twice": twice, "identical": same},
        "outcomes": dict(outcomes),
        "answered": len(answered),
        "flagged": len(flagged),
        "flagged_share": _ratio(len(flagged), len(answered)),
        "by_source": {
            "practice": share([a for a in answers if not a["id"].startswith("pubmedqa")]),
            "pubmedqa": share([a for a in answers if a["id"].startswith("pubmedqa")]),
        },
        "answers": answers,
    }


LEGACY_PROMPTS = (
    "iatros.knowledge.grounding.build_grounded_messages, temperature 0, max_tokens 128",
)
"""The same prompt, described before the description named its two sources."""
PROMPT = (
    "iatros.knowledge.grounding.build_grounded_messages (a document and a second one as "
    "sources), temperature 0, max_tokens 128"
)
JUDGEMENTS = HERE / "data" / "faithfulness" / "model_judgements.yaml"


def _norm(text: str) -> str:
    return " ".join(text.split())


def judge(model: dict[str, Any]) -> dict[str, Any]:
    """The flags against a reader's verdicts on the same answers (``model_judgements.yaml``).

    A verdict is "wrong" (a decisive detail contradicts the sources or is not in them),
    "correct" (every decisive detail is right) or "vague" (nothing decisive, or beside the
    question). It counts only for the exact answer text it was written for: a rerun that
    answers differently leaves that answer unjudged.
    """
    import yaml

    if not JUDGEMENTS.is_file():
        return {"judged": 0}
    verdicts = {
        (j["id"], _norm(j["answer"])): j for j in yaml.safe_load(JUDGEMENTS.read_text("utf-8"))
    }
    rows = []
    for a in model["answers"]:
        if "answer" not in a or a["outcome"] == "refused":
            continue
        j = verdicts.get((a["id"], _norm(a["answer"])))
        if j is not None:
            a["verdict"], a["verdict_note"] = j["verdict"], j.get("note", "")
            rows.append((j["verdict"], a["outcome"] == "unsupported", a["id"]))
    count = Counter((v, "flagged" if f else "passed") for v, f, _ in rows)
    wrong = count[("wrong", "flagged")] + count[("wrong", "passed")]
    flagged = sum(n for (_, f), n in count.items() if f == "flagged")
    return {
        "judged": len(rows),
        "verdicts": dict(Counter(v for v, _, _ in rows)),
        "wrong_flagged": count[("wrong", "flagged")],
        "wrong_passed": count[("wrong", "passed")],
        "correct_flagged": count[("correct", "flagged")],
        "correct_passed": count[("correct", "passed")],
        "vague_flagged": count[("vague", "flagged")],
        "vague_passed": count[("vague", "passed")],
        "recall_on_wrong": _ratio(count[("wrong", "flagged")], wrong),
        "precision_of_flags": _ratio(count[("wrong", "flagged")], flagged),
        "wrong_passed_ids": [i for v, f, i in rows if v == "wrong" and not f],
        "correct_flagged_ids": [i for v, f, i in rows if v == "correct" and f],
    }


# -- report ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _judged_line(j: dict[str, Any]) -> str:
    if not j.get("judged"):
        return "no verdicts for these answers."
    return (
        f"{j['judged']} answers judged {j['verdicts']}; wrong answers flagged "
        f"{j['wrong_flagged']}, **wrong answers passed {j['wrong_passed']}** "
        f"({', '.join(j['wrong_passed_ids'])}); correct answers flagged {j['correct_flagged']} "
        f"({', '.join(j['correct_flagged_ids'])}); vague answers flagged {j['vague_flagged']} "
        f"of {j['vague_flagged'] + j['vague_passed']}."
    )


def markdown(result: dict[str, Any]) -> str:
    t = result["triples"]
    o = t["overall"]
    lines = [
        "# Faithfulness check: measured",
        "",
        f"Written by `bench/faithfulness_bench.py` on {result['generated_at']} "
        f"(`iatros.gateway.verification.check`, policy `flag`; checker {result['checker']}). "
        "Figures: `faithfulness.json`.",
        "",
        f"## Triples ({t['count']}: {t['by_source_count']})",
        "",
        f"- wrong answers: {o['wrong']}, flagged {o['flagged_wrong']}, **missed "
        f"{o['missed_wrong']}** (recall {_pct(o['recall'])}, precision {_pct(o['precision'])})",
        f"- correct answers: {o['correct']}, **falsely flagged {o['flagged_correct']}** "
        f"({_pct(o['false_flag_rate'])}; target at most 10 %)",
        f"- targets: {t['targets']}",
        "",
        "| wrong kind | n | flagged | recall | novel value "
        "| copied from elsewhere in the sources |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    split = t["by_kind_and_swap"]
    for kind, row in t["by_kind"].items():
        novel = split.get(f"{kind}/novel", {"n": 0, "flagged": 0})
        swap = split.get(f"{kind}/swap", {"n": 0, "flagged": 0})
        lines.append(
            f"| {kind} | {row['n']} | {row['flagged']} | {_pct(row['recall'])} "
            f"| {novel['flagged']}/{novel['n']} | {swap['flagged']}/{swap['n']} |"
        )
    lines += [
        "",
        "| language | precision | recall | false flags on correct |",
        "|---|---:|---:|---:|",
    ]
    for lang, row in t["by_language"].items():
        lines.append(
            f"| {lang} | {_pct(row['precision'])} | {_pct(row['recall'])} "
            f"| {row['flagged_correct']}/{row['correct']} ({_pct(row['false_flag_rate'])}) |"
        )
    lines += ["", "Missed wrong answers:", ""]
    lines += [
        f"- `{m['id']}` {m['label']}{' (swap)' if m['swap'] else ''}: {m['answer']}"
        for m in t["missed"]
    ]
    lines += ["", "Correct answers flagged:", ""]
    lines += [
        f"- `{f['id']}` ({f['style']}): {f['answer']} — "
        + "; ".join(f"{w['kind']} {w['detail']!r}" for w in f["why"])
        for f in t["false_flags"]
    ]
    model = result.get("model")
    if model:
        lines += [
            "",
            "## The local model's real answers",
            "",
            f"{model['model']}; {model['prompt']}. Asked {model['asked']} of "
            f"{model['questions_planned']} questions in {len(model['runs'])} run(s) of at most "
            f"{max(r['wall_s'] for r in model['runs'])} s (load average up to "
            f"{max(r.get('load_average_1m') or 0 for r in model['runs'])} on 2 cores): outcomes "
            f"{model['outcomes']}. **Flagged: {model['flagged']} of {model['answered']} "
            f"answers ({_pct(model['flagged_share'])})**; practice "
            f"{model['by_source']['practice']}, PubMedQA {model['by_source']['pubmedqa']}.",
            "",
            f"Read by hand ({JUDGEMENTS.name}): {_judged_line(model.get('judged', {}))}",
            "",
            "Examples (the first five flagged, the first five not):",
            "",
        ]
        given = [a for a in model["answers"] if "answer" in a]
        shown = [a for a in given if a["outcome"] == "unsupported"][:5]
        shown += [a for a in given if a["outcome"] != "unsupported"][:5]
        for a in shown:
            why = "; ".join(f"{w['kind']} {w['detail']!r}" for w in a["unsupported"])
            answer = " ".join(a["answer"].split())[:240]
            verdict = f" (read: {a['verdict']})" if "verdict" in a else ""
            lines.append(
                f"- `{a['id']}` **{a['outcome']}**{verdict} {why}: {a['question']} → {answer}"
            )
    return "\n".join(lines) + "\n"


def _checker_version() -> dict[str, Any]:
    """Which checker was measured: the commit, and the files' hashes (they may differ from
    the commit while someone is working on them)."""
    import hashlib
    import subprocess

    root = HERE.parent
    files = ("src/iatros/gateway/verification.py", "src/iatros/cache/guard.py")
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", *files],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": head or None,
        "uncommitted_changes": bool(dirty),
        "sha256": {f: hashlib.sha256((root / f).read_bytes()).hexdigest()[:16] for f in files},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="triples only, to a temp dir")
    parser.add_argument("--no-model", action="store_true", help="keep the model part on file")
    parser.add_argument("--practice", type=int, default=40)
    parser.add_argument("--pubmedqa", type=int, default=20)
    parser.add_argument("--budget", type=float, default=840.0, help="model part, seconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="per answer, seconds")
    parser.add_argument(
        "--resume", action="store_true", help="keep the answers on file, ask the others"
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        action="append",
        default=[],
        help="also keep the answers of this earlier results file",
    )
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="iatros-faith-")) if args.smoke else RESULTS
    triples = build.all_triples()
    result: dict[str, Any] = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "pubmedqa_available": build.PUBMEDQA.is_dir(),
        "checker": _checker_version(),
        "triples": evaluate(triples),
    }
    previous = RESULTS / "faithfulness.json"
    if args.smoke:
        pass
    elif args.no_model:
        if previous.is_file():
            result["model"] = json.loads(previous.read_text()).get("model")
    else:
        files = [*args.resume_from, *([previous] if args.resume and previous.is_file() else [])]
        earlier = [m for f in files if (m := json.loads(f.read_text()).get("model"))]
        result["model"] = run_model(
            args.practice, args.pubmedqa, args.budget, args.timeout, earlier
        )
    if result.get("model"):
        result["model"]["judged"] = judge(result["model"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "faithfulness.md").write_text(markdown(result))
    o = result["triples"]["overall"]
    print(
        f"{result['triples']['count']} triples: recall {_pct(o['recall'])}, precision "
        f"{_pct(o['precision'])}, false flags {o['flagged_correct']}/{o['correct']} -> {out}"
    )
    if result.get("model"):
        m = result["model"]
        print(f"model: flagged {m['flagged']}/{m['answered']} ({_pct(m['flagged_share'])})")


if __name__ == "__main__":
    main()
