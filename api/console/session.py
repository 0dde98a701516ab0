"""The console's session: a signed, expiring cookie that holds who signed in (the key's id, role and
partner), never the key, plus the CSRF token its forms carry.

- Signed with HMAC-SHA256 under TAKEBACK_CONSOLE_SECRET; outside production, when that is unset, a
  random secret made by this process (a restart signs everyone out). Production without one: the
  console answers 503 and asks for it.
- HttpOnly, SameSite=Strict, Secure when the request came over TLS (directly or through a proxy
  uvicorn trusts), Path=/console. Expires after SESSION_SECONDS.
- The key behind a session is looked up on every request (`caller_for_key_id`): a key revoked,
  expired or rotated past its overlap ends its sessions at once, as it stops its API calls.
- CSRF: every form carries the session's token; a POST without it, or with another, is a 403.
  Before sign-in the cookie holds a token only, so the sign-in form is protected too, and signing
  in makes a new token (a token planted before sign-in is worth nothing after it).
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import Response

from api.deps import Caller, caller_for_key_id
from api.problems import Problem
from settings import Settings

COOKIE = "takeback_console"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 3600  # a working day
ANONYMOUS_SECONDS = 3600  # how long a sign-in form stays usable
MAX_FORM_BYTES = 64 * 1024
_PURPOSE = b"takeback-console-session\n"
_process_secret = secrets.token_bytes(32)  # outside production, when no secret is set


@dataclass(frozen=True)
class ConsoleSession:
    csrf: str
    expires: int  # unix seconds
    key_id: int | None = None  # None: not signed in (the sign-in form's token only)
    role: str | None = None
    partner_id: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.key_id is not None


class SignInRequired(Exception):
    """No session, or one that ended (expired, its key revoked): the page asks to sign in."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


def console_secret(settings: Settings) -> bytes:
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    if settings.env != "production":
        return _process_secret
    raise Problem(503, "the console is not configured on this server: set TAKEBACK_CONSOLE_SECRET (openssl rand -hex 32)", "console-not-configured")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(session: ConsoleSession, secret: bytes) -> str:
    payload = _b64(json.dumps(asdict(session), separators=(",", ":")).encode())
    signature = _b64(hmac.new(secret, _PURPOSE + payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def unseal(value: str | None, secret: bytes, now: float | None = None, expired_too: bool = False) -> ConsoleSession | None:
    """The session a cookie holds, if we signed it and it has not expired (or `expired_too`); else None."""
    if not value or len(value) > 4096 or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    expected = _b64(hmac.new(secret, _PURPOSE + payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), signature.encode()):  # bytes: a non-ASCII cookie is no TypeError (a 500)
        return None
    try:
        session = ConsoleSession(**json.loads(_unb64(payload)))
    except (ValueError, TypeError):
        return None
    if not expired_too and session.expires <= (now if now is not None else time.time()):
        return None
    return session


def new_session(caller: Caller | None = None) -> ConsoleSession:
    if caller is None:
        return ConsoleSession(csrf=secrets.token_urlsafe(24), expires=int(time.time()) + ANONYMOUS_SECONDS)
    return ConsoleSession(csrf=secrets.token_urlsafe(24), expires=int(time.time()) + SESSION_SECONDS, key_id=caller.key_id, role=caller.role, partner_id=caller.partner_id)


def set_cookie(response: Response, request: Request, session: ConsoleSession, secret: bytes) -> None:
    response.set_cookie(
        COOKIE, seal(session, secret), max_age=max(0, session.expires - int(time.time())), path=COOKIE_PATH,
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https")


def current(request: Request, settings: Settings) -> ConsoleSession | None:
    return unseal(request.cookies.get(COOKIE), console_secret(settings))


async def signed_in_caller(request: Request, settings: Settings) -> tuple[Caller, ConsoleSession]:
    """The caller of this request's session, its key checked again now; SignInRequired if there is none."""
    session = unseal(request.cookies.get(COOKIE), console_secret(settings), expired_too=True)
    if session is None or not session.signed_in:
        raise SignInRequired()
    if session.expires <= time.time():
        raise SignInRequired("Your session has expired: sign in again.")
    caller = await caller_for_key_id(settings, session.key_id)
    if caller is None or (caller.role, caller.partner_id) != (session.role, session.partner_id):
        raise SignInRequired("Your session has ended: the API key it was opened with no longer works.")
    request.state.console = (caller, session)
    return caller, session


async def read_form(request: Request) -> dict[str, str]:
    """An url-encoded form, at most MAX_FORM_BYTES (the console's forms are a few fields)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Problem(413, f"a console form is at most {MAX_FORM_BYTES} bytes", "payload-too-large")
    if body and request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise Problem(415, "the console takes forms (application/x-www-form-urlencoded)", "unsupported-media-type")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "the form could not be read", "bad-form") from None
    return {name: value for name, value in reversed(pairs)}  # the first of a repeated field wins


def check_csrf(session: ConsoleSession | None, form: dict[str, str]) -> None:
    token = form.get("csrf", "")
    if session is None or not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise Problem(403, "this form's security token is missing or out of date: reload the page and send it again", "csrf-refused")
