"""Any OpenAI-compatible HTTP API: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp server.

One pool of keep-alive connections per provider (:mod:`iatros.providers.http`).
Streams are passed through event by event; upstream failures become gateway errors
that say whose fault they are (the client's request, the upstream's credentials,
or an outage worth retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from iatros.errors import GatewayError, InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from iatros.providers.base import ChatCall, ChatResult, EmbedResult, Provider, StreamDelta, Usage
from iatros.providers.http import HttpClient, HttpError, RequestTimeout
from iatros.providers.registry import parse_options

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1)
    """e.g. https://api.openai.com/v1, http://127.0.0.1:11434/v1 (Ollama),
    https://RES.openai.azure.com (Azure)."""
    api_key: SecretStr | None = None
    api_version: str | None = None
    """Azure only: the ``api-version`` query parameter."""
    flavor: Literal["openai", "azure"] = "openai"
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    probe: Literal["models", "chat"] = "models"
    """How an open breaker probes this provider: ``models`` (``GET /models``: free and
    cheap, shows the API answers) or ``chat`` (a one-token completion of the deployment's
    model: shows the model answers, costs a token)."""


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
    )


class OpenAICompatProvider(Provider):
    type_name = "openai"

    def __init__(self, name: str, options: OpenAIOptions) -> None:
        super().__init__(name)
        self.options = options
        self._client: HttpClient | None = None
        headers = {"content-type": "application/json", **options.headers}
        if options.api_key is not None:
            secret = options.api_key.get_secret_value()
            if options.flavor == "azure":
                headers["api-key"] = secret
            else:
                headers["authorization"] = f"Bearer {secret}"
        self._headers = headers
        if options.flavor == "azure" and not options.api_version:
            from iatros.config import ConfigError

            raise ConfigError(f"providers.{name}.api_version: required for Azure OpenAI")
        try:
            self._make_client()
        except ValueError as exc:
            from iatros.config import ConfigError

            raise ConfigError(f"providers.{name}: {exc}") from None

    def _make_client(self) -> HttpClient:
        return HttpClient(
            self.options.base_url,
            headers=self._headers,
            max_connections=self.options.max_connections,
            connect_timeout_s=self.options.connect_timeout_s,
            timeout_s=self.options.timeout_s,
        )

    async def start(self) -> None:
        self._client = self._make_client()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def health_check(self) -> bool:
        """``GET /models``: cheap, authenticated, and served by every compatible API."""
        if self._client is None:
            return False
        target = (
            self._client.url_path("openai/models", f"api-version={self.options.api_version}")
            if self.options.flavor == "azure"
            else self._client.url_path("models")
        )
        try:
            status, _, _ = await self._client.request("GET", target, limit=4 * 1024 * 1024)
        except HttpError:
            return False
        return status < 500 and status != 401

    async def probe(self, deployment: DeploymentConfig) -> bool:
        """``GET /models``, or with ``probe: chat`` a one-token completion of ``deployment``."""
        if self.options.probe == "models":
            return await self.health_check()
        if self._client is None:
            return False
        body = self._chat_body(
            deployment,
            ChatCall(messages=[{"role": "user", "content": "ping"}], max_tokens=1),
            stream=False,
        )
        target = self._target(self._client, deployment, "chat/completions")
        try:
            status, _, _ = await self._client.request("POST", target, body)
        except HttpError:
            return False
        return 200 <= status < 300

    # -- request building -------------------------------------------------

    def _target(self, client: HttpClient, deployment: DeploymentConfig, op: str) -> str:
        if self.options.flavor == "azure":
            return client.url_path(
                f"openai/deployments/{deployment.model}/{op}",
                f"api-version={self.options.api_version}",
            )
        return client.url_path(op)

    def _chat_body(self, deployment: DeploymentConfig, call: ChatCall, stream: bool) -> bytes:
        body: dict[str, Any] = {**deployment.params, **call.extra, "messages": call.messages}
        if self.options.flavor != "azure":
            body["model"] = deployment.model
        for key in ("temperature", "top_p", "max_tokens", "seed", "user"):
            value = getattr(call, key)
            if value is not None:
                body[key] = value
        if call.stop:
            body["stop"] = call.stop
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        try:
            return orjson.dumps(body)
        except TypeError as exc:  # an integer beyond 64 bits: the API refuses those first
            raise InvalidRequest(
                f"The request cannot be sent to the model as JSON: {exc}", code="invalid_value"
            ) from None

    def _client_or_fail(self) -> HttpClient:
        if self._client is None:
            raise UpstreamError(f"provider {self.name!r} is not started", retryable=False)
        return self._client

    # -- error mapping ----------------------------------------------------

    def _raise_for_status(self, status: int, headers: Mapping[str, str], raw: bytes) -> None:
        if status < 400:
            return
        message = raw[:500].decode("utf-8", "replace")
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                message = str(parsed["error"].get("message") or message)
        except orjson.JSONDecodeError:
            pass
        raise _map_status(self.name, status, message, headers.get("retry-after"))

    def _map_exception(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, RequestTimeout | TimeoutError):
            return UpstreamTimeout(f"provider {self.name!r} timed out")
        if isinstance(exc, orjson.JSONDecodeError):
            return UpstreamError(f"provider {self.name!r} sent a body that is not JSON")
        return UpstreamError(
            f"provider {self.name!r} is unreachable: {exc}",
            code="upstream_unreachable",
        )

    async def _post_json(self, target: str, body: bytes) -> Any:
        client = self._client_or_fail()
        try:
            status, headers, raw = await client.request("POST", target, body)
            self._raise_for_status(status, headers, raw)
            return orjson.loads(raw)
        except (HttpError, orjson.JSONDecodeError) as exc:
            raise self._map_exception(exc) from exc

    # -- operations -------------------------------------------------------

    async def chat(self, deployment: DeploymentConfig, call: ChatCall) -> ChatResult:
        client = self._client_or_fail()
        data = await self._post_json(
            self._target(client, deployment, "chat/completions"),
            self._chat_body(deployment, call, stream=False),
        )
        try:
            choice = data["choices"][0]
            message = dict(choice["message"])
        except (KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"provider {self.name!r} sent a malformed completion") from exc
        message.setdefault("role", "assistant")
        return ChatResult(
            message=message,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            usage=_usage(data.get("usage")) or Usage(),
        )

    async def stream(
        self, deployment: DeploymentConfig, call: ChatCall
    ) -> AsyncIterator[StreamDelta]:
        client = self._client_or_fail()
        finished = False
        streaming = False
        try:
            async with client.stream(
                "POST",
                self._target(client, deployment, "chat/completions"),
                self._chat_body(deployment, call, stream=True),
            ) as resp:
                if resp.status >= 400:
                    self._raise_for_status(resp.status, resp.headers, await resp.read(65536))
                streaming = True
                chunks = resp.iter_chunks()
                async for line in _lines(chunks):
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        finished = True
                        break
                    chunk = orjson.loads(payload)
                    if isinstance(chunk, dict) and "error" in chunk:
                        err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        raise UpstreamError(
                            f"provider {self.name!r} failed mid-stream: "
                            f"{err.get('message', 'unknown error')}"
                        )
                    choices = chunk.get("choices") or []
                    usage = _usage(chunk.get("usage"))
                    if not choices:
                        if usage is not None:
                            yield StreamDelta(delta={}, usage=usage)
                        continue
                    choice = choices[0]
                    yield StreamDelta(
                        delta=choice.get("delta") or {},
                        finish_reason=choice.get("finish_reason"),
                        usage=usage,
                    )
                if finished and not resp.complete:
                    await _drain(chunks)
        except (HttpError, orjson.JSONDecodeError) as exc:
            if not streaming or isinstance(exc, RequestTimeout):
                raise self._map_exception(exc) from exc
            finished = False
        if not finished:
            raise UpstreamError(
                f"provider {self.name!r} closed the stream before it completed",
                code="upstream_stream_dropped",
            )

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        client = self._client_or_fail()
        body: dict[str, Any] = {**deployment.params, "input": inputs}
        if self.options.flavor != "azure":
            body["model"] = deployment.model
        data = await self._post_json(
            self._target(client, deployment, "embeddings"), orjson.dumps(body)
        )
        try:
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [list(map(float, item["embedding"])) for item in items]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"provider {self.name!r} sent malformed embeddings") from exc
        return EmbedResult(vectors=vectors, usage=_usage(data.get("usage")) or Usage())


async def _drain(chunks: AsyncIterator[bytes], wait_s: float = 1.0) -> None:
    """Read what follows [DONE] (the body's end) so the connection can be reused; bounded."""
    with contextlib.suppress(HttpError, TimeoutError):
        async with asyncio.timeout(wait_s):
            async for _ in chunks:
                pass


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split a byte stream into lines (without their ends); SSE events are line-based."""
    rest = b""
    async for chunk in chunks:
        if rest:
            chunk = rest + chunk
        lines = chunk.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line.rstrip(b"\r")
    if rest:
        yield rest.rstrip(b"\r")


def _map_status(provider: str, status: int, message: str, retry_after: str | None) -> GatewayError:
    """Say whose fault an upstream HTTP error is."""
    if status == 429:
        try:
            wait = float(retry_after) if retry_after else 1.0
        except ValueError:
            wait = 1.0
        return Overloaded(
            f"provider {provider!r} is rate limiting: {message}",
            retry_after_s=wait,
            code="upstream_rate_limited",
        )
    if status in (401, 403):
        return UpstreamError(
            f"provider {provider!r} rejected the gateway's credentials ({status})",
            retryable=False,
            upstream_status=status,
            code="upstream_auth_failed",
        )
    if status in (400, 422):
        return InvalidRequest(f"provider {provider!r} rejected the request: {message}")
    if status == 404:
        return UpstreamError(
            f"provider {provider!r} does not know this model or path (404): {message}",
            retryable=False,
            upstream_status=status,
            code="upstream_not_found",
        )
    return UpstreamError(
        f"provider {provider!r} failed ({status}): {message}",
        retryable=status >= 500 or status == 408,
        upstream_status=status,
    )


def factory(name: str, options: dict[str, Any]) -> Provider:
    return OpenAICompatProvider(name, parse_options(name, OpenAIOptions, options))


def azure_factory(name: str, options: dict[str, Any]) -> Provider:
    return OpenAICompatProvider(
        name, parse_options(name, OpenAIOptions, {**options, "flavor": "azure"})
    )
