"""The web dashboard: static HTML, CSS and vanilla JS served at ``/dashboard/`` (no build step, no CDN).

The files hold no data and are public; the page asks for a JWT and calls the Monitoring API with it, so every
figure it shows passes the API's own authentication and tenant rules.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")
PREFIX = "/dashboard"

# Only this origin's scripts, styles and API; images and videos may also come from object URLs (API files fetched
# with the token) and from other hosts (CDN or presigned storage URLs).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob: data: https: http:",
        "media-src 'self' blob: https: http:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


class DashboardFiles(StaticFiles):
    """StaticFiles with the dashboard's security headers; browsers revalidate (ETag) so upgrades show at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


async def _with_slash() -> RedirectResponse:
    # Relative, so it also works behind a proxy that serves the API under a path prefix.
    return RedirectResponse("dashboard/", status_code=307)


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/dashboard/`` (``/dashboard`` redirects there)."""
    app.add_api_route(PREFIX, _with_slash, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(PREFIX, DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
