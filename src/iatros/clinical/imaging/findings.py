"""AI findings on a radiograph: ask a vision model, validate its JSON, retry once.

The model is asked through :class:`ChatService` (endpoint ``radiographs``), so routing to
a vision deployment, fallback, governance, usage and audit apply as to any caller. Its
answer is untrusted text: it must be JSON findings of a known type, on an FDI tooth, with
a box inside the image. An answer that is not is sent back once with the reasons; if the
second answer is still unusable, the raw text is returned marked ``parsed=False`` so the
clinician sees what the model said but nothing half-valid becomes an annotation.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iatros.auth import Principal
from iatros.config import Settings
from iatros.errors import InvalidRequest
from iatros.gateway.chat import ChatRequest, ChatService
from iatros.gateway.image_refs import ImageSource
from iatros.providers.base import ChatCall

FINDING_TYPES = (
    "caries",
    "deep_caries",
    "periapical_lesion",
    "impacted_tooth",
    "restoration",
    "bone_loss",
    "other",
)
ENDPOINT = "radiographs"
"""How the analysis requests are accounted (usage, audit, metrics)."""
MAX_EXPLANATION_CHARS = 1000
CONFIGURE_HINT = (
    "Configure a deployment of a vision-capable model with 'vision: true' "
    "(deployments.<name>.vision), list it in a logical model (models.<name>.deployments), "
    "and optionally name that model in radiograph_analysis.model."
)
_LANGUAGES = {"en": "English", "fr": "French"}
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def valid_tooth(n: int) -> bool:
    """An FDI (ISO 3950) tooth number: quadrants 1-4 teeth 1-8, primary 5-8 teeth 1-5."""
    if isinstance(n, bool) or not isinstance(n, int):
        return False
    quadrant, tooth = divmod(n, 10)
    if 1 <= quadrant <= 4:
        return 1 <= tooth <= 8
    if 5 <= quadrant <= 8:
        return 1 <= tooth <= 5
    return False


@dataclass(frozen=True, slots=True)
class AiFinding:
    finding: str
    """One of :data:`FINDING_TYPES`."""
    tooth: int | None
    """FDI number (validated by :func:`valid_tooth`)."""
    box: tuple[float, float, float, float] | None
    """x, y, width, height in image pixels, inside the image."""
    confidence: float
    """0..1, as the model reports it (not calibrated)."""
    explanation: str


@dataclass(frozen=True, slots=True)
class Analysis:
    findings: list[AiFinding]
    parsed: bool
    """False: the model's output stayed invalid after one retry; ``raw_text`` holds it."""
    raw_text: str
    model: str | None
    """The deployment that answered."""
    request_id: str | None


class _FindingIn(BaseModel):
    """One finding as the model must write it (checked against the image's size)."""

    model_config = ConfigDict(extra="ignore")
    finding: str
    tooth: int | None = None
    box: tuple[float, float, float, float] | None = None
    confidence: float = Field(ge=0, le=1)
    explanation: str = Field("", max_length=MAX_EXPLANATION_CHARS)

    @field_validator("finding")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in FINDING_TYPES:
            raise ValueError(f"{value!r} is not one of {', '.join(FINDING_TYPES)}")
        return value

    @field_validator("tooth")
    @classmethod
    def _fdi(cls, value: int | None) -> int | None:
        if value is not None and not valid_tooth(value):
            raise ValueError(f"{value} is not an FDI tooth number (11-48, 51-85)")
        return value


class _FindingsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    findings: list[_FindingIn] = Field(max_length=100)


def parse_findings(text: str, width: int, height: int) -> tuple[list[AiFinding], list[str]]:
    """The findings in a model's answer, or the reasons it is unusable (never both).

    Accepts ``{"findings": [...]}`` (optionally inside a Markdown code fence) or a bare
    list. Every finding must be valid: a model that got one tooth wrong is asked again
    rather than having its answer silently trimmed.
    """
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        return [], [f"the answer is not JSON ({exc.msg} at character {exc.pos})"]
    except RecursionError:
        return [], ["the answer's JSON is nested too deeply"]
    if isinstance(data, list):
        data = {"findings": data}
    try:
        parsed = _FindingsIn.model_validate(data)
    except ValidationError as exc:
        return [], [_reason(err) for err in exc.errors()[:10]]
    out: list[AiFinding] = []
    errors: list[str] = []
    for i, item in enumerate(parsed.findings):
        if item.box is not None:
            x, y, w, h = item.box
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                errors.append(
                    f"findings.{i}.box: [{x:g}, {y:g}, {w:g}, {h:g}] is not inside the "
                    f"{width}x{height} image (x, y, width, height in pixels)"
                )
                continue
        out.append(AiFinding(item.finding, item.tooth, item.box, item.confidence, item.explanation))
    return ([], errors) if errors else (out, [])


def _reason(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "answer"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _instructions(width: int, height: int, language: str) -> str:
    lang = _LANGUAGES.get(language, "English")
    return (
        f"This dental radiograph is {width} pixels wide and {height} pixels high "
        "(origin at the top left). List what you see as JSON only, no prose, exactly:\n"
        '{"findings": [{"finding": "<type>", "tooth": <FDI number or null>, '
        '"box": [x, y, width, height] or null, "confidence": <0..1>, '
        '"explanation": "<one sentence>"}]}\n'
        f"<type> is one of: {', '.join(FINDING_TYPES)}. Teeth use FDI numbering "
        "(11-18, 21-28, 31-38, 41-48; primary 51-55, 61-65, 71-75, 81-85); use null when "
        "you cannot tell which tooth. The box is in image pixels and inside the image. "
        f"Write the explanations in {lang}. With nothing to report, answer "
        '{"findings": []}.'
    )


SYSTEM_PROMPT = (
    "You are a dental radiology assistant giving a second opinion to a dentist, who "
    "reviews every finding. Report only what the image shows; never invent a tooth "
    "number or a finding to fill the list."
)


class ImageAnalyst:
    """Asks the configured vision model for findings on one de-identified image."""

    def __init__(self, chat: ChatService, settings: Settings) -> None:
        self.chat = chat
        self.settings = settings

    def available(self) -> list[str]:
        """Logical models that can take images (the configured one first); [] = none."""
        vision = {name for name, dep in self.settings.deployments.items() if dep.vision}
        names = [
            name
            for name, route in self.settings.models.items()
            if vision.intersection(route.deployments)
        ]
        chosen = self.settings.radiograph_analysis.model
        if chosen is not None:
            if chosen in names:
                names.remove(chosen)
                names.insert(0, chosen)
            elif chosen in vision:
                names.insert(0, chosen)
        return names

    def _model(self, model: str | None) -> str:
        names = self.available()
        if model is not None and names:
            return model  # the gateway refuses it if it cannot take images
        configured = self.settings.radiograph_analysis.model
        if configured is not None and (not names or names[0] != configured):
            raise InvalidRequest(
                f"radiograph_analysis.model {configured!r} cannot take images. " + CONFIGURE_HINT,
                param="model",
                code="no_vision_model",
            )
        if not names:
            raise InvalidRequest(
                "No vision model is configured, so radiographs cannot be analysed. "
                + CONFIGURE_HINT,
                param="model",
                code="no_vision_model",
            )
        return names[0]

    async def analyse(
        self,
        principal: Principal,
        png: bytes,
        *,
        width: int,
        height: int,
        patient_id: str | None,
        language: str = "en",
        model: str | None = None,
    ) -> Analysis:
        """Findings for ``png`` (already de-identified), validated against the image size."""
        chosen = self._model(model)
        url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": _instructions(width, height, language)},
                    {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                ],
            },
        ]
        raw = ""
        deployment: str | None = None
        request_id: str | None = None
        for attempt in range(2):
            settings = self.settings.radiograph_analysis
            call = ChatCall(
                messages=list(messages),
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                fairness_key=f"{principal.tenant}/{principal.key_id}",
            )
            request = ChatRequest(chosen, call, cache_mode="no-cache", patient_id=patient_id)
            ctx, answer = await self.chat.ask(principal, request, endpoint=ENDPOINT)
            raw, deployment, request_id = answer.content, ctx.deployment or None, ctx.request_id
            findings, errors = parse_findings(raw, width, height)
            if not errors:
                return Analysis(findings, True, raw, deployment, request_id)
            if attempt == 0:
                messages += [
                    {"role": "assistant", "content": raw},
                    {
                        "role": "user",
                        "content": "Your answer could not be used: "
                        + "; ".join(errors)
                        + ". Answer again with the JSON only, in the shape asked.",
                    },
                ]
        return Analysis([], False, raw, deployment, request_id)


class _Renders(Protocol):
    async def render(
        self,
        principal: Principal,
        image_id: str,
        center: float | None,
        width: float | None,
        invert: bool,
    ) -> bytes: ...


def radiograph_images(radiographs: _Renders) -> ImageSource:
    """The reader of ``iatros://radiographs/images/<id>`` for chat requests: the image's
    default rendition (de-identified, 8-bit PNG), read by the radiograph service for the
    asker, so another tenant's image is a 404 and the read is audited."""

    async def read(principal: Principal, path: str) -> tuple[bytes, str]:
        kind, _, image_id = path.partition("/")
        if kind != "images" or not image_id or "/" in image_id:
            raise InvalidRequest(
                "A radiograph reference is iatros://radiographs/images/<image id>.",
                code="invalid_image_url",
            )
        return await radiographs.render(principal, image_id, None, None, False), "image/png"

    return read
