"""AI findings on radiographs: asked through the chat service of a real gateway, answered
by the fake vision model on loopback, validated, retried once, or returned unparsed."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.auth import ANONYMOUS
from iatros.clinical.imaging.findings import (
    FINDING_TYPES,
    AiFinding,
    ImageAnalyst,
    parse_findings,
    valid_tooth,
)
from iatros.config import load_settings
from iatros.errors import GatewayError, InvalidRequest
from iatros.gateway.context import RequestContext
from iatros.services import Services
from iatros.testing.fake_upstream import FakeUpstream
from iatros.testing.fake_vision import INVALID_ANSWER, FakeVision, marked_png

WIDTH, HEIGHT = 320, 160


@pytest.fixture(scope="module")
def vision() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


def _config(data_dir: Path, upstream: FakeUpstream, vision: FakeVision | None) -> dict[str, Any]:
    providers: dict[str, Any] = {
        "text": {"type": "openai", "base_url": upstream.base_url, "api_key": "k"},
    }
    deployments: dict[str, Any] = {"text-gpt": {"provider": "text", "model": "gpt"}}
    models: dict[str, Any] = {"assistant": {"deployments": ["text-gpt"]}}
    if vision is not None:
        providers["v"] = {"type": "openai", "base_url": vision.base_url, "api_key": "k"}
        deployments["vision-a"] = {"provider": "v", "model": "vision-a", "vision": True}
        models["radiology"] = {"deployments": ["vision-a"]}
    return {
        "data_dir": str(data_dir),
        "providers": providers,
        "deployments": deployments,
        "models": models,
        "embeddings": {"default_model": None},
    }


async def _services(config: dict[str, Any]) -> Services:
    services = Services.build(load_settings(overrides=config))
    await services.start()
    return services


@pytest.fixture()
async def analyst(
    tmp_path: Path, upstream: FakeUpstream, vision: FakeVision
) -> AsyncIterator[tuple[ImageAnalyst, Services]]:
    vision.reset()
    services = await _services(_config(tmp_path / "data", upstream, vision))
    yield ImageAnalyst(services.chat, services.settings), services
    await services.close()


async def test_findings_from_a_marked_radiograph(
    analyst: tuple[ImageAnalyst, Services], vision: FakeVision
) -> None:
    image, services = analyst
    accounted: list[RequestContext] = []
    services.gateway.sinks.append(accounted.append)
    png = marked_png(WIDTH, HEIGHT, [(200, 40, 20, 30), (30, 100, 16, 16)])
    assert image.available() == ["radiology"]
    result = await image.analyse(ANONYMOUS, png, width=WIDTH, height=HEIGHT, patient_id="p-1")
    assert result.parsed and result.model == "vision-a" and result.request_id
    assert result.findings == [
        AiFinding(
            "caries", 16, (30.0, 100.0, 16.0, 16.0), 0.82,
            "Radiolucency in the distal enamel and dentine of 16.",
        ),
        AiFinding(
            "periapical_lesion", 36, (200.0, 40.0, 20.0, 30.0), 0.71,
            "Periapical radiolucency at the mesial root of 36.",
        ),
    ]  # fmt: skip
    seen = vision.requests
    assert len(seen) == 1 and seen[0].images == [hashlib.sha256(png).hexdigest()]
    assert f"{WIDTH} pixels wide and {HEIGHT} pixels high" in seen[0].texts[1]
    assert [(c.endpoint, c.patient_id, c.status) for c in accounted] == [
        ("radiographs", "p-1", 200)
    ]


async def test_an_invalid_answer_is_retried_once_with_the_reasons(
    analyst: tuple[ImageAnalyst, Services], vision: FakeVision
) -> None:
    image, _ = analyst
    vision.reset(invalid="first")
    png = marked_png(WIDTH, HEIGHT, [(10, 10, 12, 12)])
    result = await image.analyse(ANONYMOUS, png, width=WIDTH, height=HEIGHT, patient_id=None)
    assert result.parsed and [f.finding for f in result.findings] == ["caries"]
    assert vision.served == 2
    retry = vision.requests[1]
    assert retry.images == [hashlib.sha256(png).hexdigest()]  # the image is asked about again
    assert INVALID_ANSWER in retry.texts
    assert any("could not be used: the answer is not JSON" in t for t in retry.texts)


async def test_an_answer_invalid_twice_is_returned_unparsed(
    analyst: tuple[ImageAnalyst, Services], vision: FakeVision
) -> None:
    image, _ = analyst
    vision.reset(invalid="always")
    png = marked_png(WIDTH, HEIGHT, [(10, 10, 12, 12)])
    result = await image.analyse(ANONYMOUS, png, width=WIDTH, height=HEIGHT, patient_id=None)
    assert (result.parsed, result.findings, result.raw_text) == (False, [], INVALID_ANSWER)
    assert result.model == "vision-a" and vision.served == 2


@pytest.mark.parametrize(
    ("finding", "reason"),
    [
        ({"finding": "caries", "tooth": 19, "confidence": 0.5}, "19 is not an FDI tooth"),
        ({"finding": "caries", "tooth": 56, "confidence": 0.5}, "56 is not an FDI tooth"),
        (
            {"finding": "caries", "tooth": 16, "confidence": 0.5, "box": [300, 10, 40, 10]},
            f"is not inside the {WIDTH}x{HEIGHT} image",
        ),
        ({"finding": "tumour", "tooth": 16, "confidence": 0.5}, "'tumour' is not one of"),
        ({"finding": "caries", "tooth": 16, "confidence": 1.5}, "confidence"),
    ],
)
async def test_a_finding_outside_the_schema_is_refused_not_trimmed(
    analyst: tuple[ImageAnalyst, Services],
    vision: FakeVision,
    finding: dict[str, Any],
    reason: str,
) -> None:
    image, _ = analyst
    png = marked_png(WIDTH, HEIGHT, [], seed=len(reason))
    good = {"finding": "restoration", "tooth": 46, "confidence": 0.9, "explanation": "Filling."}
    vision.register(png, [good, finding])
    result = await image.analyse(ANONYMOUS, png, width=WIDTH, height=HEIGHT, patient_id=None)
    assert not result.parsed and result.findings == []
    assert '"tooth":46' in result.raw_text  # what the model said, for the clinician to read
    assert vision.served == 2
    assert any(reason in t and "findings.1." in t for t in vision.requests[1].texts)


async def test_no_vision_model_is_a_400_that_says_how_to_configure_one(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    services = await _services(_config(tmp_path / "data", upstream, None))
    try:
        image = ImageAnalyst(services.chat, services.settings)
        assert image.available() == []
        with pytest.raises(InvalidRequest) as caught:
            await image.analyse(ANONYMOUS, b"png", width=10, height=10, patient_id=None)
        assert caught.value.code == "no_vision_model" and caught.value.status == 400
        assert "vision: true" in caught.value.message
        with pytest.raises(InvalidRequest) as named:  # naming a model changes nothing
            await image.analyse(
                ANONYMOUS, b"png", width=10, height=10, patient_id=None, model="assistant"
            )
        assert named.value.code == "no_vision_model"
    finally:
        await services.close()
    assert upstream.served == 0


async def test_a_text_only_model_named_explicitly_is_refused_by_the_gateway(
    analyst: tuple[ImageAnalyst, Services], upstream: FakeUpstream
) -> None:
    image, _ = analyst
    png = marked_png(16, 16, [])
    with pytest.raises(GatewayError) as caught:
        await image.analyse(ANONYMOUS, png, width=16, height=16, patient_id=None, model="assistant")
    assert caught.value.code == "model_not_vision_capable" and caught.value.status == 400
    assert upstream.served == 0


async def test_a_configured_model_that_cannot_read_images_is_named(
    tmp_path: Path, upstream: FakeUpstream, vision: FakeVision
) -> None:
    config = _config(tmp_path / "data", upstream, vision)
    config["radiograph_analysis"] = {"model": "assistant"}
    services = await _services(config)
    try:
        image = ImageAnalyst(services.chat, services.settings)
        with pytest.raises(InvalidRequest) as caught:
            await image.analyse(ANONYMOUS, b"png", width=10, height=10, patient_id=None)
        assert caught.value.code == "no_vision_model"
        assert "'assistant' cannot take images" in caught.value.message
    finally:
        await services.close()


def test_fdi_tooth_numbers() -> None:
    permanent = [q * 10 + t for q in (1, 2, 3, 4) for t in range(1, 9)]
    primary = [q * 10 + t for q in (5, 6, 7, 8) for t in range(1, 6)]
    assert [n for n in range(-5, 120) if valid_tooth(n)] == permanent + primary
    assert not valid_tooth(True)
    assert not valid_tooth(16.0)  # type: ignore[arg-type]


def test_parse_findings_accepts_a_fenced_answer_or_a_bare_list() -> None:
    item = '{"finding": "bone_loss", "tooth": null, "box": [0, 0, 10, 10], "confidence": 0.4}'
    for text in (f'```json\n{{"findings": [{item}]}}\n```', f"[{item}]"):
        findings, errors = parse_findings(text, 10, 10)
        assert errors == [] and findings == [AiFinding("bone_loss", None, (0, 0, 10, 10), 0.4, "")]
    assert parse_findings('{"findings": []}', 10, 10) == ([], [])
    assert parse_findings("[" * 100_000, 10, 10)[1]  # nested too deeply: a reason, no crash
    assert "other" in FINDING_TYPES
