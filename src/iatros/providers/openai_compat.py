"""Any OpenAI-compatible HTTP API: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp server.

One pooled aiohttp session per provider. Streams are passed through chunk by
chunk; upstream failures become gateway errors that say whose fault they are
(the client's request, the upstream's credentials, or an outage worth retrying).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from iatros.errors import GatewayError, InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from iatros.providers.base import ChatCall, ChatResult, EmbedResult, Provider, StreamDelta, Usage
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
        self._base = options.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
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

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.options.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(
                total=self.options.timeout_s, sock_connect=self.options.connect_timeout_s
            ),
            json_serialize=lambda o: orjson.dumps(o).decode(),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health_check(self) -> bool:
        """``GET /models``: cheap, authenticated, and served by every compatible API."""
        if self._session is None:
            return False
        url = (
            f"{self._base}/openai/models?api-version={self.options.api_version}"
            if self.options.flavor == "azure"
            else f"{self._base}/models"
        )
        try:
            async with self._session.get(url) as resp:
                return resp.status < 500 and resp.status != 401
        except (TimeoutError, aiohttp.ClientError):
            return False

    # -- request building -------------------------------------------------

    def _url(self, deployment: DeploymentConfig, op: str) -> str:
        if self.options.flavor == "azure":
            return (
                f"{self._base}/openai/deployments/{deployment.model}/{op}"
                f"?api-version={self.options.api_version}"
            )
        return f"{self._base}/{op}"

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
        return orjson.dumps(body)

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamError(f"provider {self.name!r} is not started", retryable=False)
        return self._session

    # -- error mapping ----------------------------------------------------

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        raw = await resp.read()
        message = raw[:500].decode("utf-8", "replace")
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                message = str(parsed["error"].get("message") or message)
        except orjson.JSONDecodeError:
            pass
        raise _map_status(self.name, resp.status, message, resp.headers.get("retry-after"))

    def _map_exception(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeout(f"provider {self.name!r} timed out")
        return UpstreamError(
            f"provider {self.name!r} is unreachable: {type(exc).__name__}",
            code="upstream_unreachable",
        )

    # -- operations -------------------------------------------------------

    async def chat(self, deployment: DeploymentConfig, call: ChatCall) -> ChatResult:
        session = self._session_or_fail()
        try:
            async with session.post(
                self._url(deployment, "chat/completions"),
                data=self._chat_body(deployment, call, stream=False),
            ) as resp:
                await self._raise_for_status(resp)
                data = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise self._map_exception(exc) from exc
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
        session = self._session_or_fail()
        finished = False
        streaming = False
        try:
            async with session.post(
                self._url(deployment, "chat/completions"),
                data=self._chat_body(deployment, call, stream=True),
            ) as resp:
                await self._raise_for_status(resp)
                streaming = True
                async for raw_line in resp.content:
                    line = raw_line.strip()
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
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            if streaming and not isinstance(exc, asyncio.TimeoutError):
                finished = False
            else:
                raise self._map_exception(exc) from exc
        if not finished:
            raise UpstreamError(
                f"provider {self.name!r} closed the stream before it completed",
                code="upstream_stream_dropped",
            )

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        session = self._session_or_fail()
        body: dict[str, Any] = {**deployment.params, "input": inputs}
        if self.options.flavor != "azure":
            body["model"] = deployment.model
        try:
            async with session.post(
                self._url(deployment, "embeddings"), data=orjson.dumps(body)
            ) as resp:
                await self._raise_for_status(resp)
                data = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise self._map_exception(exc) from exc
        try:
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [list(map(float, item["embedding"])) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"provider {self.name!r} sent malformed embeddings") from exc
        return EmbedResult(vectors=vectors, usage=_usage(data.get("usage")) or Usage())


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
