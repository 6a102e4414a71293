"""Draft a note from a transcript, section by section, through the chat service.

Each section of the template is one chat request: the section's instruction and the
transcript lines that matter for it (those with its cue words first, in transcript
order, within ``max_prompt_chars``), numbered so the model can cite them. The answer is
split into statements; each is linked to the lines that support it (:mod:`.linking`),
and flagged when none does. Asking section by section keeps each prompt inside a small
local model's context window, and the published ACI-Bench results found it better than
one prompt for the whole note.

Every request goes through ``ChatService.ask`` (endpoint ``scribe``) with the patient
id, so routing, the cache's patient rule (never cached by default), usage and audit
apply as for any chat request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from iatros.auth import Principal
from iatros.clinical.scribe.linking import citations, link, split_statements
from iatros.clinical.scribe.settings import ScribeSettings
from iatros.clinical.scribe.templates import NoteTemplate, SectionTemplate
from iatros.clinical.scribe.transcript import Line, render
from iatros.gateway.chat import ChatRequest, ChatService
from iatros.providers.base import ChatCall

_NOTHING = re.compile(
    r"^(?:not (?:discussed|mentioned|documented|reported)|none|n/?a|non (?:abordé|mentionné)|"
    r"rien|aucun)\.?$",
    re.IGNORECASE,
)
BRIEF = {
    "en": (
        "You are a clinical scribe. Write the {section} section of a {note} from the "
        "consultation transcript below: {instruction}. Use only facts said in the "
        "transcript, in short factual sentences. After each sentence, cite the transcript "
        "lines it comes from, like [3] or [4, 7]. If the transcript says nothing for this "
        "section, write: Not discussed."
    ),
    "fr": (
        "Vous êtes un assistant de rédaction médicale. Rédigez la section {section} d'un "
        "{note} à partir de la transcription ci-dessous : {instruction}. N'utilisez que des "
        "faits dits dans la transcription, en phrases courtes. Après chaque phrase, citez "
        "les lignes de la transcription d'où elle vient, comme [3] ou [4, 7]. Si la "
        "transcription ne dit rien pour cette section, écrivez : Non abordé."
    ),
}


@dataclass(slots=True)
class DraftContext:
    principal: Principal
    patient_id: str | None
    language: str


def select_lines(lines: list[Line], section: SectionTemplate, budget: int) -> list[Line]:
    """The lines the model sees for ``section``: cue matches first, kept in order."""
    cues = [c.lower() for c in section.cues]
    scored = [(sum(1 for c in cues if c in line.text.lower()), line.n, line) for line in lines]
    chosen: set[int] = set()
    used = 0
    for _score, n, line in sorted(scored, key=lambda t: (-t[0], t[1])):
        cost = len(line.text) + 16
        if used + cost > budget:
            continue
        chosen.add(n)
        used += cost
    return [line for line in lines if line.n in chosen]


class NoteDrafter:
    def __init__(self, chat: ChatService, settings: ScribeSettings) -> None:
        self.chat = chat
        self.settings = settings

    def prompt(
        self, template: NoteTemplate, section: SectionTemplate, lines: list[Line], language: str
    ) -> list[dict[str, str]]:
        lang = language if language in BRIEF else "en"
        shown = select_lines(lines, section, self.settings.max_prompt_chars)
        brief = BRIEF[lang].format(
            section=section.label(lang),
            note=template.label(lang),
            instruction=section.instruction,
        )
        return [
            {"role": "system", "content": brief},
            {
                "role": "user",
                "content": f"Transcript:\n{render(shown)}\n\n{section.label(lang)}:",
            },
        ]

    async def draft_section(
        self,
        ctx: DraftContext,
        template: NoteTemplate,
        section: SectionTemplate,
        lines: list[Line],
    ) -> dict[str, Any]:
        messages = self.prompt(template, section, lines, ctx.language)
        request = ChatRequest(
            model=self.settings.model,
            call=ChatCall(
                messages=messages,
                temperature=0.0,
                max_tokens=self.settings.max_section_tokens,
                fairness_key=ctx.principal.key_id,
            ),
            patient_id=ctx.patient_id,
        )
        reply_ctx, answer = await self.chat.ask(ctx.principal, request, endpoint="scribe")
        return {
            "id": section.id,
            "title": section.label(ctx.language),
            "statements": statements(answer.content, lines),
            "model": reply_ctx.deployment,
            "request_id": reply_ctx.request_id,
        }

    async def draft(
        self, ctx: DraftContext, template: NoteTemplate, lines: list[Line]
    ) -> list[dict[str, Any]]:
        return [await self.draft_section(ctx, template, s, lines) for s in template.sections]


def statements(text: str, lines: list[Line]) -> list[dict[str, Any]]:
    """A section's prose as linked statements; "Not discussed" leaves the section empty."""
    out = []
    for raw in split_statements(text):
        clean, cited = citations(raw)
        if not clean or _NOTHING.match(clean):
            continue
        out.append({"text": clean, **link(clean, lines, cited)})
    return out
