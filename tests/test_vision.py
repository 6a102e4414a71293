"""Multimodal chat: image parts through routing, fallback, the cache and the checks.

Two fake vision models (:mod:`iatros.testing.fake_vision`, real HTTP servers on loopback)
stand behind vision deployments; the shared fake upstream is a text-only model.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from iatros.api.app import create_app
from iatros.auth import ANONYMOUS
from iatros.cache.keys import KeyMaker
from iatros.cache.model import CacheRequest
from iatros.config import ConfigError, load_settings
from iatros.errors import InvalidRequest
from iatros.gateway.chat import ChatRequest
from iatros.gateway.context import RequestContext
from iatros.image_parts import ImageInputSettings, check_images, part_digest
from iatros.providers.base import ChatCall
from iatros.routing.router import estimate_prompt_tokens
from iatros.services import Services
from iatros.testing.fake_upstream import FakeUpstream
from iatros.testing.fake_vision import FakeVision, marked_png
from tests.conftest import ADMIN_KEY, RunningServer
from tests.test_readme import ROUTE

MAX_IMAGE_BYTES = 30_000


@pytest.fixture(scope="module")
def vision_a() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(scope="module")
def vision_b() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


def vision_config(a: FakeVision, b: FakeVision, text: FakeUpstream, **extra: Any) -> dict[str, Any]:
    def provider(url: str) -> dict[str, Any]:
        return {"type": "openai", "base_url": url, "api_key": "k", "timeout_s": 3}

    return {
        "admin_key": ADMIN_KEY,
        "providers": {
            "va": provider(a.base_url),
            "vb": provider(b.base_url),
            "text": provider(text.base_url),
        },
        "deployments": {
            "vision-a": {"provider": "va", "model": "vision-a", "vision": True},
            "vision-b": {"provider": "vb", "model": "vision-b", "vision": True},
            "text-gpt": {"provider": "text", "model": "gpt-text"},
            "text-embed": {"provider": "text", "model": "embed", "kind": "embedding"},
        },
        "models": {
            "assistant": {"deployments": ["text-gpt"]},
            "mixed": {"deployments": ["text-gpt", "vision-a"]},
            "radiology": {
                "deployments": ["vision-a", "vision-b"],
                "retry": {"max_attempts": 1},
                # Images are patient data: cached only where a route opts in.
                "cache": {"ttl_s": {"patient": 600}, "semantic": True},
            },
        },
        "embeddings": {"default_model": "text-embed"},
        "cache": {"enabled": True},
        "images": {"max_image_bytes": MAX_IMAGE_BYTES},
        **extra,
    }


@pytest.fixture(scope="module")
def server(
    vision_a: FakeVision,
    vision_b: FakeVision,
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("vision-data")
    settings = load_settings(
        overrides={"data_dir": str(data), **vision_config(vision_a, vision_b, fake_upstream)}
    )
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture()
def http(
    server: RunningServer, vision_a: FakeVision, vision_b: FakeVision, upstream: FakeUpstream
) -> Iterator[httpx.Client]:
    vision_a.reset()
    vision_b.reset()
    with server.http() as client:
        yield client


def data_url(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode()


def image_message(url: str, text: str = "What do you see?", **image: Any) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url, **image}},
        ],
    }


def ask(http: httpx.Client, model: str, *messages: dict[str, Any], **body: Any) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": list(messages), **body}
    )


def small_png(seed: int, boxes: list[tuple[int, int, int, int]] | None = None) -> bytes:
    return marked_png(64, 48, boxes or [], seed=seed)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_an_image_reaches_a_vision_deployment_which_reads_it(
    http: httpx.Client, vision_a: FakeVision
) -> None:
    png = small_png(1, [(10, 8, 12, 10)])
    r = ask(http, "radiology", image_message(data_url(png), detail="high"))
    assert r.status_code == 200, r.text
    assert r.headers["x-iatros-model"] == "vision-a"
    findings = orjson.loads(r.json()["choices"][0]["message"]["content"])["findings"]
    assert [(f["finding"], f["tooth"], f["box"]) for f in findings] == [
        ("caries", 16, [10, 8, 12, 10])
    ]
    seen = vision_a.requests[-1]
    assert seen.images == [hashlib.sha256(png).hexdigest()]
    assert seen.details == ["high"]
    assert seen.texts == ["What do you see?"]


def test_an_unknown_image_has_no_findings(http: httpx.Client) -> None:
    r = ask(http, "radiology", image_message(data_url(small_png(2))))
    assert r.status_code == 200, r.text
    assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {"findings": []}


def test_a_streamed_answer_about_an_image(http: httpx.Client) -> None:
    png = small_png(3, [(1, 1, 8, 8)])
    r = ask(http, "radiology", image_message(data_url(png)), stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-iatros-model"] == "vision-a"
    assert '\\"periapical_lesion\\"' not in r.text and "caries" in r.text
    assert r.text.rstrip().endswith("data: [DONE]")


def test_a_route_with_a_vision_deployment_takes_images_and_skips_text_only_ones(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    r = ask(http, "mixed", image_message(data_url(small_png(4))))
    assert r.status_code == 200, r.text
    assert r.headers["x-iatros-model"] == "vision-a"
    assert "skipped=text-gpt(text-only)" in r.headers["x-iatros-route"]
    assert ROUTE.fullmatch(r.headers["x-iatros-route"])  # the README's grammar
    assert upstream.served == 0
    text = ask(http, "mixed", {"role": "user", "content": "Hello"})
    assert text.headers["x-iatros-model"] == "text-gpt"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("assistant", {}),
        ("text-gpt", {}),  # a deployment asked for directly
        ("mixed", {"iatros": {"deployment": "text-gpt"}}),  # pinned
    ],
)
def test_images_sent_to_a_text_only_model_are_a_clear_400(
    http: httpx.Client, upstream: FakeUpstream, model: str, body: dict[str, Any]
) -> None:
    r = ask(http, model, image_message(data_url(small_png(5))), **body)
    error = error_of(r)
    assert error["code"] == "model_not_vision_capable"
    assert error["param"] == "model"
    assert repr(model) in error["message"] and "radiology" in error["message"]
    assert upstream.served == 0


def test_the_cache_keys_images_by_digest(
    http: httpx.Client, vision_a: FakeVision, vision_b: FakeVision
) -> None:
    png = small_png(7, [(5, 5, 9, 9)])
    first = ask(http, "radiology", image_message(data_url(png)))
    assert first.headers["x-iatros-cache"] == "miss"
    # The same bytes under another spelling of the data URL: the same entry.
    again = ask(http, "radiology", image_message(data_url(png, "IMAGE/PNG")))
    assert again.headers["x-iatros-cache"] == "hit-exact", again.text
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    other = ask(http, "radiology", image_message(data_url(small_png(8, [(5, 5, 9, 9)]))))
    assert other.headers["x-iatros-cache"] == "miss"
    assert vision_a.served + vision_b.served == 2


def test_requests_with_images_never_get_a_semantic_hit(
    http: httpx.Client, vision_a: FakeVision
) -> None:
    # Control: the route's semantic cache answers a reworded text question...
    base = {"role": "user", "content": "How long does a dental implant take to heal"}
    assert ask(http, "radiology", base).headers["x-iatros-cache"] == "miss"
    reworded = {**base, "content": base["content"] + "?"}
    assert ask(http, "radiology", reworded).headers["x-iatros-cache"] == "hit-semantic"
    # ...but never one with an image, even the same image and a near-identical question.
    png = small_png(9)
    one = ask(http, "radiology", image_message(data_url(png), "Any caries on this radiograph"))
    two = ask(http, "radiology", image_message(data_url(png), "Any caries on this radiograph?"))
    assert (one.headers["x-iatros-cache"], two.headers["x-iatros-cache"]) == ("miss", "miss")
    keys = KeyMaker(b"secret")
    req = CacheRequest("t", "radiology", "", [image_message(data_url(png))], {})
    assert keys.semantic_parts(req, max_turns=1, max_chars=500) is None


PNG = small_png(10)


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"url": "data:image/png;base64,@@@@"}, ".image_url.url", "invalid_image"),
        ({"url": "data:image/png;base64," + base64.b64encode(PNG).decode()[:-3]},
         ".image_url.url", "invalid_image"),
        ({"url": data_url(PNG, "image/gif")}, ".image_url.url", "unsupported_image_type"),
        ({"url": data_url(PNG, "image/jpeg")}, ".image_url.url", "invalid_image"),
        ({"url": "data:image/png," + "x" * 10}, ".image_url.url", "invalid_image"),
        ({"url": "data:image/png;base64"}, ".image_url.url", "invalid_image"),
        ({"url": "ftp://example.org/x.png"}, ".image_url.url", "invalid_image_url"),
        ({"url": "iatros://elsewhere/images/abc"}, ".image_url.url", "invalid_image_url"),
        ({"url": "http://169.254.169.254/latest"}, ".image_url.url", "remote_image_refused"),
        ({"url": "https://example.org/x.png"}, ".image_url.url", "remote_image_refused"),
        ({"url": data_url(PNG), "detail": "ultra"}, ".image_url.detail", "invalid_image"),
        ({"url": data_url(PNG), "size": 3}, ".image_url.size", "invalid_image"),
        ({}, ".image_url", "invalid_image"),
    ],
)  # fmt: skip
def test_bad_image_parts_are_a_precise_400(
    http: httpx.Client, vision_a: FakeVision, part: dict[str, Any], param: str, code: str
) -> None:
    message = image_message("", "Look")
    message["content"][1]["image_url"] = part
    r = ask(http, "radiology", {"role": "system", "content": "Be brief."}, message)
    error = error_of(r)
    assert (error["param"], error["code"]) == ("messages.1.content.1" + param, code), error
    assert vision_a.served == 0


def test_an_image_outside_a_user_message_or_not_an_object_is_refused(
    http: httpx.Client,
) -> None:
    assistant = {**image_message(data_url(PNG)), "role": "assistant"}
    error = error_of(ask(http, "radiology", assistant, {"role": "user", "content": "And?"}))
    assert (error["param"], error["code"]) == ("messages.0.content.1", "invalid_image")
    message = image_message("")
    message["content"][1]["image_url"] = data_url(PNG)  # a bare string, not {"url": ...}
    error = error_of(ask(http, "radiology", message))
    assert error["param"] == "messages.0.content.1.image_url"


def test_an_oversized_image_is_refused(http: httpx.Client, vision_a: FakeVision) -> None:
    big = marked_png(300, 300, [], seed=11)
    assert len(big) > MAX_IMAGE_BYTES
    error = error_of(ask(http, "radiology", image_message(data_url(big))))
    assert error["code"] == "image_too_large"
    assert error["param"] == "messages.0.content.1.image_url.url"
    assert str(MAX_IMAGE_BYTES) in error["message"]
    assert vision_a.served == 0


def test_vision_is_refused_on_the_local_text_model_and_on_embeddings() -> None:
    for deployment in (
        {"provider": "local", "model": "gemma-3-270m", "vision": True},
        {"provider": "minilm", "model": "all-MiniLM-L6-v2", "kind": "embedding", "vision": True},
    ):
        with pytest.raises(ConfigError, match=r"deployments\.d\.vision: only a chat model"):
            load_settings(
                overrides={
                    "deployments": {"d": deployment},
                    "models": {"assistant": {"deployments": ["gemma-3-270m"]}},
                }
            )


def test_too_many_images() -> None:
    parts = [{"type": "image_url", "image_url": {"url": data_url(PNG)}}] * 3
    with pytest.raises(InvalidRequest) as caught:
        check_images([{"role": "user", "content": parts}], ImageInputSettings(max_images=2))
    assert (caught.value.param, caught.value.code) == ("messages.0.content.2", "too_many_images")


def test_remote_urls_when_allowed_pass_but_are_never_cached() -> None:
    message = image_message("https://example.org/x.png")
    refs = check_images([message], ImageInputSettings(allow_remote_urls=True))
    assert [(r.kind, r.digest) for r in refs] == [("remote", None)]
    req = CacheRequest("t", "radiology", "", [message], {})
    assert KeyMaker(b"secret").exact_key(req) is None


def test_the_digest_checked_once_is_the_one_the_cache_keys_by() -> None:
    message = image_message(data_url(PNG))
    (ref,) = check_images([message], ImageInputSettings())
    part = message["content"][1]
    assert ref.digest == hashlib.sha256(PNG).hexdigest()
    assert part_digest(part) == f"sha256:{ref.digest}"  # remembered for this request
    assert contextvars.Context().run(part_digest, part) == f"sha256:{ref.digest}"  # decoded
    assert (
        part_digest({"type": "image_url", "image_url": {"url": "data:image/png;base64,@"}}) is None
    )


def test_token_estimates_count_images_and_never_fail() -> None:
    low = image_message(data_url(PNG), "", detail="low")
    high = image_message(data_url(PNG), "")
    odd = {"role": "user", "content": [{"type": "image_url", "image_url": "not-an-object"}, 3]}
    assert estimate_prompt_tokens([low]) == 85 + 4
    assert estimate_prompt_tokens([high]) == 765 + 4
    assert estimate_prompt_tokens([odd]) == 765 + 4


async def test_logged_content_holds_the_digest_never_the_image(
    tmp_path: Path, vision_a: FakeVision, vision_b: FakeVision, fake_upstream: FakeUpstream
) -> None:
    vision_a.reset()
    config = vision_config(vision_a, vision_b, fake_upstream, log_content=True)
    services = Services.build(load_settings(overrides={"data_dir": str(tmp_path), **config}))
    await services.start()
    try:
        seen: list[RequestContext] = []
        services.gateway.sinks.append(seen.append)
        png = small_png(12, [(2, 2, 7, 7)])
        call = ChatCall(messages=[image_message(data_url(png))])
        await services.chat.ask(ANONYMOUS, ChatRequest("radiology", call))
    finally:
        await services.close()
    logged = orjson.dumps(seen[0].content).decode()
    assert base64.b64encode(png).decode()[:40] not in logged
    assert "sha256:" + hashlib.sha256(png).hexdigest() in logged
    assert "caries" in logged  # the answer is logged as before


def test_a_failing_vision_deployment_falls_back_to_the_next(
    http: httpx.Client, vision_a: FakeVision, vision_b: FakeVision
) -> None:
    vision_a.reset(fail_status=500)
    png = small_png(6, [(30, 20, 10, 10)])
    r = ask(http, "radiology", image_message(data_url(png)))
    assert r.status_code == 200, r.text
    assert r.headers["x-iatros-model"] == "vision-b"
    assert "tried=vision-a>vision-b" in r.headers["x-iatros-route"]
    assert vision_a.served == 1 and vision_b.served == 1
    assert vision_b.requests[0].images == [hashlib.sha256(png).hexdigest()]
