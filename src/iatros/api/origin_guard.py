"""DNS rebinding and cross-site request forgery, refused before any handler runs.

In the anonymous loopback mode (``make run``: no key exists, the server listens on
127.0.0.1) the network boundary is the only protection, and a browser crosses it on
behalf of any web page its user visits:

- **DNS rebinding**: ``attacker.example`` resolves to 127.0.0.1 once the page has
  loaded; the page's requests then reach Iatros as *same-origin* requests carrying
  ``Host: attacker.example``, and can read every answer (``GET /admin/audit``).
  Refused by checking ``Host`` against the names the server is reached by.
- **CSRF**: any page may send "simple" cross-origin requests (a form post, or
  ``fetch`` with ``Content-Type: text/plain``) without a CORS preflight; it cannot
  read the answer but the request takes effect (``POST /admin/keys`` created an admin
  key). Refused by checking ``Sec-Fetch-Site`` and ``Origin`` on state-changing
  methods, and by requiring a JSON (or multipart upload) content type, which a page
  cannot send cross-origin without a preflight that Iatros never grants.

A request that carries credentials (``Authorization`` or ``api-key``) is exempt from
the last two checks: a browser adds such headers to a cross-origin request only after a
CORS preflight, which Iatros never answers with permission, so they are not forgeable
(and should CORS ever be allowed, a forged request still needs a real key: in the
anonymous mode a key that does not exist gets a 401). ``curl -d`` with a key keeps
working whatever its content type. ``Host`` is checked on every request.

Allowed hosts (``server.allowed_hosts``): empty (the default) means automatic: on a
loopback bind, ``localhost``, ``*.localhost``, the bind address and IP literals (an IP
cannot be rebound: its origin is the address itself); on a network bind, where keys are
required, no host check unless names are listed. ``["*"]`` turns the check off; names
may start with ``*.`` or ``.`` for a domain and its subdomains.

Cost: :meth:`OriginGuard.refusal` reads the request headers once (one ``dict``) and
caches its verdicts on hosts and origins: 1.3 us for an SDK request with a key, 2.3 us
for the web app's anonymous post, 2.1-2.5 us through the ASGI wrapper, on this 2-core
VM (``bench/origin_guard_bench.py`` -> ``bench/results/origin-guard.json``). It is a
pure ASGI layer, so it can wrap the whole application, or be called first thing by an
application that dispatches hot endpoints itself (``IatrosApp.__call__`` calls
:meth:`OriginGuard.refusal`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from iatros.errors import GatewayError, PermissionDenied

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from iatros.config import Settings

__all__ = ["OriginGuard", "UnsupportedMediaType"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost",)
_CACHE_SIZE = 64


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


def _host_name(value: str) -> str:
    """``Host``/``Origin`` authority without port, lower case, no trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _default_port(scheme: str) -> str:
    return "443" if scheme == "https" else "80"


def _authority(value: str, scheme: str) -> str:
    """``host:port`` with the scheme's default port made explicit (for comparisons)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        port = rest[1:] if rest.startswith(":") else _default_port(scheme)
        return f"{host}:{port}"
    if ":" in value:
        host, port = value.rsplit(":", 1)
        return f"{host.rstrip('.')}:{port}"
    return f"{value.rstrip('.')}:{_default_port(scheme)}"


class OriginGuard:
    """Refuses requests for foreign ``Host`` names and forged cross-site writes.

    Args:
        app: the ASGI application to protect when used as a wrapper (None when the
            application calls :meth:`refuse` itself).
        allowed_hosts: names (``*.`` or ``.`` prefix: a domain and its subdomains);
            ``None`` turns the host check off.
    """

    def __init__(self, app: ASGIApp | None = None, *, allowed_hosts: Iterable[str] | None) -> None:
        self.app = app
        self._check_hosts = allowed_hosts is not None
        names: set[str] = set()
        suffixes: list[str] = []
        for raw in allowed_hosts or ():
            name = raw.strip().lower().rstrip(".")
            if name.startswith("*."):
                suffixes.append(name[1:])
            elif name.startswith("."):
                suffixes.append(name)
            elif name:
                names.add(_host_name(name))
        self._names = frozenset(names)
        self._suffixes = tuple(suffixes)
        self._verdicts: dict[bytes, bool] = {}
        self._origin_verdicts: dict[tuple[bytes, bytes | None, str], bool] = {}

    @classmethod
    def from_settings(cls, settings: Settings, app: ASGIApp | None = None) -> OriginGuard:
        """The guard for ``settings.server`` (see the module docstring for the defaults)."""
        configured = list(getattr(settings.server, "allowed_hosts", []) or [])
        if "*" in configured:
            return cls(app, allowed_hosts=None)
        if configured:
            return cls(app, allowed_hosts=[*configured, *_LOOPBACK_NAMES, "*.localhost"])
        if not settings.is_loopback:
            return cls(app, allowed_hosts=None)  # keys are required there; nothing to rebind
        return cls(app, allowed_hosts=[settings.server.host, *_LOOPBACK_NAMES, "*.localhost"])

    # -- the check --------------------------------------------------------------------

    def host_allowed(self, raw: bytes) -> bool:
        """Whether a ``Host`` header value names this server (verdicts are cached)."""
        verdict = self._verdicts.get(raw)
        if verdict is not None:
            return verdict
        name = _host_name(raw.decode("latin-1"))
        verdict = (
            name in self._names
            or _is_ip(name)
            or any(name.endswith(s) or name == s[1:] for s in self._suffixes)
        )
        if len(self._verdicts) >= _CACHE_SIZE:
            self._verdicts.clear()  # many distinct hosts: someone probing; stay bounded
        self._verdicts[raw] = verdict
        return verdict

    def refusal(self, scope: Scope) -> GatewayError | None:
        """The error to answer ``scope`` with, or None to let it through."""
        headers = dict(scope["headers"])  # one C-level pass; names are lower case in ASGI
        host = headers.get(b"host")
        if self._check_hosts and host is not None and not self.host_allowed(host):
            shown = host.decode("latin-1")[:100]
            return PermissionDenied(
                f"Host {shown!r} is not a name this server answers to (a DNS rebinding "
                "attempt?). If it is yours, add it to server.allowed_hosts.",
                code="forbidden_host",
            )
        if scope["method"] in SAFE_METHODS or b"authorization" in headers or b"api-key" in headers:
            return None
        origin, site = headers.get(b"origin"), headers.get(b"sec-fetch-site")
        ctype = headers.get(b"content-type")
        length = headers.get(b"content-length")
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        if site is not None and site not in (b"same-origin", b"none"):
            return PermissionDenied(
                f"Cross-site {scope['method']} refused (Sec-Fetch-Site: "
                f"{site.decode('latin-1')[:20]}): another web page cannot act on this server.",
                code="cross_origin_refused",
            )
        if origin is not None and not self._origin_allowed(origin, host, scope):
            return PermissionDenied(
                f"Cross-origin {scope['method']} refused (Origin: "
                f"{origin.decode('latin-1')[:100]}): another web page cannot act on this server.",
                code="cross_origin_refused",
            )
        if has_body and not _json_or_upload(ctype):
            shown = ctype.decode("latin-1")[:100] if ctype is not None else "none"
            return UnsupportedMediaType(
                f"Content-Type {shown!r} refused: send JSON with 'Content-Type: "
                "application/json' (curl: -H 'content-type: application/json'), or files "
                "as multipart/form-data.",
                param="content-type",
            )
        return None

    def _origin_allowed(self, origin: bytes, host: bytes | None, scope: Scope) -> bool:
        key = (origin, host, scope.get("scheme", "http"))
        verdict = self._origin_verdicts.get(key)
        if verdict is None:
            verdict = self._same_origin(origin, host, scope)
            if len(self._origin_verdicts) >= _CACHE_SIZE:
                self._origin_verdicts.clear()
            self._origin_verdicts[key] = verdict
        return verdict

    @staticmethod
    def _same_origin(origin: bytes, host: bytes | None, scope: Scope) -> bool:
        text = origin.decode("latin-1").strip().lower()
        if host is None or text == "null" or "://" not in text:
            return False
        scheme, _, authority = text.partition("://")
        served = scope.get("scheme", "http")
        # Behind a TLS proxy the page is https while this server sees http: compare
        # the authority with each side's own default port.
        return _authority(authority, scheme) == _authority(host.decode("latin-1"), scheme) or (
            _authority(authority, scheme) == _authority(host.decode("latin-1"), served)
        )

    # -- ASGI -------------------------------------------------------------------------

    async def refuse(self, scope: Scope, send: Send) -> bool:
        """Answer ``scope`` with the error and return True when it is refused."""
        if scope["type"] != "http":
            return False
        error = self.refusal(scope)
        if error is None:
            return False
        await _send_error(error, send)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self.refuse(scope, send):
            return
        assert self.app is not None, "OriginGuard(app=None) is called through refuse()"
        await self.app(scope, receive, send)


def _json_or_upload(ctype: bytes | None) -> bool:
    if ctype is None:
        return False
    media = ctype.split(b";", 1)[0].strip().lower()
    return (
        media == b"application/json" or media.endswith(b"+json") or media == b"multipart/form-data"
    )


async def _send_error(error: GatewayError, send: Send) -> None:
    body = orjson.dumps(error.body())
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"vary", b"Origin, Sec-Fetch-Site"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": error.status}
    start["headers"] = headers
    await send(start)
    await send({"type": "http.response.body", "body": body})
