"""The HTTP edge (issue 11, points 3 and 5 and the minor edge points): what a request may cost before
anyone checked who sent it, rate limits, and what the answers and logs give away. Each test fails on
the code before the fix (noted per test)."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from api.app import create_app
from store.db import get_engine
from tests.api_helpers import key
from tests.conftest import make_settings
from tests.postgres import _free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "5f1c0e8a9b7d6c4e3a2f1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"  # 64 random-looking hex characters
WELL_SHAPED_SIGNATURE = {"Takeback-Signature": f"t={int(time.time())},v1={'ab' * 32}"}
PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert PROBLEM_KEYS <= body.keys() and body["status"] == status, body
    if kind is not None:
        assert body["type"].endswith("/" + kind), body
    return body


@asynccontextmanager
async def edge(settings):
    """The app on `settings`; yields `client(address)`: an httpx client calling from that address."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), _closing() as clients:

        async def client(address: str = "127.0.0.1") -> httpx.AsyncClient:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url="http://takeback.test", timeout=30)
            clients.append(http)
            return http

        yield client


@asynccontextmanager
async def _closing():
    clients: list[httpx.AsyncClient] = []
    try:
        yield clients
    finally:
        for http in clients:
            await http.aclose()


class Body:
    """A chunked request body that counts how many of its chunks the server pulled."""

    def __init__(self, chunks: int, size: int = 64 * 1024, pause_after: int | None = None, pause: float = 0.0, fill: bytes = b" "):
        self.chunks, self.size, self.pause_after, self.pause, self.fill = chunks, size, pause_after, pause, fill
        self.pulled = 0

    async def __aiter__(self):
        for n in range(self.chunks):
            if self.pause_after is not None and n == self.pause_after:
                await asyncio.sleep(self.pause)
            self.pulled += 1
            yield self.fill * self.size


def count_statements(settings, needle: str | None = None) -> list[str]:
    """Every SQL statement the API runs on its store from now on (those containing `needle`)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if needle is None or needle in statement:
            seen.append(statement)

    event.listen(get_engine(settings.effective_database_url), "before_cursor_execute", record)
    return seen


# --- Point 3: no real body limit before auth ---------------------------------------------------------


async def test_a_chunked_body_is_counted_as_it_arrives_against_its_routes_limit(tmp_path):
    """Before: only a declared Content-Length was checked; a chunked 4 MiB body was read whole (a 422)."""
    settings = make_settings(tmp_path, carrier_webhook_secret=SECRET)
    async with edge(settings) as client:
        http = await client()
        ops = key(settings)
        body = Body(chunks=64)  # 4 MiB of spaces, no Content-Length
        assert_problem(await http.post("/v1/partners", content=body, headers={**ops, "Content-Type": "application/json"}), 413, "payload-too-large")
        assert body.pulled <= 1024 * 1024 // body.size + 2, f"read {body.pulled} chunks of a body over 1 MiB"

        webhook = Body(chunks=16)  # the webhook takes 64 KiB
        answer = await http.post("/v1/carrier-events", content=webhook, headers={**WELL_SHAPED_SIGNATURE, "Content-Type": "application/json"})
        assert_problem(answer, 413, "payload-too-large")
        assert webhook.pulled <= 3 and answer.headers.get("connection") == "close"

        # A booking takes the most: 2 MiB (a valid JSON document padded with whitespace) is read and judged on its terms.
        padded = b'{"partner_id": "NOPE", "customer": {"name": "A", "country": "CA"}, "opportunity": "refresh", "new_products_value": "1000.00", ' \
                 b'"incentive_rate": "0.05", "equipment": [{"product_id": "C9300-48P", "quantity": 1}]' + b" " * (2 * 1024 * 1024) + b"}"
        booking = await http.post("/v1/deals", content=padded, headers={**ops, "Content-Type": "application/json"})
        assert booking.status_code not in (413, 500), booking.text


@pytest.mark.parametrize(
    ("path", "headers", "kind"),
    [
        ("/v1/deals", {}, "unauthorized"),
        ("/v1/deals", {"Authorization": "Basic b3BzOm9wcw=="}, "unauthorized"),
        ("/v1/deals", {"Authorization": "Bearer"}, "unauthorized"),
        ("/v1/deals", {"Authorization": "Bearer two words"}, "unauthorized"),
        ("/v1/deals/D1/receipts", {"Authorization": "Bearer \x01"}, "unauthorized"),
        ("/v1/carrier-events", {}, "signature-missing"),
        ("/v1/carrier-events", {"Takeback-Signature": "garbage"}, "signature-malformed"),
        ("/v1/carrier-events", {"Takeback-Signature": "t=\u00b2\u00b3,v1=" + "ab" * 32}, "signature-malformed"),
        ("/v1/carrier-events", {"Takeback-Signature": "t=" + "9" * 5000 + ",v1=" + "ab" * 32}, "signature-malformed"),
        ("/v1/carrier-events", {"Takeback-Signature": "t=1700000000,v1=not-hex"}, "signature-malformed"),
    ],
)
async def test_a_request_without_a_well_formed_key_or_signature_is_refused_before_its_body_is_read(tmp_path, path, headers, kind):
    """Before: FastAPI parsed the body before the key was checked, and the webhook buffered it before
    the signature; a non-ASCII digit or 5,000 digits in `t` were a 500."""
    settings = make_settings(tmp_path, carrier_webhook_secret=SECRET)
    async with edge(settings) as client:
        http = await client()
        body = Body(chunks=32)
        headers = {name: value.encode("latin-1") if isinstance(value, str) else value for name, value in headers.items()}
        answer = await http.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert_problem(answer, 401, kind)
        assert body.pulled == 0, f"{body.pulled} chunks read before the request was refused"
        assert answer.headers.get("connection") == "close"  # the unread rest is not worth reading


async def test_a_body_that_does_not_arrive_in_time_is_a_408(tmp_path):
    """Before: a client could hold a request open by sending its body slowly, for ever."""
    settings = make_settings(tmp_path, http_body_timeout="0.5s")
    async with edge(settings) as client:
        http = await client()
        body = Body(chunks=2, size=10, pause_after=1, pause=5.0)
        started = time.monotonic()
        answer = await http.post("/v1/partners", content=body, headers={**key(settings), "Content-Type": "application/json"})
        assert time.monotonic() - started < 3
        assert_problem(answer, 408, "request-timeout")


def test_takeback_api_runs_uvicorn_with_connection_header_and_keep_alive_limits(monkeypatch):
    """Before: `takeback api` ran uvicorn's defaults: no connection limit, no header deadline, no header
    size limit with httptools, a version banner, and a log config without the filter."""
    import argparse

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    import cli
    from settings import get_settings

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: captured.update(kwargs))
    monkeypatch.setenv("TAKEBACK_ENV", "test")
    monkeypatch.setenv("TAKEBACK_HTTP_MAX_CONNECTIONS", "321")
    get_settings.cache_clear()
    try:
        assert cli.cmd_api(argparse.Namespace(host="127.0.0.1", port=1)) == 0
    finally:
        get_settings.cache_clear()
    assert captured["limit_concurrency"] == 321
    assert captured["timeout_keep_alive"] == 5
    assert captured["server_header"] is False
    assert issubclass(captured["http"], HttpToolsProtocol) and captured["http"] is not HttpToolsProtocol
    assert all("safe" in handler.get("filters", []) for handler in captured["log_config"]["handlers"].values())


# --- A real `takeback api` process: slow headers, logs -----------------------------------------------


@pytest.fixture(scope="module")
def api_process(tmp_path_factory):
    """`python -m cli api` with a 1 s header deadline; Temporal is not needed (the client is lazy)."""
    data = tmp_path_factory.mktemp("edge-api")
    port = _free_port()
    env = dict(os.environ, TEMPORAL_ADDRESS=f"127.0.0.1:{_free_port()}", TAKEBACK_DATA_DIR=str(data), TAKEBACK_ENV="test",
               TAKEBACK_CARRIER_WEBHOOK_SECRET=SECRET, TAKEBACK_MAIL_OUTBOX="true", TAKEBACK_HTTP_HEADER_TIMEOUT="1s",
               TAKEBACK_HTTP_MAX_HEADER_BYTES="16384", PYTHONPATH=str(ROOT))
    env.pop("TAKEBACK_DATABASE_URL", None)
    log = data / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli", "api", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent before."""
    sock.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, received
        if not data:
            return True, received
        received += data
    return False, received


def test_a_client_sending_its_headers_byte_by_byte_is_cut_off(api_process):
    """Before: uvicorn's only timer ran between requests; headers trickled a byte every 0.2 s held the
    connection (and a slot of the connection limit) for ever. Also: an oversized header block."""
    port, _log = api_process
    request = b"GET /healthz HTTP/1.1\r\nHost: takeback\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sent = 0
        closed = False
        for byte in request:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            time.sleep(0.2)
            if time.monotonic() - started > 4:
                break
        if not closed:
            closed, received = closed_within(sock, 1.0)
        elapsed = time.monotonic() - started
    assert closed, f"still connected after {elapsed:.1f} s and {sent} header bytes"
    assert elapsed < 3.0, f"cut off only after {elapsed:.1f} s"

    with socket.create_connection(("127.0.0.1", port)) as idle:  # a connection that sends nothing at all
        closed, _ = closed_within(idle, 3.0)
        assert closed

    with socket.create_connection(("127.0.0.1", port)) as big:  # headers over the 16 KiB limit, sent at once
        try:
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: takeback\r\n" + b"X-Filler: " + b"b" * 64 * 1024 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, received = closed_within(big, 2.0)
        assert closed and (received == b"" or received.startswith(b"HTTP/1.1 431")), received[:200]

    # The server still serves a well-behaved client.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code in (200, 503)


def test_the_api_logs_carry_no_keys_or_addresses_and_cannot_be_forged(api_process):
    """Before: the access log printed query strings as sent (a key or an e-mail address in a URL went to
    the log), and nothing escaped CR/LF in what the application logs."""
    port, log = api_process
    secret_key = "tbk_ops_" + "Zx9" * 12
    for path in (
        f"/healthz?api_key={secret_key}&contact=ana.person@acme.example",
        "/v1/deals/D1%0d%0aINFO:%20%20%20%20%20forged%20line",
        "/nowhere%0aERROR:%20forged",
    ):
        httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {secret_key}"}, timeout=10)
    time.sleep(0.3)
    text = log.read_text(errors="replace")
    assert secret_key not in text and "Zx9Zx9" not in text
    assert "ana.person@acme.example" not in text
    lines = text.splitlines()
    assert not any(line.lstrip().startswith(("INFO:     forged", "ERROR: forged", "forged")) for line in lines), text[-2000:]

    # What the application itself logs, through the same configuration: a decoded path with CR/LF, an
    # exception whose message spans lines.
    script = (
        "import logging, logging.config\n"
        "from api.logsafe import log_config\n"
        "logging.config.dictConfig(log_config())\n"
        "log = logging.getLogger('takeback.api')\n"
        "log.warning('unexpected error on %s %s', 'GET', '/v1/deals/x\\r\\nCRITICAL: forged by tbk_ptn_abcdefghijklmnop')\n"
        "try:\n"
        "    raise ValueError('bad value\\nERROR: forged in a traceback, mail bob@example.org')\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    out = result.stderr + result.stdout
    assert not any(line.startswith(("CRITICAL: forged", "ERROR: forged")) for line in out.splitlines()), out
    assert "abcdefghijklmnop" not in out and "bob@example.org" not in out, out


# --- Point 5: rate limits ---------------------------------------------------------------------------


async def test_token_buckets_per_key_and_per_address_answer_429_with_retry_after(tmp_path):
    """Before: no limit at all."""
    settings = make_settings(tmp_path, rate_per_key=0.1, rate_per_key_burst=3, rate_per_address=0.1, rate_per_address_burst=6)
    async with edge(settings) as client:
        http, other_address = await client("10.0.0.1"), await client("10.0.0.2")
        first, second = key(settings), key(settings)
        for _ in range(3):
            assert (await http.get("/v1/deals", headers=first)).status_code == 200
        limited = await http.get("/v1/deals", headers=first)
        body = assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["Retry-After"]) >= 1 and "API key" in body["detail"]
        assert (await http.get("/v1/deals", headers=second)).status_code == 200  # another key: its own bucket
        # 5 requests from 10.0.0.1 so far, 6 allowed: one more, then the address is over its limit.
        assert (await http.get("/v1/deals", headers=second)).status_code == 200
        by_address = await http.get("/v1/deals", headers=second)
        assert_problem(by_address, 429, "rate-limited")
        assert "address" in by_address.json()["detail"] and int(by_address.headers["Retry-After"]) >= 1
        assert (await other_address.get("/v1/deals", headers=second)).status_code == 200  # another address

    off = make_settings(tmp_path / "off", rate_per_key=0, rate_per_address=0, rate_failed_auth=0)
    async with edge(off) as client:
        http = await client()
        ops = key(off)
        answers = await asyncio.gather(*(http.get("/v1/deals", headers=ops) for _ in range(60)))
        assert {answer.status_code for answer in answers} == {200}
        bad = [await http.get("/v1/deals", headers={"Authorization": f"Bearer tbk_ops_{n:040d}"}) for n in range(60)]
        assert {answer.status_code for answer in bad} == {401}


async def test_failed_authentication_locks_an_address_out_before_any_key_lookup(tmp_path):
    """Before: every random bearer token cost a database lookup, as fast as a client could send them."""
    settings = make_settings(tmp_path, rate_failed_auth=0.05, rate_failed_auth_burst=5)
    async with edge(settings) as client:
        attacker, neighbour, elsewhere = await client("10.0.0.9"), await client("10.0.0.9"), await client("10.0.0.10")
        valid = key(settings)
        assert (await neighbour.get("/v1/deals", headers=valid)).status_code == 200  # a key seen to work
        statements = count_statements(settings)
        answers = [await attacker.get("/v1/deals", headers={"Authorization": f"Bearer tbk_ops_{os.urandom(24).hex()}"}) for _ in range(40)]
        statuses = [answer.status_code for answer in answers]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        refused = answers[-1]
        assert_problem(refused, 429, "rate-limited")
        assert int(refused.headers["Retry-After"]) >= 1
        lookups = len(statements)
        assert lookups <= 5 * 2, f"{lookups} statements for 40 unknown keys"  # the 35 refused cost none
        # A forged webhook signature from that address is refused the same way.
        assert (await attacker.post("/v1/carrier-events", content=b"{}", headers=WELL_SHAPED_SIGNATURE)).status_code == 429
        # The key that worked still works from the same address; another address is not affected.
        assert (await neighbour.get("/v1/deals", headers=valid)).status_code == 200
        assert_problem(await elsewhere.get("/v1/deals", headers={"Authorization": "Bearer tbk_ops_unknown0000000000"}), 401)


async def test_the_impact_report_and_the_health_check_are_cached_briefly(tmp_path, monkeypatch):
    """Before: each request recomputed the report (an aggregate over every settlement) and queried the
    database and the engine for /healthz."""
    from api.routes import reports

    settings = make_settings(tmp_path, response_cache="0.5s")
    computed = []
    original = reports.impact

    def counting(*args, **kwargs):
        computed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(reports, "impact", counting)
    async with edge(settings) as client:
        http = await client()
        ops = key(settings)
        first = await http.get("/v1/reports/impact", headers=ops)
        assert first.status_code == 200
        for _ in range(5):
            again = await http.get("/v1/reports/impact", headers=ops)
            assert again.status_code == 200 and again.json() == first.json()
        assert len(computed) == 1
        assert (await http.get("/v1/reports/impact", headers=key(settings))).status_code == 200  # per key
        assert len(computed) == 2
        await asyncio.sleep(0.6)
        assert (await http.get("/v1/reports/impact", headers=ops)).status_code == 200
        assert len(computed) == 3
        assert_problem(await http.get("/v1/reports/impact", headers={"Authorization": "Bearer tbk_ops_nobody00000000"}), 401)

        async def engine_ok(*_args, **_kwargs):
            return True

        monkeypatch.setattr(http._transport.app.state.temporal.service_client, "check_health", engine_ok)  # noqa: SLF001
        pings = count_statements(settings, "SELECT 1")
        answers = await asyncio.gather(*(http.get("/healthz") for _ in range(5)))
        answers += [await http.get("/healthz") for _ in range(5)]
        assert {answer.status_code for answer in answers} == {200}
        assert len(pings) == 1, f"{len(pings)} database pings for 10 health checks within the cache time"


async def test_one_key_is_one_bucket_and_one_cached_report_however_its_header_is_written(tmp_path, monkeypatch):
    """Issue 24, 4. Before: the per-key bucket and the report's cache were keyed on the raw header, so `bearer K`,
    `BEARER K`, `Bearer  K` and `Bearer K ` (any number of spaces) were as many buckets, and reports, for one key."""
    from api.routes import reports

    computed = []
    original = reports.impact
    monkeypatch.setattr(reports, "impact", lambda *args, **kwargs: computed.append(1) or original(*args, **kwargs))
    settings = make_settings(tmp_path, rate_per_key=0.01, rate_per_key_burst=4, response_cache="30s")
    async with edge(settings) as client:
        http = await client("10.0.0.3")
        token = key(settings)["Authorization"].removeprefix("Bearer ")
        forms = [f"Bearer {token}", f"bearer {token}", f"BEARER {token}", f"Bearer   {token}", f"Bearer {token}  ", f"bEaReR {token}"]
        answers = [await http.get("/v1/reports/impact", headers={"Authorization": form}) for form in forms]
        assert [answer.status_code for answer in answers[:4]] == [200] * 4, [a.text for a in answers]
        assert len(computed) == 1  # one key, one cached report
        for limited in answers[4:]:  # the key's 4 are spent, whichever way it is written
            assert_problem(limited, 429, "rate-limited")
            assert "API key" in limited.json()["detail"]
        assert (await http.get("/v1/reports/impact", headers=key(settings))).status_code == 200  # another key: its own bucket


# --- Minor points -----------------------------------------------------------------------------------


async def test_healthz_says_which_part_is_down_not_where_it_is(tmp_path, monkeypatch):
    """Before: an engine error was passed on as text (a TLS or permission failure names the engine's
    host and port), and a database failure hid the engine's state."""
    from sqlalchemy.exc import OperationalError
    from temporalio.service import RPCError, RPCStatusCode

    from api.routes import health

    settings = make_settings(tmp_path, response_cache="0")
    async with edge(settings) as client:
        http = await client()
        app = http._transport.app  # noqa: SLF001

        async def refused(*_args, **_kwargs):
            raise RPCError("tls handshake with temporal.internal:7233 (10.1.2.3:7233) failed", RPCStatusCode.PERMISSION_DENIED, b"")

        monkeypatch.setattr(app.state.temporal.service_client, "check_health", refused)
        body = assert_problem(await http.get("/healthz"), 503, "temporal-unavailable")
        assert "7233" not in str(body) and "10.1.2.3" not in str(body) and "temporal.internal" not in str(body), body
        assert body["temporal"] == "down" and body["database"] == "ok", body

        def database_down(_url):
            raise OperationalError("SELECT 1", {}, Exception('could not connect to server at "db.internal" (10.9.8.7), port 5432'))

        monkeypatch.setattr(health, "session_scope", database_down)
        body = assert_problem(await http.get("/healthz"), 503, "database-unavailable")
        assert body["database"] == "down" and body["temporal"] == "down", body
        assert "5432" not in str(body) and "db.internal" not in str(body) and "10.9.8.7" not in str(body), body


async def test_answers_are_not_stored_or_sniffed_and_html_gets_a_strict_csp(tmp_path):
    """Before: no Cache-Control, X-Content-Type-Options or Content-Security-Policy at all."""
    from api.limits import SecurityHeaders

    settings = make_settings(tmp_path)
    async with edge(settings) as client:
        http = await client()
        for answer in (await http.get("/healthz"), await http.get("/v1/deals"), await http.get("/v1/deals", headers=key(settings)), await http.get("/nowhere")):
            assert answer.headers.get("cache-control") == "no-store", (answer.request.url, answer.headers)
            assert answer.headers.get("x-content-type-options") == "nosniff"
        docs = await http.get("/docs")
        assert docs.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]
        assert "default-src 'none'" in docs.headers["content-security-policy"]

    # An HTML answer of the API (the certificate page): no script at all, no frames, no forms.
    async def certificate_page(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"<html><style>body{}</style></html>"})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=SecurityHeaders(certificate_page)), base_url="http://t") as http:
        policy = (await http.get("/v1/deals/D1/certificate?format=html")).headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "frame-ancestors 'none'" in policy


def test_sql_errors_do_not_carry_the_values_bound_to_them(tmp_path):
    """Before: an IntegrityError (in a traceback, a log line) carried the row's values: e-mail addresses."""
    from sqlalchemy.exc import IntegrityError

    from store.db import session_scope
    from store.tables import Partner

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with session_scope(url) as session:
        session.add(Partner(id="P-HIDE", name="Hidden Person", contact_email="hidden.person@example.com", country="CA"))
        session.commit()
    with session_scope(url) as session:
        session.add(Partner(id="P-HIDE", name="Hidden Person", contact_email="hidden.person@example.com", country="CA"))
        with pytest.raises(IntegrityError) as raised:
            session.commit()
    message = str(raised.value)
    assert "hidden.person@example.com" not in message and "Hidden Person" not in message, message
    assert "hidden" in message.lower()  # SQLAlchemy says the parameters are hidden


async def test_an_unexpected_error_is_not_stored_or_sniffed_either(tmp_path):
    """A 500 is answered outside the header middleware: it sets the headers itself."""
    from fastapi import APIRouter
    from httpx import ASGITransport, AsyncClient

    from api.app import create_app

    app = create_app(make_settings(tmp_path))
    broken = APIRouter()

    @broken.get("/broken")
    async def fails():
        raise RuntimeError("a bug")

    app.include_router(broken)
    async with AsyncClient(transport=ASGITransport(app=app, raise_app_exceptions=False), base_url="http://takeback.test") as http:
        answer = await http.get("/broken")
    assert answer.status_code == 500 and answer.headers["content-type"].startswith("application/problem+json")
    assert answer.headers.get("cache-control") == "no-store" and answer.headers.get("x-content-type-options") == "nosniff"
