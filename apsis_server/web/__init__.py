"""The web UI: static ES modules and CSS under `static/`, one HTML page for every client route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
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


async def http_error(request: Request, exc: Exception) -> Response:
    """An unknown path or a method a path does not take: under /api, the API's JSON
    error; a page, the UI (which says there is no such page) with status 404."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = exc.headers if isinstance(exc, HTTPException) else None
    path = request.url.path
    if path.startswith("/api/"):
        messages = {
            404: f"no such API path: {path}",
            405: f"{request.method} is not allowed on {path}",
        }
        message = messages.get(status) or str(getattr(exc, "detail", "error"))
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    if status == 404 and request.method in ("GET", "HEAD") and not path.startswith("/static/"):
        return FileResponse(
            STATIC / "index.html", status_code=404, headers={"cache-control": "no-cache"}
        )
    return PlainTextResponse(f"{status} {getattr(exc, 'detail', '')}", status, headers)


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def error_handlers() -> Mapping[int, ErrorHandler]:
    """For the app's `exception_handlers`: unknown paths and methods."""
    return {404: http_error, 405: http_error}


def web_routes() -> list[BaseRoute]:
    """The UI's routes; put them after the API's."""
    routes: list[BaseRoute] = [Route(path, index, methods=["GET"]) for path in PAGES]
    routes.append(Route("/favicon.ico", favicon, methods=["GET"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return routes
