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


@asynccontextmanager
async def api_client(settings, base_url: str = "http://takeback.test", timeout: float = 60):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, timeout=timeout) as http:
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
