"""The real local models: Gemma 3 270M (llama.cpp) and all-MiniLM-L6-v2, through the HTTP API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
import torch

from tests.conftest import RunningServer

if TYPE_CHECKING:
    from iatros.providers import embeddings as embeddings_module

pytestmark = pytest.mark.model


def ask(server: RunningServer, question: str, **kw: object) -> openai.types.chat.ChatCompletion:
    return server.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": question}],
        **kw,  # type: ignore[arg-type]
    )


def test_local_chat_answers_briefly(local_server: RunningServer) -> None:
    completion = ask(local_server, "What is the capital of France?", temperature=0)
    answer = completion.choices[0].message.content or ""
    assert "Paris" in answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 10
    assert 0 < completion.usage.completion_tokens < 100
    assert "\nUser:" not in answer and not answer.startswith(" ")


def test_local_streaming_sends_tokens_as_they_come(local_server: RunningServer) -> None:
    stream = local_server.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Name three common dental problems."}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=40,
    )
    arrivals: list[float] = []
    pieces: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
            pieces.append(chunk.choices[0].delta.content)
        if not chunk.choices:
            usage = chunk.usage
    assert len(pieces) >= 3
    assert arrivals[-1] - arrivals[0] > 0.01  # spread over time, not one burst at the end
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1


def test_seed_makes_sampling_repeatable_and_limits_are_honoured(
    local_server: RunningServer,
) -> None:
    first = ask(local_server, "Tell me about teeth.", temperature=1.0, seed=42, max_tokens=20)
    second = ask(local_server, "Tell me about teeth.", temperature=1.0, seed=42, max_tokens=20)
    assert first.choices[0].message.content == second.choices[0].message.content
    short = ask(local_server, "Describe the human heart in detail.", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens <= 4
    stopped = ask(local_server, "What is the capital of France?", temperature=0, stop=["Paris"])
    assert "Paris" not in (stopped.choices[0].message.content or "")


def test_local_model_refuses_what_it_cannot_do(local_server: RunningServer) -> None:
    client = local_server.client()
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(
            model="assistant",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
            ],
        )
    with pytest.raises(openai.BadRequestError, match="does not support: tools") as info:
        client.chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "Hi"}],
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
        )
    assert info.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    with pytest.raises(
        openai.BadRequestError, match="context window available for 'assistant' is 2048"
    ) as info:
        ask(local_server, "word " * 3000)
    assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    assert ask(local_server, "Hi", max_tokens=5).choices[0].message.content is not None


def test_full_queue_answers_429_with_retry_after(local_server: RunningServer) -> None:
    # max_queue is 2 in the test server: one generating plus two waiting; the rest are refused.
    def one(i: int) -> httpx.Response:
        with local_server.http() as http:
            return http.post(
                "/v1/chat/completions",
                json={
                    "model": "assistant",
                    "max_tokens": 48,
                    "temperature": 0,
                    "messages": [
                        {"role": "user", "content": f"Write a long story about tooth {i}."}
                    ],
                    "user": f"user-{i}",
                },
            )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 3
    refused = [r for r in responses if r.status_code == 429]
    assert refused, statuses
    for resp in refused:
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["code"] == "queue_full"
    assert ask(local_server, "Hi", max_tokens=5).choices[0].message.content is not None


def test_client_disconnect_cancels_generation(local_server: RunningServer) -> None:
    provider = local_server.gateway.providers["local"]
    body = (
        b'{"model":"assistant","stream":true,"max_tokens":1500,"temperature":0.9,'
        b'"messages":[{"role":"user","content":"Write a very long essay on the history '
        b'of dentistry, with many chapters."}]}'
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n"
        b"authorization: Bearer " + local_server.client().api_key.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    sock = socket.create_connection(("127.0.0.1", local_server.port))
    sock.sendall(request)
    received = b""
    while received.count(b"data: ") < 3:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection: {received[:300]!r}"
        received += chunk
    assert provider._busy
    sock.close()
    deadline = time.time() + 5
    while provider._busy and time.time() < deadline:
        time.sleep(0.02)
    assert not provider._busy, "generation kept running after the client left"
    cancelled = 'iatros_requests_total{endpoint="chat",model="gemma-3-270m",status="499"}'
    while cancelled not in httpx.get(local_server.url + "/metrics").text:
        assert time.time() < deadline + 5, "the cancelled request was not accounted for"
        time.sleep(0.05)


def test_local_embeddings(local_server: RunningServer) -> None:
    client = local_server.client()
    result = client.embeddings.create(
        model="all-minilm-l6-v2",
        input=[
            "How do I treat a toothache?",
            "What helps with tooth pain?",
            "The stock market fell today.",
        ],
        encoding_format="float",
    )
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert result.usage.prompt_tokens > 10
    default = client.embeddings.create(
        model="all-minilm-l6-v2", input="How do I treat a toothache?"
    )
    assert default.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)


def test_short_batches_on_onnx_embed_as_pytorch_does(local_server: RunningServer) -> None:
    """Questions run on ONNX Runtime, long batches on PyTorch: one vector space."""
    provider = local_server.gateway.providers["minilm"]
    assert provider._onnx is not None, "ONNX Runtime path not loaded"
    client = local_server.client()
    question = "What is the amoxicillin dose for a 20 kg child?"
    short = client.embeddings.create(model="all-minilm-l6-v2", input=[question])
    long_text = "Guideline on antibiotic prophylaxis before dental extraction. " * 40
    long = client.embeddings.create(model="all-minilm-l6-v2", input=[question, long_text])
    assert long.usage.prompt_tokens > provider.options.onnx_max_tokens  # PyTorch's side
    if provider.precision == "float32":
        assert short.data[0].embedding == pytest.approx(long.data[0].embedding, abs=1e-4)
    else:  # bfloat16 (a CPU with AMX): the float32 pair is checked on every machine below
        assert cosine(short.data[0].embedding, long.data[0].embedding) > 0.999
    assert short.usage.prompt_tokens == len(provider._model.tokenizer(question)["input_ids"])


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


LONG_BATCH = [
    "What is the amoxicillin dose for a 20 kg child?",
    "Guideline on antibiotic prophylaxis before dental extraction. " * 40,
]


@contextlib.asynccontextmanager
async def embedding_provider(
    **options: object,
) -> AsyncIterator[embeddings_module.SentenceTransformerProvider]:
    from iatros.providers import embeddings

    provider = embeddings.SentenceTransformerProvider(
        "minilm", embeddings.EmbeddingOptions.model_validate(options)
    )
    await provider.start()
    try:
        await provider.wait_ready(timeout_s=300)
        yield provider
    finally:
        await provider.close()


async def embed(
    provider: embeddings_module.SentenceTransformerProvider, texts: list[str]
) -> list[list[float]]:
    return (await provider.embed(None, texts)).vectors  # type: ignore[arg-type]


async def test_float32_pytorch_and_onnx_embed_alike() -> None:
    async with embedding_provider(precision="float32") as provider:
        assert provider.precision == "float32" and provider._onnx is not None
        short = await embed(provider, LONG_BATCH[:1])  # ONNX Runtime
        both = await embed(provider, LONG_BATCH)  # PyTorch
        assert short[0] == pytest.approx(both[0], abs=1e-4)


async def test_bfloat16_embeds_as_float32_does() -> None:
    """Ingestion's fast path (AMX): unit vectors at cosine > 0.999 to float32's."""
    async with embedding_provider(precision="float32", onnx_max_tokens=0) as provider:
        reference = await embed(provider, LONG_BATCH)
    async with embedding_provider(precision="bfloat16", onnx_max_tokens=0) as provider:
        assert provider.precision == "bfloat16"
        assert next(provider._model.parameters()).dtype == torch.bfloat16
        vectors = await embed(provider, LONG_BATCH)
    for ours, theirs in zip(vectors, reference, strict=True):
        assert math.isclose(cosine(ours, ours), 1.0, rel_tol=1e-5)
        assert cosine(ours, theirs) > 0.999


async def test_auto_precision_is_float32_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    from iatros.providers import embeddings

    monkeypatch.setattr(embeddings, "_has_amx", lambda: False)
    async with embedding_provider(onnx_max_tokens=0) as provider:
        assert provider.precision == "float32"
        assert next(provider._model.parameters()).dtype == torch.float32
        assert await embed(provider, []) == []


async def test_bfloat16_that_disagrees_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from iatros.providers import embeddings

    monkeypatch.setattr(embeddings, "_AGREEMENT_BFLOAT16", 1.5)  # no model can agree
    async with embedding_provider(precision="bfloat16", onnx_max_tokens=0) as provider:
        assert provider.precision == "float32"
        assert next(provider._model.parameters()).dtype == torch.float32
        assert len((await embed(provider, LONG_BATCH))[1]) == 384
    assert "bfloat16 embeddings differ from float32" in caplog.text


def test_readiness_reports_loaded_models(local_server: RunningServer) -> None:
    body = httpx.get(local_server.url + "/readyz").json()
    assert body == {
        "status": "ready",
        "checks": {
            "provider:local": True,
            "provider:minilm": True,
            "provider:whisper": True,
            "store": True,
            "heap": True,
        },
    }


async def test_embeddings_fall_back_to_pytorch_when_onnx_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iatros.providers import embeddings

    def broken(*args: object) -> None:
        raise RuntimeError("export failed: unsupported operator")

    monkeypatch.setattr(embeddings, "_OnnxEncoder", broken)
    provider = embeddings.SentenceTransformerProvider("minilm", embeddings.EmbeddingOptions())
    await provider.start()
    try:
        await provider.wait_ready(timeout_s=300)
        assert provider._onnx is None
        result = await provider.embed(None, ["How do I treat a toothache?"])  # type: ignore[arg-type]
        assert len(result.vectors[0]) == 384
    finally:
        await provider.close()


async def test_a_bulk_request_is_embedded_in_pieces_in_the_callers_order() -> None:
    texts = [
        f"Note {i}: " + "periodontal pocket depth recorded. " * (1 + (i * 7) % 13) for i in range(9)
    ]
    async with embedding_provider(precision="float32", onnx_max_tokens=0) as provider:
        alone = [(await embed(provider, [text]))[0] for text in texts]
        provider.options.batch_size = 2  # five pieces, grouped by length
        result = await provider.embed(None, texts)  # type: ignore[arg-type]
        tokenizer = provider._model.tokenizer
    for ours, single in zip(result.vectors, alone, strict=True):
        assert ours == pytest.approx(single, abs=1e-4)
    assert result.usage.prompt_tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)


async def test_a_question_waits_for_one_piece_of_a_bulk_request_not_all_of_it() -> None:
    """The encoder thread takes jobs in turn; a bulk request queues one piece at a time."""
    passages = ["Guideline on antibiotic prophylaxis before dental extraction. " * 30] * 64
    async with embedding_provider(precision="float32", onnx_max_tokens=0, batch_size=4) as provider:
        finished: list[str] = []

        async def bulk() -> None:
            await embed(provider, passages)  # 16 pieces
            finished.append("bulk")

        running = asyncio.create_task(bulk())
        await asyncio.sleep(0)  # the first piece is with the encoder
        await embed(provider, ["What is the amoxicillin dose for a 20 kg child?"])
        finished.append("question")
        await running
    assert finished == ["question", "bulk"]
