"""/ui: the operations page, a static shell shipped in the package.

The shell and its assets need no key; everything they show comes from the
API with the user's own key or JWT, so the page shows nothing its user could
not read from the API. The Content-Security-Policy lets the page load and
connect to this origin only: no CDN, nothing fetched from outside.
"""

from __future__ import annotations

import functools
from importlib import resources

from ..http import Request, Response, Route, not_found

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    ("content-security-policy", POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
]


@functools.cache
def assets() -> dict[str, tuple[bytes, str]]:
    """Every file of static/ui by name, read once; no other path is served."""
    folder = resources.files("model_router").joinpath("static/ui")
    found = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in CONTENT_TYPES:
            found[item.name] = (item.read_bytes(), CONTENT_TYPES[suffix])
    return found


def _serve(name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        raise not_found("asset", name)
    body, content_type = asset
    return Response(body, content_type=content_type, headers=list(HEADERS))


async def page(req: Request) -> Response:
    return _serve("index.html")


async def asset(req: Request) -> Response:
    return _serve(req.path_params["asset"])


ROUTES = [
    Route("GET", "/ui", page, "The operations page (sign in with a key or JWT)", "meta"),
    Route("GET", "/ui/{asset}", asset, "The operations page's scripts and styles", "meta"),
]
