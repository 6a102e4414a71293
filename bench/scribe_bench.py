"""The scribe's measurements: speech to text (WER, real-time factor) and notes (ROUGE,
medications, linked statements), on ACI-Bench dialogues read in place.

    .venv/bin/python bench/scribe_bench.py                 # 3 dialogues, 3 notes (~10 min)
    .venv/bin/python bench/scribe_bench.py --dialogues 5 --notes 5
    .venv/bin/python bench/scribe_bench.py --smoke         # 1 short dialogue, 1 note

**Speech.** ACI-Bench has no audio: each turn of a dialogue (``../shared/data/aci-bench/
valid.jsonl``, the first ``--dialogues`` of the valid split) is spoken by espeak-ng, the
doctor and the patient with two voices, 0.4 s of silence between turns, and the
recording goes through the real path (``Transcriber.transcribe``: decoding, VAD,
Whisper, hallucination filter) once per model. Word error rate (jiwer) against the
dialogue's words, both sides lower-cased, punctuation removed and spelled numbers made
digits (the references spell "twenty milligrams", Whisper writes "20 milligrams").
Real-time factor = transcription time / audio duration, after a warm-up (model loading
is reported apart). Synthetic speech is cleaner than a consultation room and harder than
a person in other ways (espeak's prosody): these are not figures for real recordings.

**Speaker turns.** The transcript's speaker heuristic (``clinical/scribe/transcript.py``)
is scored on the dialogues' own turns: the share it labels, and how often a label is right.
``--speakers`` scores it against heuristics plus the model's votes on the turns it leaves
open (``clinical/scribe/speakers.py``, through the chat service on ``scribe.model``), on
every turn of the valid split (``[doctor]``/``[patient]`` tags are the truth, the turn
text without its tag is the input), and writes ``bench/results/scribe-speakers.{json,md}``.

**Notes.** The first ``--notes`` dialogues' transcripts (the reference text, so that note
quality is measured apart from speech errors) go through ``ScribeService.create`` with the
SOAP template, section by section through the chat service on the configured model (the
local Gemma 3 270M by default). ROUGE-1/2/L F1 (``rouge-score``, stemmed) of the whole
note against the reference note; the share of the reference's medications (and doses)
found in the draft's prose and in the structured fields; the share of draft statements
linked to transcript lines. ACI-Bench's published figures (full note, its test set 1):
GPT-4 ROUGE-1 51.76 / ROUGE-2 22.58 / ROUGE-L 45.97; BART+SAMSum section by section 53.46.

Writes ``bench/results/scribe-<date>.json`` and ``bench/results/scribe-latest.md``.
Not part of CI (minutes of CPU); ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

from iatros.auth import Principal  # noqa: E402
from iatros.clinical.scribe.extraction import extract  # noqa: E402
from iatros.clinical.scribe.numbers import digits  # noqa: E402
from iatros.clinical.scribe.transcript import from_text, guess_speaker  # noqa: E402
from iatros.config import load_settings  # noqa: E402
from iatros.gateway.context import RequestContext  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "aci-bench"
RESULTS = BENCH / "results"
VOICES = {"doctor": ("en-us", 165), "patient": ("en-gb", 155)}
MODELS = ("whisper-tiny-en", "whisper-base")
TAG = re.compile(r"^\[(doctor|patient)\]\s*", re.IGNORECASE)


def dialogues(split: str = "valid") -> list[dict[str, Any]]:
    with (DATA / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def turns(dialogue: str, max_chars: int | None) -> list[tuple[str, str]]:
    out, used = [], 0
    for raw in dialogue.splitlines():
        match = TAG.match(raw)
        if not match or not raw[match.end() :].strip():
            continue
        text = raw[match.end() :].strip()
        text = re.sub(r" ([,.?!;:])", r"\1", text).replace(" n't", "n't").replace(" 's", "'s")
        if max_chars is not None and used + len(text) > max_chars:
            break
        out.append((match.group(1).lower(), text))
        used += len(text)
    return out


def speak(turn_list: list[tuple[str, str]]) -> bytes:
    """The dialogue as one 16 kHz mono WAV, two voices, pauses between turns."""
    rate = 22050
    pieces: list[np.ndarray] = []
    pause = np.zeros(int(0.4 * rate), dtype=np.int16)
    for speaker, text in turn_list:
        voice, speed = VOICES[speaker]
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
            check=True, capture_output=True, timeout=120,
        ).stdout  # fmt: skip
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getframerate() == rate
            pieces.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16))
        pieces.append(pause)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate(pieces).tobytes())
    return buf.getvalue()


def normalise(text: str) -> str:
    text = digits(text.lower().replace("-", " "))
    text = re.sub(r"(\d),(\d)", r"\1\2", text)
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> dict[str, float]:
    import jiwer

    out = jiwer.process_words(normalise(reference), normalise(hypothesis))
    return {
        "wer": round(out.wer, 4),
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "reference_words": len(normalise(reference).split()),
    }


def speaker_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    labelled = right = total = 0
    for row in rows:
        for speaker, text in turns(row["dialogue"], None):
            total += 1
            guess = guess_speaker(text)
            if guess is None:
                continue
            labelled += 1
            right += guess == ("clinician" if speaker == "doctor" else "patient")
    return {
        "turns": total,
        "labelled_share": round(labelled / total, 3),
        "accuracy_when_labelled": round(right / labelled, 3) if labelled else None,
        "accuracy_all_turns": round(right / total, 3),
    }


async def speakers_run(args: argparse.Namespace) -> dict[str, Any]:
    """Heuristics alone vs heuristics + the model's votes where they are unsure."""
    from iatros.clinical.scribe.speakers import SpeakerModel
    from iatros.services import Services

    rows = dialogues()[: args.speaker_dialogues]
    os.environ["IATROS_DATA_DIR"] = str(ROOT / "data")
    settings = load_settings(overrides={"data_dir": tempfile.mkdtemp(prefix="scribe-spk-")})
    services = Services.build(settings, run_jobs=False)
    await services.start()
    principal = Principal(tenant="bench", key_id="bench", role="admin")
    voter = SpeakerModel(services.chat, settings.scribe.model, 10**6)
    truth = {"doctor": "clinician", "patient": "patient"}
    total = heur_right = unsure = model_right = abstain = alt_right = 0
    unsure_clinician = 0
    from iatros.clinical.scribe.speakers import messages
    from iatros.gateway.chat import ChatRequest
    from iatros.providers.base import ChatCall

    warm = ChatRequest(model=settings.scribe.model,
                       call=ChatCall(messages=messages("", "hello"), max_tokens=3))  # fmt: skip
    reply_ctx, _ = await services.chat.ask(principal, warm, endpoint="scribe")
    deployment = reply_ctx.deployment
    started = time.perf_counter()
    try:
        for row in rows:
            spoken = turns(row["dialogue"], None)
            previous: str | None = None  # last label given (heuristic or vote), for the rule
            for i, (who, text) in enumerate(spoken):
                total += 1
                want = truth[who]
                guess = guess_speaker(text)
                if guess is not None:
                    heur_right += guess == want
                    previous = guess
                    continue
                unsure += 1
                unsure_clinician += want == "clinician"
                alt = {"clinician": "patient", "patient": "clinician"}.get(previous or "")
                alt_right += alt == want
                vote = await voter.vote(principal, None, spoken[i - 1][1] if i else "", text)
                abstain += vote is None
                model_right += vote == want
                previous = vote
            print(f"{row['id']}: {total} turns, {unsure} unsure, model right on "
                  f"{model_right}", flush=True)  # fmt: skip
    finally:
        await services.close()
    elapsed = time.perf_counter() - started
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "2-core VM shared with other work while this ran",
        },
        "data": f"ACI-Bench valid split (read in place), {len(rows)} dialogues, every turn; "
        "truth = the [doctor]/[patient] tag, input = the turn's text",
        "model": {"logical": settings.scribe.model, "deployment": str(deployment)},
        "turns": total,
        "heuristics": {
            "labelled": total - unsure,
            "right": heur_right,
            "accuracy_when_labelled": round(heur_right / (total - unsure), 4),
            "accuracy_all_turns": round(heur_right / total, 4),
        },
        "unsure_turns": {
            "count": unsure,
            "clinician_share": round(unsure_clinician / unsure, 4),
            "model_right": model_right,
            "model_abstained": abstain,
            "model_accuracy": round(model_right / unsure, 4),
            "majority_class_accuracy": round(
                max(unsure_clinician, unsure - unsure_clinician) / unsure, 4
            ),
            "alternation_rule_accuracy": round(alt_right / unsure, 4),
        },
        "combined": {
            "labelled": total - abstain,
            "right": heur_right + model_right,
            "accuracy_all_turns": round((heur_right + model_right) / total, 4),
            "accuracy_when_labelled": round((heur_right + model_right) / (total - abstain), 4),
        },
        "model_seconds": round(elapsed, 1),
        "seconds_per_vote": round(elapsed / unsure, 2) if unsure else None,
    }


def speakers_markdown(r: dict[str, Any]) -> str:
    h, u, c = r["heuristics"], r["unsure_turns"], r["combined"]
    gain = u["model_accuracy"] - u["majority_class_accuracy"]
    if gain <= 0:
        verdict = (
            "The model's votes do not beat always answering the majority class on the open "
            "turns: `scribe.speaker_model` stays off by default."
        )
    else:
        verdict = (
            f"The votes beat always answering the majority class by {gain * 100:.1f} percentage "
            "points only, "
            f"and {1 - u['model_accuracy']:.0%} of them are wrong, where the heuristics' own "
            f"labels are wrong {1 - h['accuracy_when_labelled']:.0%} of the time: "
            "`scribe.speaker_model` stays off by default (an open line is better than a wrong "
            "label in a clinical record). Switch it on where a label on every line matters "
            "more, or with a stronger `scribe.model`."
        )
    return "\n".join(
        [
            f"# Scribe speaker turns ({r['date'][:10]})",
            "",
            f"Written by `bench/scribe_bench.py --speakers`; {r['data']}. Model: "
            f"`{r['model']['logical']}` ({r['model']['deployment']}). {r['machine']['cpus']} CPUs, "
            "shared with other work while this ran.",
            "",
            "| labeller | labelled | right | accuracy, all turns | accuracy when labelled |",
            "|---|---|---|---|---|",
            f"| heuristics alone | {h['labelled']}/{r['turns']} | {h['right']} | "
            f"{h['accuracy_all_turns']:.1%} | {h['accuracy_when_labelled']:.1%} |",
            f"| heuristics + model on open turns | {c['labelled']}/{r['turns']} | {c['right']} | "
            f"{c['accuracy_all_turns']:.1%} | {c['accuracy_when_labelled']:.1%} |",
            "",
            f"On the {u['count']} turns the heuristics leave open ({u['clinician_share']:.0%} of "
            f"them the doctor's): the model is right on {u['model_accuracy']:.1%} "
            f"(abstained on {u['model_abstained']}); always answering the majority class would be "
            f'right on {u["majority_class_accuracy"]:.1%}, and the rule "the opposite of the '
            f'previous label" on {u["alternation_rule_accuracy"]:.1%} (a rule for turn-by-turn '
            "text: Whisper's segments are not turns). "
            f"{r['seconds_per_vote']} s per vote on this machine.",
            "",
            verdict,
            "",
        ]
    )


def model_sizes() -> dict[str, float]:
    from iatros.providers.transcription_local import tiny_en_path

    tiny = sum(p.stat().st_size for p in tiny_en_path().iterdir()) / 1e6
    base_dir = ROOT / "data" / "models" / "whisper-base"
    base = sum(p.stat().st_size for p in base_dir.iterdir()) / 1e6 if base_dir.is_dir() else None
    return {"whisper-tiny-en": round(tiny, 1), "whisper-base": round(base, 1) if base else -1}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from iatros.services import Services

    rows = dialogues()
    data_dir = Path(tempfile.mkdtemp(prefix="scribe-bench-"))
    os.environ["IATROS_DATA_DIR"] = str(ROOT / "data")  # the assembled Whisper base is kept
    settings = load_settings(
        overrides={"data_dir": str(data_dir), "transcription": {"max_duration_s": 3600}}
    )
    services = Services.build(settings, run_jobs=False)
    await services.start()
    principal = Principal(tenant="bench", key_id="bench", role="admin")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "data": f"ACI-Bench valid split (read in place), first {args.dialogues} dialogues for "
        f"speech, first {args.notes} for notes",
        "speakers": speaker_accuracy(rows),
    }
    try:
        speech: dict[str, Any] = {m: {"items": []} for m in MODELS}
        tr = services.transcriber
        for model in MODELS:  # warm-up: load each model once, timed apart
            ctx = RequestContext(principal=principal, endpoint="audio")
            warm = speak([("doctor", "Good morning, how are you feeling today?")])
            started = time.perf_counter()
            await tr.transcribe(ctx, warm, "warm.wav", model=model, language="en")
            speech[model]["first_call_s"] = round(time.perf_counter() - started, 2)
        for row in rows[: args.dialogues]:
            spoken = turns(row["dialogue"], args.max_chars)
            audio = speak(spoken)
            reference = " ".join(text for _, text in spoken)
            for model in MODELS:
                ctx = RequestContext(principal=principal, endpoint="audio")
                started = time.perf_counter()
                done = await tr.transcribe(ctx, audio, f"{row['id']}.wav", model=model,
                                           language="en")  # fmt: skip
                elapsed = time.perf_counter() - started
                duration = done.result.duration_s
                item = {"id": row["id"], "audio_s": round(duration, 1),
                        "transcribe_s": round(elapsed, 2), "rtf": round(elapsed / duration, 4),
                        "low_confidence_segments": sum(
                            1 for s in done.result.segments if s.low_confidence),
                        "dropped_segments": len(done.result.dropped),
                        **wer(reference, done.result.text)}  # fmt: skip
                speech[model]["items"].append(item)
                print(f"{model} {row['id']}: WER {item['wer']:.3f} RTF {item['rtf']:.3f}",
                      flush=True)  # fmt: skip
        for model in MODELS:
            items = speech[model]["items"]
            errors = sum(i["substitutions"] + i["deletions"] + i["insertions"] for i in items)
            words = sum(i["reference_words"] for i in items)
            speech[model]["wer_pooled"] = round(errors / words, 4) if words else None
            speech[model]["rtf_mean"] = round(statistics.mean(i["rtf"] for i in items), 4)
            speech[model]["audio_s_total"] = round(sum(i["audio_s"] for i in items), 1)
        results["speech"] = speech
        results["model_sizes_mb"] = model_sizes()
        results["notes"] = await notes(services, principal, rows[: args.notes])
    finally:
        await services.close()
    return results


async def notes(services: Any, principal: Principal, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    items = []
    for row in rows:
        started = time.perf_counter()
        view = await services.scribe.create(principal, template="soap", language="en",
                                            text=row["dialogue"])  # fmt: skip
        elapsed = time.perf_counter() - started
        note = view.note
        text = "\n".join(
            f"{s['title'].upper()}\n" + "\n".join(x["text"] for x in s["statements"])
            for s in note["sections"]
        )
        score = scorer.score(row["note"], text)
        reference_meds = extract(from_text(row["note"]))["medications"]
        draft_lower = text.lower()
        found_names = [m for m in reference_meds if m["name"] in draft_lower]
        with_dose = [m for m in reference_meds if m["dose"]]
        found_doses = [m for m in with_dose if m["name"] in draft_lower
                       and f"{m['dose']['value']:g}" in digits(draft_lower)]  # fmt: skip
        structured = {m["name"] for m in note["structured"]["medications"]}
        items.append({
            "id": row["id"],
            "seconds": round(elapsed, 1),
            "rouge1": round(score["rouge1"].fmeasure * 100, 2),
            "rouge2": round(score["rouge2"].fmeasure * 100, 2),
            "rougeL": round(score["rougeLsum"].fmeasure * 100, 2),
            "reference_medications": len(reference_meds),
            "medications_in_draft": len(found_names),
            "reference_doses": len(with_dose),
            "doses_in_draft": len(found_doses),
            "medications_in_structured_fields": sum(
                1 for m in reference_meds if m["name"] in structured),
            "statements": note["coverage"]["statements"],
            "linked": note["coverage"]["linked"],
            "model": note["sections"][0].get("model"),
            "sample": [x["text"] for s in note["sections"] for x in s["statements"]][:4],
        })  # fmt: skip
        print(f"note {row['id']}: ROUGE-1 {items[-1]['rouge1']} in {elapsed:.0f} s", flush=True)

    def share(num: str, den: str) -> float | None:
        total = sum(i[den] for i in items)
        return round(sum(i[num] for i in items) / total, 3) if total else None

    return {
        "template": "soap (section by section)",
        "items": items,
        "rouge1": round(statistics.mean(i["rouge1"] for i in items), 2),
        "rouge2": round(statistics.mean(i["rouge2"] for i in items), 2),
        "rougeL": round(statistics.mean(i["rougeL"] for i in items), 2),
        "medication_recall_draft": share("medications_in_draft", "reference_medications"),
        "dose_recall_draft": share("doses_in_draft", "reference_doses"),
        "medication_recall_structured": share(
            "medications_in_structured_fields", "reference_medications"
        ),
        "statements_linked_share": share("linked", "statements"),
        "published": {
            "gpt-4": {"rouge1": 51.76, "rouge2": 22.58, "rougeL": 45.97},
            "bart-samsum-sectioned": {"rouge1": 53.46},
        },
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Scribe benchmark ({r['date'][:10]})",
        "",
        f"Written by `bench/scribe_bench.py`; {r['data']}; {r['machine']['cpus']} CPUs.",
        "Speech synthesized with espeak-ng (two voices): not figures for real recordings.",
        "",
        "| model | size (MB) | audio (s) | WER (pooled) | real-time factor | first call (s) |",
        "|---|---|---|---|---|---|",
    ]
    for model, s in r["speech"].items():
        lines.append(
            f"| {model} | {r['model_sizes_mb'].get(model)} | {s['audio_s_total']} | "
            f"{s['wer_pooled']} | {s['rtf_mean']} | {s['first_call_s']} |"
        )
    sp = r["speakers"]
    n = r["notes"]
    lines += [
        "",
        f"Speaker heuristic on {sp['turns']} dialogue turns: labels {sp['labelled_share']:.0%} "
        f"of them, right {sp['accuracy_when_labelled']:.0%} of the time when it labels.",
        "",
        f"Notes ({n['template']}, model `{n['items'][0]['model']}`, {len(n['items'])} items): "
        f"ROUGE-1 {n['rouge1']}, ROUGE-2 {n['rouge2']}, ROUGE-L {n['rougeL']} "
        "(ACI-Bench published, test set 1: GPT-4 51.76 / 22.58 / 45.97).",
        f"Reference medications named in the draft: {n['medication_recall_draft']}; "
        f"doses: {n['dose_recall_draft']}; in the structured fields (rules over the "
        f"transcript): {n['medication_recall_structured']}. Draft statements linked to "
        f"transcript lines: {n['statements_linked_share']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=3)
    parser.add_argument("--notes", type=int, default=3)
    parser.add_argument("--max-chars", type=int, default=None,
                        help="speak only the first turns, up to this many characters")  # fmt: skip
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--speakers",
        action="store_true",
        help="only the speaker labelling: heuristics vs heuristics + model",
    )
    parser.add_argument("--speaker-dialogues", type=int, default=20)  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.speakers:
        found = asyncio.run(speakers_run(args))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scribe-speakers.json").write_text(json.dumps(found, indent=1) + "\n")
        (args.out / "scribe-speakers.md").write_text(speakers_markdown(found))
        print(speakers_markdown(found))
        return
    if args.smoke:
        args.dialogues, args.notes, args.max_chars = 1, 1, 800
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scribe-smoke" if args.smoke else f"scribe-{results['date'][:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.smoke:
        (args.out / "scribe-latest.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
