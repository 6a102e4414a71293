"""Who said a transcript line when the heuristics cannot tell: ask the model.

The heuristics (:func:`~iatros.clinical.scribe.transcript.guess_speaker`) label a line
only when its cues point one way (a question or an instruction: the clinician; first
person symptoms: the patient) and leave the rest open. :class:`SpeakerModel` votes on
those open lines only, one short request each through the chat service (endpoint
``scribe``, so routing, the patient cache rule, usage and audit apply).

The prompt is completion-style, for a small base model that continues text rather than
follows instructions: a few labelled lines in the form the answer must take, then the
line with the line before it for context, and the answer is the first word the model
writes. Anything but "Doctor" or "Patient" leaves the line open: a wrong label is worse
than none. ``bench/scribe_bench.py --speakers`` measures whether the votes help.
"""

from __future__ import annotations

import re

from iatros.auth import Principal
from iatros.clinical.scribe.transcript import Line
from iatros.gateway.chat import ChatRequest, ChatService
from iatros.providers.base import ChatCall

BRIEF = (
    "Each line below is from a consultation between a doctor and a patient. "
    "Answer with the one word Doctor or Patient: who said the line."
)
EXAMPLES = (
    ("", "what brings you in today?", "Doctor"),
    ("what brings you in today?", "my knee has been hurting since last week.", "Patient"),
    ("", "okay, and does anything make it better?", "Doctor"),
    ("okay, and does anything make it better?", "not really, ice helps a little.", "Patient"),
    ("", "i'm going to prescribe ibuprofen for the pain.", "Doctor"),
    ("", "yes, every morning.", "Patient"),
    ("", "alright, let's take a look at your x-ray.", "Doctor"),
    ("", "no, i don't think so.", "Patient"),
)
_ANSWER = re.compile(r"\b(doctor|patient|clinician|dentist)\b", re.IGNORECASE)


def _ask(before: str, text: str) -> str:
    context = f'After: "{before[:160]}"\n' if before else ""
    return f'{context}Line: "{text[:300]}"'


def messages(before: str, text: str) -> list[dict[str, str]]:
    """The few-shot exchange for one line (``before``: the line said just before it)."""
    out = [{"role": "system", "content": BRIEF}]
    for prev, said, who in EXAMPLES:
        out.append({"role": "user", "content": _ask(prev, said)})
        out.append({"role": "assistant", "content": who})
    out.append({"role": "user", "content": _ask(before, text)})
    return out


def parse(answer: str) -> str | None:
    """``clinician``/``patient`` from the first label word of the answer, else None."""
    found = _ANSWER.search(answer[:40])
    if found is None:
        return None
    return "patient" if found.group(1).lower() == "patient" else "clinician"


class SpeakerModel:
    def __init__(self, chat: ChatService, model: str, max_lines: int) -> None:
        self.chat = chat
        self.model = model
        self.max_lines = max_lines

    async def vote(
        self, principal: Principal, patient_id: str | None, before: str, text: str
    ) -> str | None:
        request = ChatRequest(
            model=self.model,
            call=ChatCall(
                messages=messages(before, text),
                temperature=0.0,
                max_tokens=3,
                stop=["\n"],
                fairness_key=principal.key_id,
            ),
            patient_id=patient_id,
        )
        _, answer = await self.chat.ask(principal, request, endpoint="scribe")
        return parse(answer.content or "")

    async def label(self, principal: Principal, patient_id: str | None, lines: list[Line]) -> int:
        """Fill in the lines without a speaker (at most ``max_lines``); how many got one."""
        labelled = 0
        asked = 0
        for i, line in enumerate(lines):
            if line.speaker is not None:
                continue
            if asked >= self.max_lines:
                break
            asked += 1
            before = lines[i - 1].text if i else ""
            who = await self.vote(principal, patient_id, before, line.text)
            if who is not None:
                line.speaker = who
                labelled += 1
        return labelled
