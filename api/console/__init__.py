"""The web console at /console: server-rendered pages (Jinja2) for ops staff and partners, htmx for
the parts that update in place. Every page reads without JavaScript.

`router` holds every console route; api/app.py includes it.
"""

from fastapi import APIRouter, Request

from api.console import auth, deals, impact, partners
from api.console.pages import ConsoleRoute, static_file
from api.problems import Problem

router = APIRouter(include_in_schema=False)
for module in (auth, deals, partners, impact):
    router.include_router(module.router)

_fallback = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@_fallback.get("/static/{name}")
async def static(name: str):
    return static_file(name)


@_fallback.api_route("/{rest:path}", methods=["GET", "POST"])
async def not_a_page(rest: str, request: Request):
    """Anything else under /console: an HTML 404, like every console error."""
    raise Problem(404, f"there is no console page {request.url.path}", "not-found")


router.include_router(_fallback)
