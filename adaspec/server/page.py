"""The chat page at the server's root: one static page, its script and style shipped in the
package (no build step, no CDN), talking to the same /v1 endpoints any client uses."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).parent / "web"
# The page runs only its own script and style, and shows what the model writes as text.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}


async def index() -> FileResponse:
    return FileResponse(WEB / "index.html", headers=HEADERS)


def assets() -> StaticFiles:
    """The page's script and style, under /ui/."""
    return StaticFiles(directory=WEB)
