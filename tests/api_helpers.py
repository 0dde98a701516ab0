"""Helpers for API tests: an app on a settings object, keys, signed carrier events."""

import asyncio
import hashlib
import hmac
import json
from datetime import datetime, timezone
import time
from contextlib import asynccontextmanager

import httpx

from api.app import create_app
from store.api_keys import create_api_key
from store.db import session_scope

WEBHOOK_SECRET = "test-webhook-secret"


async def as_told(attempt, budget: float = 60.0) -> object:
    """What a real client of the API does with a 503 that says Retry-After (the engine busy, a query past
    its deadline, a worker restarting): wait that long and send the same request again, for up to
    `budget` seconds in all. `attempt()` returns (its outcome, the seconds it was told to wait or None);
    the outcome of the first attempt not told to wait, or of the last one within the budget, is returned."""
    deadline = time.monotonic() + budget
    while True:
        outcome, wait = await attempt()
        if wait is None or time.monotonic() + wait > deadline:
            return outcome
        await asyncio.sleep(wait)


class RetryAfter503(httpx.AsyncBaseTransport):
    """An HTTP client's transport that retries a 503 with Retry-After `as_told`; `retried` lists the
    problem types it waited out."""

    def __init__(self, transport: httpx.AsyncBaseTransport, budget: float = 60.0):
        self.transport, self.budget = transport, budget
        self.app = getattr(transport, "app", None)  # as the ASGI transport it wraps (certified_partner reads it)
        self.retried: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async def attempt():
            response = await self.transport.handle_async_request(request)
            after = response.headers.get("retry-after")
            if response.status_code != 503 or after is None:
                return response, None
            body = json.loads(await response.aread())
            self.retried.append(body.get("type", "").rsplit("/", 1)[-1])
            return response, float(after)

        return await as_told(attempt, self.budget)


async def as_the_api_calls(call, client, timeout: float = 30, budget: float = 60.0):
    """A service call (`call()` makes it afresh) made as a route makes it, through `api.deps.temporal`
    (a query past its deadline, a busy workflow or a restarting worker: a 503 problem with Retry-After),
    by a caller that retries as told: for tests of the service that a loaded machine must not fail."""
    from api.deps import temporal
    from api.problems import Problem

    async def attempt():
        try:
            return await temporal(call(), timeout=timeout, client=client), None
        except Problem as problem:
            after = (problem.headers or {}).get("Retry-After") if problem.status == 503 else None
            if after is None:
                raise
            return problem, float(after)

    outcome = await as_told(attempt, budget)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@asynccontextmanager
async def api_client(settings, base_url: str = "http://takeback.test", timeout: float = 60, retry_503: bool = False):
    """An HTTP client of an app on `settings`; with `retry_503`, one that retries a 503 with Retry-After
    as a real client would (RetryAfter503), for tests whose point is not the 503 itself."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=RetryAfter503(transport) if retry_503 else transport, base_url=base_url, timeout=timeout) as http:
            yield http


def key(settings, role: str = "ops", partner_id: str | None = None) -> dict:
    with session_scope(settings.effective_database_url) as session:
        return {"Authorization": f"Bearer {create_api_key(session, role, partner_id)}"}


def signed(body: dict, secret: str = WEBHOOK_SECRET, at: float | None = None) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    t = str(int(at if at is not None else time.time()))
    signature = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return raw, {"Takeback-Signature": f"t={t},v1={signature}", "Content-Type": "application/json"}


def booking_body(partner_id: str, units: int = 10, serials: list[str] | None = None, rate: str = "0.05") -> dict:
    line = {"product_id": "C9300-48P", "quantity": units}
    if serials is not None:
        line["serial_numbers"] = serials
    return {
        "partner_id": partner_id,
        "customer": {"name": "Acme", "country": "CA"},
        "opportunity": "refresh",
        "new_products_value": "100000.00",
        "incentive_rate": rate,
        "equipment": [line],
    }


PICKUP = {"address": "1 Main St", "contact_name": "Sam", "contact_phone": "+1 555 0100", "ready_on": datetime.now(timezone.utc).date().isoformat(), "expected_units": 1}


async def certified_partner(http: httpx.AsyncClient, ops: dict, partner_id: str) -> None:
    """Register a partner and certify it through the API, as ops would."""
    r = await http.post("/v1/partners", json={"id": partner_id, "name": f"Partner {partner_id}", "contact_email": f"{partner_id.lower()}@partner.example", "country": "CA"}, headers=ops)
    assert r.status_code == 201, r.text
    for path, body in (("trainings", {"person_email": "ana@p.example", "person_name": "Ana", "hours": 6}), ("exams", {"exam": 1, "passed": True}), ("exams", {"exam": 2, "passed": True}), ("pledge", None)):
        r = await http.post(f"/v1/partners/{partner_id}/{path}", json=body, headers=ops)
        assert r.status_code == 201, r.text
    for _ in range(100):
        r = await http.get(f"/v1/partners/{partner_id}", headers=ops)
        if r.json()["specialization"]["status"] == "certified":
            # booking reads the store projection, written right after the certification
            from service.partners import PartnerNotCertified, ensure_may_book

            try:
                ensure_may_book(http._transport.app.state.settings, partner_id)  # noqa: SLF001
                return
            except PartnerNotCertified:
                pass
        await asyncio.sleep(0.05)
    raise AssertionError("partner never certified")


async def eventually(check, timeout: float = 20, what: str = "condition"):
    """The first truthy answer of `check`, asked every 0.2 s; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
