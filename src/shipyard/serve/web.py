"""The web page at ``/``: try the model and watch it, served by the API itself.

The page is static — plain HTML, CSS and JavaScript in the ``web/`` folder beside this
module, no build step, nothing from a CDN — and talks to the server through the same
public API as any client: ``/v2/health/ready`` (its ``X-Model-Name`` header names the
model), ``/v2/models/{name}``, ``/predict``, ``/predict/upload``, ``/feedback``,
``/metrics`` and ``/monitoring/*``. So the page needs no route of its own beyond the
files, and it shows exactly what a client would get.

Files are read once, into memory, from a fixed list: a request names a file of that list
or gets 404, so no path can reach outside the folder. ``index.html`` links its script and
stylesheet with a ``?v=<content hash>`` query; a request carrying the current hash is
cached for a year (``immutable``), anything else — the page itself, the modules the script
imports — revalidates with its ETag (a 304 when unchanged), so a new version of the page
is never mixed with an old script. Every response carries a Content-Security-Policy that
allows only this origin (no inline script or style, no eval, no framing).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).with_name("web")
STATIC_PREFIX = "/static/"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_STATIC_REF = re.compile(r'(src|href)="/static/([A-Za-z0-9._-]+)"')


@dataclass(frozen=True)
class Asset:
    """One file of the page, in memory: bytes, media type and a strong ETag."""

    body: bytes
    media_type: str
    version: str

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _asset(body: bytes, suffix: str) -> Asset:
    return Asset(body, MEDIA_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])


@functools.cache
def assets() -> dict[str, Asset]:
    """The static files by name (``app.js``), and ``index.html`` with versioned links."""
    files = {
        path.name: _asset(path.read_bytes(), path.suffix)
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
    }

    def versioned(match: re.Match[str]) -> str:
        attribute, name = match.groups()
        asset = files.get(name)
        return (
            match.group(0) if asset is None else f'{attribute}="/static/{name}?v={asset.version}"'
        )

    index = files["index.html"].body.decode("utf-8")
    files["index.html"] = _asset(_STATIC_REF.sub(versioned, index).encode("utf-8"), ".html")
    return files


def _send(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    if asset.etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    """The page; revalidated on every visit (it names the current version of each file)."""
    return _send(request, assets()["index.html"], NO_CACHE)


@router.api_route(STATIC_PREFIX + "{name:path}", methods=["GET", "HEAD"])
async def static(request: Request, name: str) -> Response:
    """A file of the page by name; cached for good when asked for by its current hash."""
    asset = assets().get(name) if name != "index.html" else None
    if asset is None:
        raise HTTPException(404, f"no file {name!r} in the web page's static files")
    fresh = request.query_params.get("v") == asset.version
    return _send(request, asset, IMMUTABLE if fresh else NO_CACHE)
