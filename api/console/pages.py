"""Rendering for the console: templates (autoescaped), its own Content-Security-Policy, HTML error
pages in place of problem+json, and its two static files."""

import math
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.console.session import COOKIE, SignInRequired, clear_cookie
from api.problems import TITLES, Problem

HERE = Path(__file__).parent
# Scripts and styles from our own origin only (htmx and the stylesheet); inline SVG needs no source.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
STATIC = {  # name -> (media type, bytes): read once, served with the app
    "console.css": "text/css; charset=utf-8",
    "htmx.min.js": "text/javascript; charset=utf-8",
}
_static_bytes = {name: (media, (HERE / "static" / name).read_bytes()) for name, media in STATIC.items()}

env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _when(value: datetime | None, seconds: bool = False) -> str:
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat() if value is not None else ""


def _money(value) -> str:
    return f"{Decimal(value):,.2f}" if value is not None else "—"


def countdown(deadline: datetime | None, now: datetime | None = None) -> str:
    """'3 d 4 h left', '12 min left', or '2 d ago' for a deadline passed."""
    if deadline is None:
        return "—"
    now = now or datetime.now(timezone.utc)
    seconds = (deadline - now).total_seconds()
    left = abs(seconds)
    if left >= 86400:
        text = f"{int(left // 86400)} d {int(left % 86400 // 3600)} h"
    elif left >= 3600:
        text = f"{int(left // 3600)} h {int(left % 3600 // 60)} min"
    elif left >= 60:
        text = f"{int(left // 60)} min"
    else:
        text = f"{int(left)} s"
    return f"{text} left" if seconds >= 0 else f"{text} ago"


def _label(value: str | None) -> str:
    return (value or "").replace("_", " ")


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else ""


env.filters.update(when=_when, iso=_iso, money=_money, countdown=countdown, label=_label, sentence=_sentence)
env.globals.update(urlencode=urlencode, ceil=math.ceil, min=min, max=max)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def validation_words(error: ValidationError) -> str:
    """A model's refusal in words, for the form that sent it."""
    words = []
    for problem in error.errors()[:5]:
        field = ".".join(str(part) for part in problem.get("loc", ()))
        message = problem.get("msg", "").removeprefix("Value error, ")
        words.append(f"{field.replace('_', ' ')}: {message}" if field else message)
    return "; ".join(words)


def render(request: Request, template: str, status_code: int = 200, headers: dict | None = None, **context) -> HTMLResponse:
    console = getattr(request.state, "console", None)
    caller, session = console if console else (None, None)
    html = env.get_template(template).render(request=request, caller=caller, csrf=session.csrf if session else "", path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code, headers={**HEADERS, **(headers or {})})


def error_page(request: Request, status: int, detail: str, headers: dict | None = None) -> HTMLResponse:
    """A problem, in words, as a page (or as the fragment an htmx request swaps in)."""
    headers = {name: value for name, value in (headers or {}).items() if name.lower() in ("retry-after",)}
    template = "_error.html" if is_htmx(request) else "error.html"
    return render(request, template, status_code=status, headers=headers, status=status, title=TITLES.get(status, "Error"), detail=detail)


def sign_in_redirect(request: Request, reason: str) -> Response:
    page = urlsplit(request.headers.get("hx-current-url", "")).path if is_htmx(request) else request.url.path  # the page, not its fragment
    query = {"next": page or "/console/deals", **({"ended": "1"} if reason else {})}
    target = f"/console/sign-in?{urlencode(query)}"
    if is_htmx(request):  # a poll or a form of a page whose session ended: htmx loads the sign-in page
        response: Response = Response(status_code=401, headers={"HX-Redirect": target, **HEADERS})
    else:
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
    if reason and request.cookies.get(COOKIE):
        clear_cookie(response, request)
    return response


class ConsoleRoute(APIRoute):
    """Console routes answer HTML: a problem becomes an error page with the same status and its
    detail in words; a request without a session is sent to sign in."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as ended:
                return sign_in_redirect(request, ended.reason)
            except Problem as problem:
                return error_page(request, problem.status, problem.detail, problem.headers)
            except RequestValidationError as error:
                words = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'the request'}: {e.get('msg', '')}" for e in error.errors()[:10])
                return error_page(request, 422, f"the request was not understood ({words})")
            except StarletteHTTPException as error:
                return error_page(request, error.status_code, str(error.detail))

        return console_handler


def static_file(name: str) -> Response:
    found = _static_bytes.get(name)
    if found is None:
        raise Problem(404, f"no file {name}", "not-found")
    media, content = found
    # Immutable for an hour: a page load fetches nothing it had; a deploy changes them within the hour.
    return Response(content, media_type=media, headers={"Cache-Control": "public, max-age=3600"})
