"""The API documentation page (Swagger UI), served from this process with a strict CSP.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN with no pinned version and
no subresource integrity, on the origin whose local storage holds the web app's
conversations: whoever controls that CDN (or the network path to it, or a typo-squatted
version) would run script with access to it. Here the files come from the
``fastapi-offline`` package (MIT; it bundles Swagger UI 5.x, Apache-2.0, with each
release), pinned in ``pyproject.toml`` and served from ``/docs/assets/``, and the page
allows script only from this origin: no inline script (the start-up code is a file,
``init.js``), no ``eval``, nothing from elsewhere, no framing.

Call :func:`add_docs_routes` on an app created with ``docs_url=None, redoc_url=None``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from iatros.errors import NotFound

__all__ = ["DOCS_CSP", "add_docs_routes"]

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
_HEADERS = {
    "content-security-policy": DOCS_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_INIT = """// Swagger UI on this server's OpenAPI document (a file: the CSP forbids inline script).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi,
    dom_id: "#swagger-ui",
    deepLinking: true,
    showExtensions: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""


def _page(title: str, openapi_url: str) -> str:
    from html import escape

    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} - API</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body data-openapi="{escape(openapi_url)}">
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""


def assets_dir() -> Path:
    """Where the installed package keeps Swagger UI's files."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs_routes(app: FastAPI, path: str = "/docs") -> None:
    """``GET /docs`` and its assets, outside the OpenAPI document."""
    directory = assets_dir()
    missing = [name for name in _ASSETS if not (directory / name).is_file()]
    if missing:  # a broken install: say so at start, not with a blank page
        raise RuntimeError(f"fastapi-offline is missing {missing} in {directory}")
    page = _page(app.title, app.openapi_url or "/openapi.json")

    @app.get(path, include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(page, headers=_HEADERS)

    @app.get(f"{path}/assets/init.js", include_in_schema=False)
    async def docs_init() -> Response:
        return Response(_INIT, media_type="text/javascript; charset=utf-8", headers=_HEADERS)

    @app.get(f"{path}/assets/{{name}}", include_in_schema=False)
    async def docs_asset(request: Request, name: str) -> Response:
        media = _ASSETS.get(name)
        if media is None:  # only the files listed: no path ever reaches the filesystem
            raise NotFound(f"Unknown path {request.url.path}")
        return FileResponse(directory / name, media_type=media, headers=_HEADERS)
