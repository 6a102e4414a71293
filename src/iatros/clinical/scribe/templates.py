"""Note templates are data: YAML files in ``templates/`` (SOAP, dental), not code.

A template names its sections, each with titles in English and French, the LOINC code
its FHIR Composition section carries, cue words that choose the transcript lines the
model sees for it, and the instruction the model gets.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Coding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    display: str


class SectionTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z_]+$")
    title: dict[str, str]
    loinc: Coding
    cues: list[str] = Field(default_factory=list)
    instruction: str

    def label(self, language: str) -> str:
        return self.title.get(language) or self.title["en"]


class NoteTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: dict[str, str]
    loinc: Coding
    sections: list[SectionTemplate]

    def label(self, language: str) -> str:
        return self.title.get(language) or self.title["en"]

    def section(self, section_id: str) -> SectionTemplate | None:
        return next((s for s in self.sections if s.id == section_id), None)


@cache
def templates() -> dict[str, NoteTemplate]:
    """Every template shipped in ``templates/``, by id."""
    found: dict[str, NoteTemplate] = {}
    for entry in files("iatros.clinical.scribe").joinpath("templates").iterdir():
        if entry.name.endswith(".yaml"):
            template = NoteTemplate.model_validate(yaml.safe_load(entry.read_text("utf-8")))
            found[template.id] = template
    return found
