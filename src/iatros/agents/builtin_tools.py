"""The tools Iatros ships, registered through ``[project.entry-points."iatros.tools"]``
like any tool package's (so a broken one is reported and skipped, never a crash).

Each declares its arguments' JSON Schema (checked before it runs) and the permission
the caller's key needs. They reach the gateway's services through
:attr:`iatros.tools.ToolContext.services`, scoped to the caller's tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from iatros.tools import ToolContext, ToolResult

_MASS_TO_KG = {"kg": 1.0, "g": 0.001, "lb": 0.45359237}
_DOSE_TO_MG = {"mg": 1.0, "mcg": 0.001, "g": 1000.0}


class DoseByWeight:
    """Dose = weight x dose per kg, with units said explicitly and a ceiling if given.

    Refuses rather than guesses: a weight without its unit, or a dose without its unit, is
    an error the model must fix by asking; a result above ``max_dose`` is capped and said.
    """

    name = "dose_by_weight"
    description = (
        "Compute a weight-based dose. Give the weight with its unit (kg, g, lb) and the dose "
        "per kilogram with its unit (mg/kg, mcg/kg, g/kg); optionally the maximum single dose."
    )
    permission = "chat"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "weight": {"type": "number", "exclusiveMinimum": 0},
            "weight_unit": {"type": "string", "enum": sorted(_MASS_TO_KG)},
            "dose_per_kg": {"type": "number", "exclusiveMinimum": 0},
            "dose_unit": {"type": "string", "enum": ["mg/kg", "mcg/kg", "g/kg"]},
            "max_dose": {"type": "number", "exclusiveMinimum": 0},
            "max_dose_unit": {"type": "string", "enum": sorted(_DOSE_TO_MG)},
        },
        "required": ["weight", "weight_unit", "dose_per_kg", "dose_unit"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        kg = float(arguments["weight"]) * _MASS_TO_KG[arguments["weight_unit"]]
        per_kg_mg = float(arguments["dose_per_kg"]) * _DOSE_TO_MG[arguments["dose_unit"][:-3]]
        dose_mg = kg * per_kg_mg
        capped = False
        if "max_dose" in arguments:
            if "max_dose_unit" not in arguments:
                return ToolResult("max_dose needs max_dose_unit (mg, mcg or g)", is_error=True)
            ceiling = float(arguments["max_dose"]) * _DOSE_TO_MG[arguments["max_dose_unit"]]
            if dose_mg > ceiling:
                dose_mg, capped = ceiling, True
        data = {"dose_mg": round(dose_mg, 3), "weight_kg": round(kg, 3), "capped": capped}
        note = " (capped at the maximum single dose)" if capped else ""
        return ToolResult(f"{data['dose_mg']} mg for {data['weight_kg']} kg{note}", data)


class DateTimeNow:
    name = "datetime_now"
    description = "The current date and time, in UTC or an IANA time zone (Europe/Paris)."
    permission = "chat"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 64}},
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        name = arguments.get("timezone") or "UTC"
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return ToolResult(f"unknown time zone {name!r}", is_error=True)
        now = datetime.now(UTC).astimezone(zone)
        data = {"iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A"),
                "timezone": name}  # fmt: skip
        return ToolResult(f"{data['weekday']} {data['iso']} ({name})", data)


class KnowledgeSearch:
    name = "knowledge_search"
    description = "Search the practice's knowledge base; returns passages with their source."
    permission = "knowledge:read"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 2000},
            "collection": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "k": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["query", "collection"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        kb = context.services.get("knowledge")
        if kb is None:
            return ToolResult("the knowledge base is not configured", is_error=True)
        passages = await kb.search(
            context.tenant, arguments["collection"], arguments["query"], arguments.get("k", 4)
        )
        found = [
            {"index": i + 1, "document": p.document, "text": p.text, "score": round(p.score, 3)}
            for i, p in enumerate(passages)
        ]
        text = "\n\n".join(f"[{f['index']}] ({f['document']}) {f['text']}" for f in found)
        return ToolResult(text or "no passage found", {"passages": found})


class ReviewAsk:
    """Put a question to a human reviewer (an approval item); the answer arrives later."""

    name = "review_ask"
    description = "Ask a human reviewer to check something; returns the review item id."
    permission = "reviews:ask"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": 4000},
            "details": {"type": "object"},
        },
        "required": ["question"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        from iatros.reviews.queue import NewReview  # the queue's types, at call time

        queue = context.services.get("reviews")
        if queue is None or context.principal is None:
            return ToolResult("the review queue is not available here", is_error=True)
        item = await queue.open(NewReview(
            tenant=context.tenant, asker_key_id=context.principal.key_id, reason="approval",
            kind="approval", question=arguments["question"], route="tool:review_ask",
            details={"tool": self.name, **(arguments.get("details") or {})},
            request_id=context.request_id,
        ))  # fmt: skip
        return ToolResult(f"review {item['id']} opened", {"review_id": item["id"]})


def host_allowed(url: str, allowed: list[str]) -> str | None:
    """Why ``url`` may not be fetched, or None: http(s), no credentials, an allowed host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs"
    if parts.username or parts.password:
        return "credentials in URLs are refused"
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return "the URL has no host"
    port = port or (443 if parts.scheme == "https" else 80)
    for entry in allowed:
        entry = entry.lower()
        if entry == host or entry == f"{host}:{port}":
            return None
    return f"host {host}:{port} is not on the allow-list"


class HttpGet:
    """GET a URL on an allow-listed host (``agents.http_allow_hosts``); redirects are not
    followed (a redirect could leave the list), the body is capped."""

    name = "http_get"
    description = "Fetch a URL (GET) from an allowed host; returns status and text."
    permission = "chat"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"url": {"type": "string", "minLength": 8, "maxLength": 2048}},
        "required": ["url"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        settings = context.services.get("agent_settings")
        allowed = list(getattr(settings, "http_allow_hosts", []) or [])
        url = str(arguments["url"])
        refusal = host_allowed(url, allowed)
        if refusal is not None:
            return ToolResult(f"refused: {refusal}", {"refused": refusal}, is_error=True)
        timeout = float(getattr(settings, "http_timeout_s", 5.0))
        limit = int(getattr(settings, "http_max_bytes", 65536))
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                async with client.stream("GET", url) as response:
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) >= limit:
                            break
            except httpx.HTTPError as exc:
                return ToolResult(f"request failed: {type(exc).__name__}", is_error=True)
        text = bytes(body[:limit]).decode("utf-8", "replace")
        data = {"status": response.status_code, "text": text}
        return ToolResult(f"HTTP {response.status_code}\n{text}", data)


class ScribeNote:
    """A scribe encounter's note, for agents writing from it (post-visit instructions).

    Read through the scribe service, so the read is audited with the keyed patient
    reference like any other; by default only a signed note is given (a draft may still
    hold unsupported statements).
    """

    name = "scribe_note"
    description = "The clinical note of a scribe encounter (signed notes only by default)."
    permission = "chat"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "encounter_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "signed_only": {"type": "boolean"},
        },
        "required": ["encounter_id"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        scribe = context.services.get("scribe")
        if scribe is None or context.principal is None:
            return ToolResult("the scribe is not available here", is_error=True)
        view = await scribe.get(context.principal, arguments["encounter_id"],
                                action="scribe.encounter.read.agent")  # fmt: skip
        if arguments.get("signed_only", True) and view.status != "signed":
            return ToolResult(f"encounter {view.id} is not signed ({view.status})",
                              {"status": view.status}, is_error=True)  # fmt: skip
        sections = view.note.get("sections") or []
        lines = []
        for section in sections:
            said = " ".join(str(s.get("text", "")) for s in section.get("statements") or [])
            lines.append(f"{section.get('title', section.get('id', ''))}: {said}")
        data = {"encounter_id": view.id, "status": view.status, "version": view.version,
                "language": view.language, "sections": sections}  # fmt: skip
        return ToolResult("\n".join(lines) or "(empty note)", data)
