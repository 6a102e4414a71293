"""The chat service: one request path for every caller.

``ChatService`` owns the whole flow of a chat request — admission (budgets, rate limits),
grounding (``knowledge:`` routes), the response cache, routing, the call with retries and
fallback, storing the answer, and accounting — and knows nothing of HTTP. The HTTP
router, the CLI's in-process mode and every later feature (scribe, agents, experiments)
call it, so none of them can skip a step or copy the flow.

    service = ChatService(gateway, governance, grounder)
    reply = await service.ask(principal, ChatRequest("assistant", ChatCall(messages=[...])))

``respond`` is the lower-level entry: it takes the caller's :class:`RequestContext` (whose
headers the HTTP layer sends) and returns an :class:`Answer` (complete) or a
:class:`Streaming` (a live stream whose first delta has already arrived). The caller
accounts for the context with :meth:`finish` when the response has been delivered; a
stream is accounted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from iatros.auth import Principal
from iatros.cache import CachedResponse, CacheRequest
from iatros.errors import GatewayError
from iatros.experiments.assignment import bind_units
from iatros.gateway.caching import CacheMode, replay
from iatros.gateway.context import RequestContext
from iatros.gateway.grounding import Grounder, Grounding
from iatros.gateway.image_refs import ImageSource, resolve_references
from iatros.gateway.pipeline import Gateway
from iatros.gateway.safety import Escalations, SafetyStep
from iatros.gateway.verification import Policy
from iatros.governance.service import Governance
from iatros.image_parts import check_images, redacted
from iatros.observability.spans import retrieved, span
from iatros.providers.base import ChatCall, ChatResult, StreamDelta
from iatros.routing.router import Selection, estimate_prompt_tokens

T = TypeVar("T")


class CallGuard(Protocol):
    """Wraps the awaitable model call: e.g. cancels it when the caller goes away."""

    def __call__(self, work: Awaitable[T]) -> Awaitable[T]: ...


@dataclass(slots=True)
class ChatRequest:
    """A chat request, transport-free: what to ask, and the ``iatros`` options."""

    model: str
    call: ChatCall
    stream: bool = False
    pin: str | None = None
    """A deployment of ``model`` to use and no other (``iatros.deployment``)."""
    cache_mode: CacheMode = "default"
    cache_ttl_s: int | None = None
    knowledge: str | None = None
    """A collection to ground the answer in (else the route's ``knowledge:``, if any)."""
    knowledge_k: int | None = None
    patient_id: str | None = None
    conversation_id: str | None = None
    """The asker's conversation: a reviewer's answer to an escalation is shown in it."""


@dataclass(slots=True)
class Answer:
    """A complete answer: from the model, from the cache, or a refusal without sources."""

    message: dict[str, Any]
    finish_reason: str
    grounding: Grounding | None = None
    cached: CachedResponse | None = None

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")

    @property
    def extension(self) -> dict[str, Any] | None:
        return self.grounding.payload() if self.grounding is not None else None

    def deltas(self) -> Iterator[StreamDelta]:
        """The answer as stream deltas, for a caller that asked for a stream."""
        if self.cached is not None:
            yield from replay(self.cached)
            return
        yield StreamDelta({"role": "assistant", "content": self.content})
        yield StreamDelta({}, finish_reason=self.finish_reason)


@dataclass(slots=True)
class Streaming:
    """A live answer. ``deltas`` starts with the first delta; it stores the answer in the
    cache when the model finishes, and raises :class:`GatewayError` if the stream fails."""

    deltas: AsyncGenerator[StreamDelta, None]
    grounding: Grounding | None = None

    @property
    def extension(self) -> dict[str, Any] | None:
        return self.grounding.payload() if self.grounding is not None else None


class ChatService:
    def __init__(
        self,
        gateway: Gateway,
        governance: Governance,
        grounder: Grounder,
        escalations: Escalations | None = None,
    ) -> None:
        self.gateway = gateway
        self.governance = governance
        self.grounder = grounder
        self.settings = gateway.settings
        self.safety = SafetyStep(escalations, self.settings.knowledge.verification)
        self.image_sources: dict[str, ImageSource] = {}
        """Readers of stored images that requests may name (``iatros://<source>/...``),
        registered by the composition root (``gateway/image_refs.py``)."""

    async def ask(
        self, principal: Principal, request: ChatRequest, *, endpoint: str = "chat",
        traceparent: str | None = None,
    ) -> tuple[RequestContext, Answer]:
        """Ask and wait for the whole answer, accounted as one request of ``endpoint``.

        For callers without a transport of their own (features, the CLI's ``--no-stream``).
        ``traceparent`` makes the request's trace a child of the caller's span (an
        agent's ``invoke_agent``).
        """
        ctx = RequestContext(principal=principal, endpoint=endpoint)
        self.gateway.tracing.begin(ctx, traceparent)
        request.stream = False
        try:
            reply = await self.respond(ctx, request)
            assert isinstance(reply, Answer)
            return ctx, reply
        except GatewayError as exc:
            ctx.status = exc.status
            raise
        finally:
            self.finish(ctx)

    def finish(self, ctx: RequestContext) -> None:
        """Account for a delivered request: metrics, log line, usage and audit records."""
        self.gateway.finish(ctx)

    async def respond(
        self, ctx: RequestContext, request: ChatRequest, *, guard: CallGuard | None = None
    ) -> Answer | Streaming:
        """Admission → grounding → cache → plan → call → store (see the module docstring).

        ``guard`` wraps the model call only (the HTTP layer cancels it when the client
        leaves): a cache hit or a refusal answers without one, and watching a connection
        costs a task per request, which a cache hit would feel.
        """
        gw = self.gateway
        call = request.call
        ctx.model = request.model
        images = check_images(call.messages, self.settings.images, self.image_sources)
        if request.patient_id is not None:
            ctx.patient_id = request.patient_id
        with span(ctx.trace, "admission"):
            await self.governance.admit(ctx, estimate_prompt_tokens(call.messages))
        if images and any(image.kind == "reference" for image in images):
            call.messages = await resolve_references(  # stored images, read for the asker
                ctx.principal, call.messages, self.image_sources, self.settings.images
            )
        if self.settings.log_content:
            ctx.content = {"messages": redacted(call.messages)}  # digests, never image bytes
        route = self.settings.models.get(request.model)
        collection = request.knowledge or (route.knowledge if route else None)
        grounding: Grounding | None = None
        if collection is not None:
            where = {"gen_ai.data_source.id": collection}
            with span(ctx.trace, "retrieval", **where) as sp:
                grounding = await self.grounder.ground(
                    ctx.principal.tenant, collection, call.messages, request.knowledge_k
                )
                retrieved(sp, grounding.sources, grounding.retrieval_match, grounding.escalate)
            if grounding.escalate:  # nothing supports an answer: say so, ask no model
                ctx.route = f"{request.model}; knowledge={collection}; escalate"
                ctx.deployment = ""
                ctx.grounding = "escalated"
                await self.safety.escalate(
                    ctx, grounding, "no_source", call.messages,
                    conversation_id=request.conversation_id,
                )  # fmt: skip
                message = {"role": "assistant", "content": grounding.refusal}
                return Answer(message, "stop", grounding)
            if grounding.reviewed is not None:  # a reviewer answered this: verbatim
                ctx.route = f"{request.model}; knowledge={collection}; reviewed"
                ctx.deployment = ""
                ctx.grounding = "reviewed"
                return Answer(reviewed_message(grounding), "stop", grounding)
        bind_units(ctx.principal.key_id, call.user, request.conversation_id)  # experiments
        selection = gw.choose_release(ctx, request.model, call, pin=request.pin)
        cache_req = gw.cache.request(
            ctx,
            call,
            pin=request.pin,
            ttl_s=request.cache_ttl_s,
            collection=collection,
            collection_version=grounding.version if grounding else None,
            release_id=selection.release_id if selection is not None else None,
        )
        hit = await gw.cache.lookup(ctx, cache_req, request.cache_mode)
        if grounding is None:
            if hit is not None:
                return Answer(hit.message, hit.finish_reason, None, cached=hit)
            return await self._call(ctx, request, call, cache_req, guard, selection=selection)
        policy = self.safety.policy(route.verification if route else None)
        if hit is not None:
            # Stored only when verified; checked again for the trust signal, and in case
            # the rules changed since: an answer that no longer passes is not given.
            _, verified = self.safety.verify(grounding, str(hit.message.get("content")), policy)
            if verified.action == "none":
                ctx.grounding = verified.status
                return Answer(hit.message, hit.finish_reason, grounding, cached=hit)
            ctx.cache = "miss"
        original = call.messages
        call.messages = grounding.messages
        try:
            return await self._call(
                ctx, request, call, cache_req, guard, grounding, policy, selection=selection
            )
        except GatewayError:
            ctx.grounding = "escalated"
            await self.safety.escalate(
                ctx, grounding, "model_failure", original, conversation_id=request.conversation_id
            )
            raise

    async def _call(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        call: ChatCall,
        cache_req: CacheRequest,
        guard: CallGuard | None,
        grounding: Grounding | None = None,
        policy: Policy = "off",
        *,
        selection: Selection | None = None,
    ) -> Answer | Streaming:
        """Plan and call the model; verify a grounded answer before it is stored or given."""
        gw = self.gateway
        plan = gw.plan(ctx, request.model, call, pin=request.pin, selection=selection)
        if request.stream:
            opening = gw.open_stream(ctx, plan, call)
            first, deltas = await (guard(opening) if guard is not None else opening)
            if grounding is not None and policy != "off":
                gated = self.safety.gate(
                    ctx, grounding, policy, _prepend(first, deltas), request.call.messages,
                    request.conversation_id,
                )  # fmt: skip
                first, deltas = None, gated
            relay = self._relay(
                ctx, cache_req, request.cache_mode, first, deltas, _verified(grounding)
            )
            return Streaming(relay, grounding)
        calling = gw.chat(ctx, plan, call)
        result = await (guard(calling) if guard is not None else calling)
        if ctx.content is not None:
            ctx.content["answer"] = result.message.get("content")
        message = result.message
        if grounding is not None and policy != "off":
            draft = str(message.get("content") or "")
            text, verified = self.safety.verify(grounding, draft, policy)
            ctx.grounding = verified.action if verified.action != "none" else verified.status
            if verified.action != "none":
                message = {**message, "content": text}
            if verified.action == "withheld":
                await self.safety.escalate(
                    ctx, grounding, "unsupported_detail", request.call.messages,
                    draft=draft,
                    conversation_id=request.conversation_id,
                )  # fmt: skip
                return Answer(message, result.finish_reason, grounding)
            if verified.action == "flagged":
                return Answer(message, result.finish_reason, grounding)
        await gw.cache.store(ctx, cache_req, request.cache_mode, result)
        return Answer(message, result.finish_reason, grounding)

    async def _relay(
        self,
        ctx: RequestContext,
        cache_req: CacheRequest,
        mode: CacheMode,
        first: StreamDelta | None,
        deltas: AsyncIterator[StreamDelta],
        storable: Callable[[], bool] = lambda: True,
    ) -> AsyncGenerator[StreamDelta, None]:
        """Pass the deltas on; when the model has finished, store the whole answer
        (unless ``storable`` says the verification flagged or withheld it)."""
        pieces: list[str] = []
        finish: str | None = None
        try:
            if first is not None:
                if first.finish_reason is not None:
                    finish = first.finish_reason
                pieces.append(first.delta.get("content") or "")
                yield first
            async for delta in deltas:
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                pieces.append(delta.delta.get("content") or "")
                yield delta
            if finish is None:
                raise GatewayError("The model stream ended without a finish reason.")
            message = {"role": "assistant", "content": "".join(pieces)}
            if ctx.content is not None:
                ctx.content["answer"] = message["content"]
            if storable():
                await self.gateway.cache.store(
                    ctx, cache_req, mode, ChatResult(message, finish, ctx.usage)
                )
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                # Shielded: a cancelled client still releases the provider's resources.
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose())


async def _prepend(
    first: StreamDelta | None, deltas: AsyncIterator[StreamDelta]
) -> AsyncGenerator[StreamDelta, None]:
    """``first`` then ``deltas``, closing ``deltas`` when closed."""
    try:
        if first is not None:
            yield first
        async for delta in deltas:
            yield delta
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(aclose())


def _verified(grounding: Grounding | None) -> Callable[[], bool]:
    """Whether a streamed answer may be cached: not grounded, or verified as given."""

    def storable() -> bool:
        if grounding is None or grounding.verification is None:
            return True
        return bool(grounding.verification.get("action") == "none")

    return storable


def reviewed_message(grounding: Grounding) -> dict[str, Any]:
    """A reviewer's saved answer, verbatim, signed, citing the document it was saved as."""
    reviewed = grounding.reviewed
    assert reviewed is not None
    index = next(
        (s["index"] for s in grounding.sources if s.get("document_id") == reviewed.document_id),
        1,
    )
    date = reviewed.reviewed_at[:10]
    signature = f"— {reviewed.reviewer}, {date} [{index}]" if date else f"— {reviewed.reviewer}"
    return {"role": "assistant", "content": f"{reviewed.answer}\n\n{signature}"}
