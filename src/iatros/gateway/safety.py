"""The clinical safety step of a grounded answer: verify it, and hand it to a human when
it cannot stand on its sources.

Three things happen here, for every caller of a ``knowledge`` route:

- **verification** (:mod:`iatros.gateway.verification`) of the model's answer against the
  passages it was given, with the route's policy: ``withhold`` (the answer is replaced by
  a notice quoting the closest source, and a reviewer gets the draft) or ``flag`` (the
  answer is given with each unsupported detail marked and the closest source quoted);
- **escalation**: a question no source supports, an answer withheld, or a model failure
  on a knowledge route creates a review item (:mod:`iatros.reviews`);
- **streams** pass through :meth:`SafetyStep.gate`, which releases the answer sentence by
  sentence, each one verified first, and ends with the verification as the last chunk's
  ``iatros`` field. Why sentences: a number is only decisive with its unit and what it
  applies to, and a sentence is the smallest piece the check can judge; buffering one
  sentence costs its few tokens of latency, while a "verify at the end" event would let
  the client show an unverified dose for seconds (and keep it on screen if the client
  ignores the event). A withheld stream stops reading the model at the first unsupported
  sentence: the rest would not be shown anyway.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from iatros.gateway.context import RequestContext
from iatros.gateway.grounding import Grounding
from iatros.gateway.verification import Detail, Policy, Verification, check, split_sentences
from iatros.knowledge.text import is_french
from iatros.providers.base import StreamDelta

log = logging.getLogger("iatros.safety")

_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=\S)|\n")


class Escalations(Protocol):
    """Where escalations go (the review queue); the chat service knows no more of it."""

    async def escalate(
        self,
        ctx: RequestContext,
        grounding: Grounding,
        reason: str,
        messages: list[dict[str, Any]],
        *,
        draft: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any] | None: ...


@dataclass(slots=True)
class Texts:
    withheld: str
    source_says: str
    unverified: str
    reviewer_asked: str
    negation: str


TEXTS = {
    "en": Texts(
        withheld="I could not verify {count} of this answer against the sources, "
        "so I am not giving it.",
        source_says="The closest source says:",
        unverified="unverified",
        reviewer_asked="A reviewer has been asked to answer.",
        negation="negation",
    ),
    "fr": Texts(
        withheld="Je n'ai pas pu vérifier {count} de cette réponse dans les sources : "
        "je ne la donne donc pas.",
        source_says="La source la plus proche dit :",
        unverified="non vérifié",
        reviewer_asked="La question a été transmise à une personne pour réponse.",
        negation="négation",
    ),
}


def _texts(question: str) -> Texts:
    return TEXTS["fr" if is_french(question) else "en"]


def _closest(grounding: Grounding, details: list[Detail]) -> tuple[int, str] | None:
    """The source sentence to quote: the evidence of a negation, else the source sentence
    sharing most words with the first unsupported sentence."""
    for detail in details:
        if detail.evidence and detail.source:
            return detail.source, detail.evidence
    if not details or not grounding.passages:
        return None
    target = set(re.findall(r"\w{3,}", (details[0].sentence + " " + grounding.question).lower()))
    best: tuple[int, int, str] | None = None
    for n, body in enumerate(grounding.passages, 1):
        for sentence in split_sentences(body):
            shared = len(target & set(re.findall(r"\w{3,}", sentence.lower())))
            if best is None or shared > best[0]:
                best = (shared, n, sentence)
    return None if best is None else (best[1], best[2])


def _quote(grounding: Grounding, details: list[Detail], texts: Texts) -> str:
    found = _closest(grounding, details)
    if found is None:
        return ""
    n, sentence = found
    return f"{texts.source_says} “{sentence}” [{n}]"


def _listed(details: list[Detail], question: str) -> str:
    """How many details failed, in words: the unverified values themselves are not
    repeated in the text (a reader skimming it must not pick them up); the client has
    them in ``iatros.verification``."""
    n = len(dict.fromkeys(d.value for d in details))
    if is_french(question):
        return "un détail" if n == 1 else f"{n} détails"
    return "a detail" if n == 1 else f"{n} details"


class SafetyStep:
    """Verification and escalation for grounded answers (see the module docstring)."""

    def __init__(self, escalations: Escalations | None, default_policy: Policy) -> None:
        self.escalations = escalations
        self.default_policy = default_policy

    def policy(self, route_policy: Policy | None) -> Policy:
        return route_policy or self.default_policy

    async def escalate(
        self,
        ctx: RequestContext,
        grounding: Grounding,
        reason: str,
        messages: list[dict[str, Any]],
        *,
        draft: str | None = None,
        conversation_id: str | None = None,
    ) -> None:
        """Raise a review item; the answer carries its id. A queue failure is logged, and
        the answer still says it was not given (it never pretends otherwise)."""
        if self.escalations is None:
            return
        try:
            grounding.review = await self.escalations.escalate(
                ctx, grounding, reason, messages, draft=draft, conversation_id=conversation_id
            )
        except Exception:
            log.exception("could not create a review item (request %s)", ctx.request_id)

    # -- complete answers ---------------------------------------------------------------

    def verify(self, grounding: Grounding, answer: str, policy: Policy) -> tuple[str, Verification]:
        """The text to give for ``answer``, and the verification it carries."""
        result = check(answer, grounding.passages, grounding.question, policy)
        grounding.verification = result.payload()
        if result.action == "none":
            return answer, result
        return _rewritten(grounding, answer, result, _texts(grounding.question)), result

    # -- streams ------------------------------------------------------------------------

    async def gate(
        self,
        ctx: RequestContext,
        grounding: Grounding,
        policy: Policy,
        deltas: AsyncIterator[StreamDelta],
        messages: list[dict[str, Any]],
        conversation_id: str | None,
    ) -> AsyncGenerator[StreamDelta, None]:
        """Release the answer sentence by sentence, each verified; end with the outcome."""
        texts = _texts(grounding.question)
        total = Verification(policy=policy)
        pending = ""
        draft: list[str] = []
        finish: str | None = None
        usage = None
        withheld = False
        try:
            async for delta in deltas:
                if delta.usage is not None:
                    usage = delta.usage
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                piece = delta.delta.get("content") or ""
                pending += piece
                draft.append(piece)
                ready, pending = _complete_sentences(pending, final=finish is not None)
                if ready:
                    out, withheld = self._release(grounding, ready, policy, total, texts)
                    if out:
                        yield StreamDelta({"content": out})
                    if withheld:
                        break
                # No break at the finish: OpenAI sends the usage in a chunk after it, and a
                # stream closed there would be accounted as zero tokens.
            if not withheld and pending:
                out, withheld = self._release(grounding, pending, policy, total, texts)
                if out:
                    yield StreamDelta({"content": out})
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if withheld:
            total.action = "withheld"
            ctx.grounding = "withheld"
            grounding.verification = total.payload()  # the reviewer sees what failed
            await self.escalate(
                ctx,
                grounding,
                "unsupported_detail",
                messages,
                draft="".join(draft),
                conversation_id=conversation_id,
            )
        else:
            ctx.grounding = "flagged" if total.action == "flagged" else total.status
        grounding.verification = total.payload()
        extension = {"verification": grounding.verification}
        if grounding.review is not None:
            extension["review"] = grounding.review
        yield StreamDelta({}, finish_reason=finish or "stop", usage=usage, extension=extension)

    def _release(
        self, grounding: Grounding, text: str, policy: Policy, total: Verification, texts: Texts
    ) -> tuple[str, bool]:
        """What to send for verified ``text``; and whether the answer is now withheld."""
        result = check(text, grounding.passages, grounding.question, policy)
        total.details.extend(result.details)
        if result.action == "none":
            return text, False
        rewritten = _rewritten(grounding, text, result, texts)
        if result.action == "withheld":
            return "\n\n" + rewritten, True
        total.action = "flagged"
        return rewritten + ("\n\n" if "\n\n> " in rewritten else ""), False


def _rewritten(grounding: Grounding, text: str, result: Verification, texts: Texts) -> str:
    """``text`` as the policy gives it: the withheld notice quoting the closest source, or
    the text with its unsupported sentences marked and that source quoted below."""
    unsupported = result.unsupported
    quote = _quote(grounding, unsupported, texts)
    if result.action == "withheld":
        count = _listed(unsupported, grounding.question)
        parts = [texts.withheld.format(count=count), quote, texts.reviewer_asked]
        return " ".join(p for p in parts if p)
    flagged = _flag_sentences(text, unsupported, texts)
    return flagged + ("\n\n> " + quote if quote else "")


def _flag_sentences(text: str, unsupported: list[Detail], texts: Texts) -> str:
    """``text`` with a marker after each sentence that has an unsupported detail."""
    by_sentence: dict[str, list[str]] = {}
    for detail in unsupported:
        label = texts.negation if detail.kind == "negation" else detail.value
        by_sentence.setdefault(detail.sentence, []).append(label)
    out = text
    for sentence, values in by_sentence.items():
        marker = f" ⚠ [{texts.unverified}: {', '.join(dict.fromkeys(values))}]"
        index = out.find(sentence[: max(8, len(sentence) // 2)])
        if index < 0:
            out += marker
            continue
        end = _sentence_end(out, index)
        out = out[:end] + marker + out[end:]
    return out


def _sentence_end(text: str, start: int) -> int:
    match = _BOUNDARY.search(text, start)
    if match is None:
        return len(text.rstrip())
    return match.start()


def _complete_sentences(text: str, *, final: bool) -> tuple[str, str]:
    """Split ``text`` into its complete sentences (with trailing space) and the rest."""
    if final:
        return text, ""
    last = None
    for match in _BOUNDARY.finditer(text):
        last = match
    if last is None:
        return "", text
    return text[: last.end()], text[last.end() :]
