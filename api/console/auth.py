"""Sign-in with an API key, sign-out."""

import time

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from api.console.pages import HEADERS, ConsoleRoute, render
from api.console.session import check_csrf, clear_cookie, console_secret, current, new_session, read_form, set_cookie
from api.deps import SettingsDep, caller_for_key
from api.problems import Problem
from api.ratelimit import FAILED_AUTH, address_key, served_limiter

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console page of this site, never another site."""
    if value and value.startswith("/console/") and not value.startswith("//") and "\\" not in value and ".." not in value:
        return value
    return "/console/deals"


def _sign_in_page(request: Request, settings, session, status_code: int = 200, error: str | None = None, next_page: str = "/console/deals", ended: bool = False):
    response = render(request, "sign_in.html", status_code=status_code, error=error, next_page=next_page, ended=ended, form_csrf=session.csrf)
    set_cookie(response, request, session, console_secret(settings))
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request, settings: SettingsDep, next: str | None = None, ended: str | None = None):
    session = current(request, settings)
    if session is None or session.signed_in:
        session = new_session()
    return _sign_in_page(request, settings, session, next_page=safe_next(next), ended=bool(ended))


def _failed_sign_ins_spent(request: Request) -> float:
    """Seconds until this address may try another key, once its failed-authentication budget (the
    API's, `TAKEBACK_RATE_FAILED_AUTH`) is spent; 0.0 while it may."""
    limiter = served_limiter()
    if limiter is None or not limiter.failed_auth.enabled or request.client is None:
        return 0.0
    return limiter.failed_auth.peek(address_key(request.client.host), time.monotonic())


def _count_failed_sign_in(request: Request) -> None:
    limiter = served_limiter()
    if limiter is not None and limiter.failed_auth.enabled and request.client is not None:
        limiter.failed_auth.take(address_key(request.client.host))


@router.post("/sign-in")
async def sign_in(request: Request, settings: SettingsDep):
    form = await read_form(request)
    session = current(request, settings)
    check_csrf(session, form)
    next_page = safe_next(form.get("next"))
    if wait := _failed_sign_ins_spent(request):
        raise Problem(429, f"{FAILED_AUTH}; retry after {max(1, round(wait))} s", "rate-limited", headers={"Retry-After": str(max(1, round(wait)))})
    try:
        caller = await caller_for_key(settings, form.get("api_key", "").strip())
    except Problem as refused:
        if refused.status != 401:
            raise
        _count_failed_sign_in(request)
        return _sign_in_page(request, settings, new_session(), status_code=401, error="That key is not one that works here: unknown, expired or revoked.", next_page=next_page)
    response = RedirectResponse(next_page, status_code=303, headers=HEADERS)
    set_cookie(response, request, new_session(caller), console_secret(settings))  # a new token: none from before sign-in counts
    return response


@router.post("/sign-out")
async def sign_out(request: Request, settings: SettingsDep):
    form = await read_form(request)
    check_csrf(current(request, settings), form)
    response = RedirectResponse("/console/sign-in", status_code=303, headers=HEADERS)
    clear_cookie(response, request)
    return response
