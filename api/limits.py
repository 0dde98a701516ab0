"""The HTTP edge: what a request may cost before anyone has checked who sent it.

- `HttpEdge` (ASGI): a request to a route that needs an API key and carries no well-formed
  `Authorization: Bearer` header is a 401 before a byte of its body is read; the signed carrier
  webhook without a well-shaped `Takeback-Signature` likewise. Bodies are counted as they arrive,
  chunked or not, against the route's limit (413), and must arrive within a deadline (408).
- `SecurityHeaders` (ASGI): `Cache-Control: no-store` and `X-Content-Type-Options: nosniff` on
  every answer, a strict Content-Security-Policy on HTML.
- `uvicorn_options`: what `takeback api` gives uvicorn: a connection limit, keep-alive and request
  header deadlines and a header size limit (`GuardedHttpToolsProtocol`, which also answers the
  rate limit's refusals without the application), no server banner.

All plain ASGI: `@app.middleware("http")` runs every request through an extra task and stream, a
cost the booking path measured.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

from api import problems
from domain.models import MAX_RECEIPT_ITEMS, MAX_SERIALS_PER_BOOKING

KIB = 1024
MIB = 1024 * KIB
DEFAULT_BODY_LIMIT = 1 * MIB  # every route not listed below
WEBHOOK_BODY_LIMIT = 64 * KIB  # a carrier event is a few hundred bytes
SERIAL_BYTES = 72  # a 64-character ASCII serial, its quotes, a comma and a space
EQUIPMENT_LINES = 1_000  # BookingRequest.equipment max_length
LINE_BYTES = 160  # a line without its serials: product id, quantity, keys
RECEIPT_ITEM_BYTES = 256  # {"product_id": <64>, "serial_number": <64>, "condition": ..., "age_years": ...}
SLACK = 64 * KIB  # the rest of a body: customer, values, whitespace
SIGNED_ROUTES = {("POST", "/v1/carrier-events")}
# Headers carrying a webhook signature (ours, EasyPost's): a credential, whose 401 spends the address's
# failed-authentication budget (api/ratelimit.py) like a bad key's.
SIGNATURE_HEADERS = frozenset({b"takeback-signature", b"x-hmac-signature"})
ROUTE_AUTH = "takeback.route_auth"  # scope entry: "bearer", "signed" or None

# RFC 6750 b64token (token68): what `get_caller` could ever accept as a key.
BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +[A-Za-z0-9\-._~+/]{1,512}=* *")
SIGNATURE_T = re.compile(rb"[0-9]{1,12}")  # ASCII digits only (`int()` also takes `²` and 5,000 digits)
SIGNATURE_V1 = re.compile(rb"[0-9a-fA-F]{64}")

# The certificate page: its own inline style, nothing else (no script, no frame, no form, no base).
STRICT_CSP = b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# /docs and /redoc: FastAPI's pages load Swagger UI / ReDoc from jsDelivr and start it inline.
DOCS_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; style-src 'unsafe-inline' https://cdn.jsdelivr.net "
    b"https://fonts.googleapis.com; font-src https://fonts.gstatic.com; img-src data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    b"connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


def bearer_key(authorization: str) -> str | None:
    """The key an `Authorization: Bearer <key>` header names (the scheme in any case, spaces around the
    key), else None. How the API reads a key (api.deps.get_caller), and so what the rate limit and the
    report's cache count one key by (api/ratelimit.py)."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def booking_body_limit(settings) -> int:
    """A booking may list the configured number of serials (all lines together), each up to 64 ASCII
    characters, in the largest number of lines: 50,000 serials are about 3.6 MiB."""
    serials = getattr(settings, "max_serials_per_booking", None) or MAX_SERIALS_PER_BOOKING
    return max(DEFAULT_BODY_LIMIT, serials * SERIAL_BYTES + EQUIPMENT_LINES * LINE_BYTES + SLACK)


def receipts_body_limit() -> int:
    return max(DEFAULT_BODY_LIMIT, MAX_RECEIPT_ITEMS * RECEIPT_ITEM_BYTES + SLACK)


def route_body_limits(settings) -> dict[tuple[str, str], int]:
    """(method, path template) -> the most bytes its body may have; others: DEFAULT_BODY_LIMIT."""
    return {
        ("POST", "/v1/carrier-events"): WEBHOOK_BODY_LIMIT,
        ("POST", "/v1/deals"): booking_body_limit(settings),
        ("POST", "/v1/deals/{deal_id}/receipts"): receipts_body_limit(),
    }


def largest_body_limit(settings) -> int:
    return max(DEFAULT_BODY_LIMIT, *route_body_limits(settings).values())


class _Route:
    __slots__ = ("limit", "auth")

    def __init__(self, limit: int, auth: str | None):
        self.limit, self.auth = limit, auth  # auth: "bearer", "signed" or None (public)


UNKNOWN = _Route(DEFAULT_BODY_LIMIT, None)  # the router answers 404/405 without reading a body


def _needs_key(dependant, get_caller) -> bool:
    return any(dep.call is get_caller or _needs_key(dep, get_caller) for dep in dependant.dependencies)


def _api_routes(routes, api_route, prefix: str = ""):
    """(full path, APIRoute) of every route, also inside routers included by reference (FastAPI 0.16x
    keeps an included router whole, as `_IncludedRouter`, instead of copying its routes)."""
    for route in routes:
        if isinstance(route, api_route):
            yield prefix + route.path, route
            continue
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(original.routes, api_route, prefix + (getattr(context, "prefix", "") or ""))


class RouteTable:
    """Each route's body limit and how its caller is authenticated, read from the app's routes:
    a route that depends on `get_caller` needs a key, whoever adds it."""

    def __init__(self, routes, settings):
        from fastapi.routing import APIRoute

        from api.deps import get_caller

        from starlette.routing import compile_path

        limits = route_body_limits(settings)
        self.static: dict[tuple[str, str], _Route] = {}
        self.dynamic: list[tuple[str, re.Pattern, _Route]] = []
        for path, route in _api_routes(routes, APIRoute):
            for method in route.methods:
                auth = "signed" if (method, path) in SIGNED_ROUTES else "bearer" if _needs_key(route.dependant, get_caller) else None
                entry = _Route(limits.get((method, path), DEFAULT_BODY_LIMIT), auth)
                if "{" in path:
                    self.dynamic.append((method, compile_path(path)[0], entry))
                else:
                    self.static.setdefault((method, path), entry)

    def lookup(self, method: str, path: str) -> _Route:
        entry = self.static.get((method, path))
        if entry is not None:
            return entry
        for route_method, regex, entry in self.dynamic:
            if route_method == method and regex.match(path):
                return entry
        return UNKNOWN


def signature_shape_problem(value: bytes | None) -> tuple[str, str] | None:
    """(kind, detail) if the Takeback-Signature header is missing or not `t=<digits>,v1=<64 hex>[,v1=...]`."""
    if not value:
        return "signature-missing", "missing Takeback-Signature header"
    timestamps = signatures = 0
    for part in value.split(b","):
        name, _, item = part.strip().partition(b"=")
        if name == b"t":
            if not SIGNATURE_T.fullmatch(item):
                break
            timestamps += 1
        elif name == b"v1":
            if not SIGNATURE_V1.fullmatch(item):
                break
            signatures += 1
    else:
        if timestamps == 1 and signatures >= 1:
            return None
    return "signature-malformed", "malformed Takeback-Signature header: t=<unix seconds>,v1=<64 hex digits>"


class _Refused(Exception):
    """Raised from `receive` when a body goes over its limit or its deadline."""


class HttpEdge:
    """Authentication shape, body limits and the body deadline, before the app reads anything."""

    def __init__(self, app, api, settings):
        self.app, self.api, self.settings = app, api, settings
        self.body_timeout = settings.http_body_timeout_seconds
        self.table: RouteTable | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.table is None:  # the routes are all there by the first request
            self.table = RouteTable(self.api.routes, self.settings)
        route = self.table.lookup(scope["method"], scope["path"])
        scope[ROUTE_AUTH] = route.auth  # for the rate limit: only a keyed route tells whether a key works
        authorization = signature = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name == b"takeback-signature":
                signature = value if signature is None else signature
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        announced = chunked or (length is not None and length != b"0")
        close = {"Connection": "close"} if announced else {}

        if route.auth == "bearer" and (authorization is None or not BEARER.fullmatch(authorization)):
            return await _problem(scope, receive, send, 401, "send an API key: Authorization: Bearer <key>", "unauthorized",
                                  {"WWW-Authenticate": 'Bearer realm="takeback"', **close})
        if route.auth == "signed":
            shape = signature_shape_problem(signature)
            if shape is not None:
                return await _problem(scope, receive, send, 401, shape[1], shape[0], close)
        limit = route.limit
        if length is not None and length.isdigit() and int(length) > limit:
            return await _problem(scope, receive, send, 413, f"this route takes bodies of at most {limit} bytes", "payload-too-large", {"Connection": "close"})

        state = _BodyState(announced)
        deadline = time.monotonic() + self.body_timeout if self.body_timeout > 0 else None

        async def counted_receive():
            if state.complete:
                return await receive()  # after the body: only the disconnect, for as long as it takes
            try:
                if deadline is None:
                    message = await receive()
                else:
                    async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())):
                        message = await receive()
            except TimeoutError:
                state.refusal = (408, f"the request body did not arrive within {self.body_timeout:g} s", "request-timeout")
                raise _Refused from None
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > limit:
                    state.refusal = (413, f"this route takes bodies of at most {limit} bytes", "payload-too-large")
                    raise _Refused
                if not message.get("more_body", False):
                    state.complete = True
            else:
                state.complete = True  # disconnected
            return message

        async def guarded_send(message):
            if state.refusal is not None:
                return  # what the app made of the refusal (FastAPI turns it into a 400): ours goes instead
            if message["type"] == "http.response.start":
                state.started = True
                if not state.complete:  # the rest of the body is not worth reading: the connection goes
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if state.refusal is None:
                raise
        if state.refusal is not None and not state.started:
            status, detail, kind = state.refusal
            await _problem(scope, receive, send, status, detail, kind, {"Connection": "close"})


class _BodyState:
    __slots__ = ("complete", "received", "refusal", "started")

    def __init__(self, announced: bool):
        self.complete = not announced
        self.received = 0
        self.refusal: tuple[int, str, str] | None = None
        self.started = False


async def _problem(scope, receive, send, status: int, detail: str, kind: str, headers: dict | None = None) -> None:
    await problems.problem_response(status, detail, kind, title=_TITLES.get(status), headers=headers)(scope, receive, send)


_TITLES = {408: "Request timeout", 413: "Payload too large", 429: "Too many requests", 431: "Request header fields too large"}


class SecurityHeaders:
    """`Cache-Control: no-store` (answers name partners, deals and money: no shared or browser cache
    keeps them), `X-Content-Type-Options: nosniff`, and a Content-Security-Policy on HTML answers,
    unless the route set its own."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"content-security-policy" not in names:
                    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                    if content_type.startswith(b"text/html"):
                        headers.append((b"content-security-policy", DOCS_CSP if scope["path"] in DOCS_PATHS else STRICT_CSP))
                        headers.append((b"referrer-policy", b"no-referrer"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- uvicorn -------------------------------------------------------------------------------------

REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
HEADERS_TOO_LARGE_RESPONSE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def guarded_protocol(header_timeout: float, max_header_bytes: int):
    """uvicorn's httptools protocol, plus what it lacks: a request's headers must be complete within
    `header_timeout` seconds of its first byte (of the connection, for the first request) and within
    `max_header_bytes`. uvicorn's keep-alive timer only runs between requests, and its only header
    limit is h11's: a client sending headers a byte at a time held a connection for ever.

    It also answers, without the application, the requests the rate limit refuses whatever their route
    (api/ratelimit.py `RateLimit.refusal`): a flood from a locked-out address costs ~20 us a request
    instead of ~65 us through uvicorn's request cycle and the ASGI stack."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from api.ratelimit import raw_429, served_limiter

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._awaiting_headers = False
            self._header_bytes = 0  # of the request line and headers parsed so far
            self._received_bytes = 0  # received while the headers are incomplete
            self._refused = False  # answered and closing: the rest is not parsed
            self._shed = False  # this request was answered by the rate limit, without the application

        def _arm(self) -> None:
            self._awaiting_headers, self._header_bytes, self._received_bytes = True, 0, 0
            if self._header_timer is None and header_timeout > 0:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            self._awaiting_headers = False
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, response: bytes) -> None:
            self._disarm()
            self._refused = True
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # never in the middle of another answer
                self.transport.write(response)
            self.transport.close()

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            self._refuse(REQUEST_TIMEOUT_RESPONSE)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self._awaiting_headers and not self._refused:  # a header block spread over many reads
                self._received_bytes += len(data)
                if self._received_bytes > max_header_bytes:
                    self._refuse(HEADERS_TOO_LARGE_RESPONSE)

        # Parser callbacks
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._header_bytes > max_header_bytes:  # a header block that came in one read
                self._refuse(HEADERS_TOO_LARGE_RESPONSE)
                return
            if self._shed_if_limited():
                return
            super().on_headers_complete()

        def _shed_if_limited(self) -> bool:
            """A request the rate limit refuses whatever its route (an address over its rate, or locked
            out for failed authentication) is answered here, without the application: ~20 us instead of
            ~65 us a request, so a flood costs the process a third of what it would."""
            limiter = served_limiter()
            if limiter is None or self.client is None or self.pipeline or not (self.cycle is None or self.cycle.response_complete):
                return False
            authorization = None
            credential = has_body = False
            for name, value in self.headers:
                if name == b"authorization":
                    authorization, credential = (value if authorization is None else authorization), True
                elif name in SIGNATURE_HEADERS:
                    credential = True
                elif name in (b"x-forwarded-for", b"forwarded"):
                    return False  # the application may count this request under another address
                elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                    has_body = True
            refusal = limiter.refusal(self.client[0], authorization, credential)
            if refusal is None:
                return False
            detail, wait = refusal
            close = has_body or not self.parser.should_keep_alive()  # a body is not worth reading
            self.transport.write(raw_429(detail, max(1, math.ceil(wait)), close))
            if close:
                self._refused = True
                self.transport.close()
            else:
                self._shed = True
            return True

        def on_body(self, body: bytes) -> None:
            if not (self._refused or self._shed):
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._shed:  # answered in on_headers_complete: wait for the next request as after any answer
                self._shed = False
                self.server_state.total_requests += 1
                if not self.transport.is_closing():
                    self._unset_keepalive_if_required()
                    self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
                return
            if not self._refused:
                super().on_message_complete()

    return GuardedHttpToolsProtocol


def uvicorn_options(settings) -> dict:
    """Keyword arguments for `uvicorn.run` (see `takeback api`)."""
    return {
        "http": guarded_protocol(settings.http_header_timeout_seconds, settings.http_max_header_bytes),
        "limit_concurrency": settings.http_max_connections,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,  # if h11 is ever chosen
        "server_header": False,  # no product and version banner
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
