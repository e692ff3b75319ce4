"""The web UI: static ES modules and CSS under `static/`, one HTML page for every client route."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# The client-side routes (static/app.js) that a reload or a pasted link may ask for.
PAGES = ("/", "/runs", "/runs/{rest:path}", "/jobs", "/jobs/{rest:path}", "/agents")


async def index(request: Request) -> Response:
    # Revalidate every time so a server upgrade is picked up on reload.
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


async def favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def web_routes() -> list[BaseRoute]:
    """The UI's routes; put them after the API's."""
    routes: list[BaseRoute] = [Route(path, index, methods=["GET"]) for path in PAGES]
    routes.append(Route("/favicon.ico", favicon, methods=["GET"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return routes
