"""Authorization, idempotency, webhook signatures, problem+json and 503s of the API."""

import asyncio
import time

import pytest
from sqlalchemy import func, select

from api.app import create_app
from store.db import session_scope
from store.tables import Deal
from tests.api_helpers import PICKUP, WEBHOOK_SECRET, api_client, booking_body, certified_partner, key, signed
from tests.conftest import make_settings, running_worker

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert PROBLEM_KEYS <= body.keys() and body["status"] == status
    return body


@pytest.fixture
async def two_partners(time_skipping_env, tmp_path, database_url):
    """Partners A and B, certified, a deal of each with a pickup; yields (http, settings, keys, deals).

    Every test using it runs on SQLite and on PostgreSQL (`database_url`)."""
    env = time_skipping_env
    settings = make_settings(tmp_path, carrier_webhook_secret=WEBHOOK_SECRET, temporal_address=env.client.service_client.config.target_host, database_url=database_url)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        for partner in ("A", "B"):
            await certified_partner(http, ops, partner)
        keys = {"ops": ops, "A": key(settings, "partner", "A"), "B": key(settings, "partner", "B"), "bad": {"Authorization": "Bearer tbk_nope"}, "none": {}}
        deals = {}
        for partner in ("A", "B"):
            deals[partner] = (await http.post("/v1/deals", json=booking_body(partner, 10), headers=keys[partner])).json()["id"]
            await http.post(f"/v1/deals/{deals[partner]}/pickups", json=PICKUP, headers=keys[partner])
        yield http, settings, keys, deals


# Every route, with a valid request, and what an own partner key gets (ops-only actions: 403).
def route_table(deals: dict, partner: str) -> dict:
    deal = deals[partner]
    items = {"items": [{"product_id": "C9300-48P", "serial_number": f"M-{time.monotonic_ns()}", "condition": "working", "age_years": 1}]}
    return {
        ("POST", "/v1/partners"): ({"id": f"N{time.monotonic_ns()}", "name": "New", "contact_email": "n@p.example", "country": "CA"}, 403),
        ("GET", "/v1/partners/{partner_id}"): (None, 200),
        ("POST", "/v1/partners/{partner_id}/trainings"): ({"person_email": "x@p.example", "person_name": "X", "hours": 1}, 403),
        ("POST", "/v1/partners/{partner_id}/exams"): ({"exam": 1, "passed": True}, 403),
        ("POST", "/v1/partners/{partner_id}/pledge"): (None, 201),
        ("POST", "/v1/partners/{partner_id}/reinstate"): ({"reason": "r"}, 403),
        ("POST", "/v1/deals"): (booking_body(partner, 2), 201),
        ("GET", "/v1/deals"): (None, 200),
        ("GET", "/v1/deals/{deal_id}"): (None, 200),
        ("GET", "/v1/deals/{deal_id}/certificate"): (None, 404),  # not issued while the deal is open
        ("GET", "/v1/deals/{deal_id}/emails"): (None, 403),  # ops read the delivery state of a deal's mail
        ("GET", "/v1/deals/{deal_id}/audit"): (None, 403),  # ops read who did what to a deal
        ("POST", "/v1/deals/{deal_id}/extend"): ({"extend_by": "30d", "reason": "r"}, 403),
        ("POST", "/v1/deals/{deal_id}/pickups"): (PICKUP, 201),
        ("GET", "/v1/deals/{deal_id}/pickups/{pickup_id}"): (None, 200),  # its booking with the carrier
        ("GET", "/v1/deals/{deal_id}/pickups/{pickup_id}/label"): (None, 404),  # the simulated carrier prints no label
        ("POST", "/v1/deals/{deal_id}/receipts"): (items, 403),
        ("POST", "/v1/deals/{deal_id}/cancel"): ({"reason": "r"}, 403),
        ("GET", "/v1/reports/impact"): (None, 200),
        ("GET", "/healthz"): (None, 200),
        ("GET", "/readyz"): (None, 200),
        ("GET", "/livez"): (None, 200),
        ("GET", "/metrics"): (None, 200),  # for Prometheus: no key (README "Operating it")
        ("POST", "/v1/carrier-events"): (None, None),  # signed, not keyed: tested below
        ("POST", "/v1/carrier-events/easypost"): (None, None),  # signed by EasyPost: tests/test_easypost.py
        # Custody (issue 14). Ops recording on a deal with nothing received: a 422 naming the serials.
        ("POST", "/v1/deals/{deal_id}/sanitizations"): ({"serial_numbers": ["NOT-RECEIVED"], "method": "purge", "technique": "t", "tool": "t", "tool_version": "1",
                                                         "operator": "o", "facility": "f", "at": "2026-01-01T00:00:00Z", "verification": "passed", "verified_by": "v"}, 403),
        ("POST", "/v1/deals/{deal_id}/dispositions"): ({"serial_numbers": ["NOT-RECEIVED"], "disposition": "refresh"}, 403),
        ("POST", "/v1/downstream-shipments"): ({"recycler": {"name": "R", "certification_id": "R2v3-1"}, "shipped_at": "2026-01-01T00:00:00Z", "lot": "L1",
                                               "materials": [{"material": "ferrous", "kg": 1}]}, 403),
        ("GET", "/v1/reports/reasons"): (None, 403),
        ("GET", "/v1/serials/{serial}"): (None, None),  # a serial of a partner's own deal: tests/test_custody_flow.py
        ("GET", "/v1/certificates/{certificate_id}/verify"): (None, None),  # no key: tests/test_custody_flow.py
    }


PUBLIC = {"/healthz", "/readyz", "/livez", "/metrics"}  # answered without a key


def app_routes(settings) -> set[tuple[str, str]]:
    """Every operation the app serves, read from its OpenAPI document."""
    return {(method.upper(), path) for path, operations in create_app(settings).openapi()["paths"].items() for method in operations}


def fill(path: str, partner: str, deals: dict) -> str:
    return path.replace("{partner_id}", partner).replace("{deal_id}", deals[partner]).replace("{pickup_id}", f"{deals[partner]}-p1")


async def test_authorization_matrix_covers_every_route(two_partners):
    http, settings, keys, deals = two_partners
    table = route_table(deals, "A")
    assert app_routes(settings) == set(table), "a route was added or removed: give it a row in route_table"
    for (method, path), (body, own_status) in table.items():
        if own_status is None:
            continue
        if path in PUBLIC:
            assert (await http.request(method, path)).status_code == own_status, path
            continue
        scoped = "{" in path or path == "/v1/deals" and method == "POST"
        call = lambda who, owner: http.request(method, fill(path, owner, deals), json=body if owner == "A" else route_table(deals, owner)[(method, path)][0], headers=keys[who])  # noqa: E731
        assert_problem(await call("none", "A"), 401)
        assert_problem(await call("bad", "A"), 401)
        if scoped:  # another partner's resource does not exist for A
            assert_problem(await call("A", "B"), 404)
        own = await call("A", "A")
        assert own.status_code == own_status, (method, path, own.text)
        table = route_table(deals, "A")  # fresh ids for the ops call
        ops = await http.request(method, fill(path, "A", deals), json=table[(method, path)][0], headers=keys["ops"])
        assert ops.status_code < 500, (method, path, ops.text)  # an ops call may be refused (a 409), never fail
        assert ops.status_code not in (401, 403) and (ops.status_code != 404 or path.endswith(("certificate", "label"))), (method, path, ops.text)


async def test_partner_lists_and_reports_show_only_its_own(two_partners):
    http, settings, keys, deals = two_partners
    listed = (await http.get("/v1/deals?limit=200", headers=keys["A"])).json()["items"]
    assert {d["partner_id"] for d in listed} == {"A"}
    assert (await http.get("/v1/deals?partner_id=B", headers=keys["A"])).json()["items"] == []
    assert_problem(await http.get("/v1/reports/impact?partner_id=B", headers=keys["A"]), 404)
    everything = (await http.get("/v1/deals?limit=1", headers=keys["ops"])).json()
    second = (await http.get(f"/v1/deals?limit=1&cursor={everything['next_cursor']}", headers=keys["ops"])).json()
    assert everything["items"][0]["id"] != second["items"][0]["id"]


async def test_booking_idempotency_key(two_partners):
    http, settings, keys, deals = two_partners
    headers = {**keys["A"], "Idempotency-Key": "order-42"}
    first = await http.post("/v1/deals", json=booking_body("A", 3), headers=headers)
    again = await http.post("/v1/deals", json=booking_body("A", 3), headers=headers)
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert_problem(await http.post("/v1/deals", json=booking_body("A", 4), headers=headers), 422)
    other_key = await http.post("/v1/deals", json=booking_body("A", 3), headers={**keys["ops"], "Idempotency-Key": "order-42"})
    assert other_key.json()["id"] != first.json()["id"]  # keys are scoped per API key
    with session_scope(settings.effective_database_url) as session:
        assert session.execute(select(func.count()).select_from(Deal).where(Deal.id == first.json()["id"])).scalar_one() == 1


async def test_booking_rules_answer_with_problems(two_partners):
    http, settings, keys, deals = two_partners
    assert_problem(await http.post("/v1/deals", json=booking_body("A", 3, rate="0.08"), headers=keys["A"]), 422)
    assert_problem(await http.post("/v1/deals", json=booking_body("A", 3, rate="0"), headers=keys["A"]), 422)
    ok = await http.post("/v1/deals", json=booking_body("A", 2, serials=["X1", "X2"]), headers=keys["A"])
    assert ok.status_code == 201
    conflict = assert_problem(await http.post("/v1/deals", json=booking_body("B", 2, serials=["X2", "X3"]), headers=keys["B"]), 409)
    # A count only: the serial may be held by another partner's deal, which is not B's to learn.
    assert conflict["conflicting_serials"] == 1 and "serials" not in conflict and "X2" not in conflict["detail"]
    r = await http.post("/v1/partners", json={"id": "C", "name": "C", "contact_email": "c@p.example", "country": "CA"}, headers=keys["ops"])
    assert r.status_code == 201
    assert_problem(await http.post("/v1/partners", json={"id": "C", "name": "C", "contact_email": "c@p.example", "country": "CA"}, headers=keys["ops"]), 409)
    assert_problem(await http.post("/v1/deals", json=booking_body("C", 2), headers=keys["ops"]), 409)  # not certified
    assert_problem(await http.post("/v1/deals", json=booking_body("NOBODY", 2), headers=keys["ops"]), 404)
    validation = assert_problem(await http.post("/v1/deals", content=b"{not json", headers={**keys["A"], "Content-Type": "application/json"}), 422)
    assert validation["errors"]
    assert_problem(await http.post("/v1/deals", json={"partner_id": "A"}, headers=keys["A"]), 422)
    assert_problem(await http.get("/v1/nothing-here", headers=keys["A"]), 404)
    assert_problem(await http.delete("/v1/deals", headers=keys["A"]), 405)
    assert_problem(await http.get("/v1/deals?limit=1000", headers=keys["A"]), 422)
    assert_problem(await http.get("/v1/deals?cursor=garbage", headers=keys["A"]), 422)


async def test_closed_deals_refuse_pickups_receipts_and_extensions(two_partners):
    http, settings, keys, deals = two_partners
    r = await http.post(f"/v1/deals/{deals['A']}/cancel", json={"reason": "customer withdrew"}, headers=keys["ops"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["incentive"]["status"] == "cancelled"
    assert_problem(await http.post(f"/v1/deals/{deals['A']}/pickups", json=PICKUP, headers=keys["A"]), 409)
    items = {"items": [{"product_id": "C9300-48P", "serial_number": "LATE", "condition": "working", "age_years": 1}]}
    assert_problem(await http.post(f"/v1/deals/{deals['A']}/receipts", json=items, headers=keys["ops"]), 409)
    # a valid extension: the 409 comes from the closed deal, not from validation
    assert_problem(await http.post(f"/v1/deals/{deals['A']}/extend", json={"extend_by": "30d", "reason": "r"}, headers=keys["ops"]), 409)
    after = (await http.get(f"/v1/deals/{deals['A']}", headers=keys["ops"])).json()
    assert after["status"] == "cancelled" and after["return_deadline"] == r.json()["return_deadline"]  # nothing was extended


async def test_webhook_signatures_and_replays(two_partners):
    http, settings, keys, deals = two_partners
    tracking = (await http.get(f"/v1/deals/{deals['A']}", headers=keys["A"])).json()["pickups"][0]["tracking_number"]
    event = {"event_id": "w-1", "tracking_number": tracking, "status": "in_transit", "occurred_at": "2026-12-02T10:00:00Z"}
    raw, headers = signed(event)
    assert_problem(await http.post("/v1/carrier-events", content=raw, headers={"Content-Type": "application/json"}), 401)
    assert_problem(await http.post("/v1/carrier-events", content=raw, headers={**headers, "Takeback-Signature": "garbage"}), 401)
    assert_problem(await http.post("/v1/carrier-events", content=raw, headers=signed(event, secret="wrong")[1]), 401)
    assert_problem(await http.post("/v1/carrier-events", content=raw, headers=signed(event, at=time.time() - 301)[1]), 401)
    tampered = raw.replace(b"in_transit", b"delivered")
    assert_problem(await http.post("/v1/carrier-events", content=tampered, headers=headers), 401)
    first = await http.post("/v1/carrier-events", content=raw, headers=headers)
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    replay = await http.post("/v1/carrier-events", content=raw, headers=headers)
    assert replay.status_code == 202 and replay.json()["status"] == "ignored"
    unknown = {**event, "event_id": "w-2", "tracking_number": "NOPE"}
    assert_problem(await http.post("/v1/carrier-events", content=signed(unknown)[0], headers=signed(unknown)[1]), 404)
    bad = {**event, "event_id": "w-3", "status": "teleported"}
    assert_problem(await http.post("/v1/carrier-events", content=signed(bad)[0], headers=signed(bad)[1]), 422)


async def test_temporal_down_is_a_503_within_five_seconds(tmp_path):
    from tests.postgres import _free_port

    settings = make_settings(tmp_path, temporal_address=f"127.0.0.1:{_free_port()}")
    async with api_client(settings) as http:
        from tests.conftest import add_partner

        add_partner(settings, "A")
        ops = key(settings)
        for method, path, body in (("POST", "/v1/deals", booking_body("A", 2)), ("GET", "/healthz", None), ("POST", "/v1/partners", {"id": "Z", "name": "Z", "contact_email": "z@p.example", "country": "CA"})):
            started = time.monotonic()
            response = await http.request(method, path, json=body, headers=ops)
            assert time.monotonic() - started < 5
            assert_problem(response, 503)


async def test_concurrent_retries_with_one_idempotency_key_book_one_deal(two_partners):
    import asyncio

    http, settings, keys, deals = two_partners
    headers = {**keys["A"], "Idempotency-Key": "burst-1"}
    answers = await asyncio.gather(*(http.post("/v1/deals", json=booking_body("A", 2, serials=["BURST-1", "BURST-2"]), headers=headers) for _ in range(4)))
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1


async def test_api_started_while_temporal_is_down_reconnects_when_it_comes_up(tmp_path):
    """The lazy client: 503 while the engine is away, then the same app serves workflow routes."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from tests.conftest import binary
    from tests.postgres import _free_port

    port = _free_port()
    settings = make_settings(tmp_path, temporal_address=f"127.0.0.1:{port}")
    async with api_client(settings) as http:
        ops = key(settings)
        assert_problem(await http.get("/healthz"), 503)
        assert_problem(await http.post("/v1/partners", json={"id": "LATE", "name": "L", "contact_email": "l@p.example", "country": "CA"}, headers=ops), 503)
        env = await WorkflowEnvironment.start_local(port=port, data_converter=pydantic_data_converter, dev_server_existing_path=binary("temporal"), dev_server_log_level="error")
        try:
            async with running_worker(env.client, settings):
                assert (await http.get("/healthz")).status_code == 200
                r = await http.post("/v1/partners", json={"id": "LATE", "name": "L", "contact_email": "l@p.example", "country": "CA"}, headers=ops)
                assert r.status_code == 201, r.text
                r = await http.post("/v1/deals", json=booking_body("P1", 2), headers=ops)  # P1: certified by running_worker
                assert r.status_code == 201, r.text
        finally:
            await env.shutdown()


async def test_a_lapsed_partner_cannot_book_until_reinstated(two_partners, time_skipping_env):
    from datetime import timedelta

    http, settings, keys, deals = two_partners
    await certified_partner(http, keys["ops"], "LAPSING")
    lapsing = key(settings, "partner", "LAPSING")
    await time_skipping_env.sleep(timedelta(days=366))  # a specialization year without a deal
    for _ in range(100):
        status = (await http.get("/v1/partners/LAPSING", headers=lapsing)).json()["specialization"]["status"]
        if status == "lapsed":
            break
        await asyncio.sleep(0.05)
    assert status == "lapsed"
    assert_problem(await http.post("/v1/deals", json=booking_body("LAPSING", 2), headers=lapsing), 409)
    assert_problem(await http.post("/v1/partners/LAPSING/reinstate", json={"reason": "r"}, headers=lapsing), 403)
    r = await http.post("/v1/partners/LAPSING/reinstate", json={"reason": "late deal approved"}, headers=keys["ops"])
    assert r.status_code == 200 and r.json()["status"] == "certified"
    assert (await http.post("/v1/deals", json=booking_body("LAPSING", 2), headers=lapsing)).status_code == 201


async def test_an_oversized_body_is_refused_before_it_is_read(tmp_path):
    from api.app import MAX_BODY_BYTES

    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        headers = {**key(settings), "Content-Type": "application/json", "Content-Length": str(MAX_BODY_BYTES + 1)}
        response = await http.post("/v1/deals", content=b"{}", headers=headers)
        body = assert_problem(response, 413)
        assert body["type"].endswith("payload-too-large")


async def test_a_revoked_key_is_refused_at_once(tmp_path):
    from datetime import datetime, timezone

    from store.tables import ApiKey

    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        ops = key(settings)
        assert (await http.get("/v1/deals", headers=ops)).status_code == 200
        with session_scope(settings.effective_database_url) as session:
            for row in session.execute(select(ApiKey)).scalars():
                row.revoked_at = datetime.now(timezone.utc)
                session.add(row)
            session.commit()
        assert_problem(await http.get("/v1/deals", headers=ops), 401)  # no window: the next request is refused


async def test_extend_and_cancel_take_an_idempotency_key_and_ops_read_a_deals_mail(two_partners):
    http, settings, keys, deals = two_partners
    body = {"extend_by": "30d", "reason": "customer asked"}
    first = await http.post(f"/v1/deals/{deals['A']}/extend", json=body, headers={**keys["ops"], "Idempotency-Key": "ext-1"})
    retry = await http.post(f"/v1/deals/{deals['A']}/extend", json=body, headers={**keys["ops"], "Idempotency-Key": "ext-1"})
    assert first.status_code == retry.status_code == 200 and first.json() == retry.json()  # a retry is the same extension
    assert first.json()["extensions"] == ["+30d: customer asked"]
    assert_problem(await http.post(f"/v1/deals/{deals['A']}/extend", json={**body, "extend_by": "60d"}, headers={**keys["ops"], "Idempotency-Key": "ext-1"}), 422)
    second = await http.post(f"/v1/deals/{deals['A']}/extend", json=body, headers={**keys["ops"], "Idempotency-Key": "ext-2"})
    assert second.json()["extensions"] == ["+30d: customer asked", "+30d: customer asked"]  # another key, another extension

    cancel = {"reason": "customer withdrew"}
    done = await http.post(f"/v1/deals/{deals['A']}/cancel", json=cancel, headers={**keys["ops"], "Idempotency-Key": "cancel-1"})
    again = await http.post(f"/v1/deals/{deals['A']}/cancel", json=cancel, headers={**keys["ops"], "Idempotency-Key": "cancel-1"})
    assert done.status_code == again.status_code == 200 and again.json()["status"] == "cancelled"  # not a 409: the same cancel
    assert_problem(await http.post(f"/v1/deals/{deals['A']}/cancel", json=cancel, headers=keys["ops"]), 409)  # a new one: closed

    mail = await http.get(f"/v1/deals/{deals['B']}/emails", headers=keys["ops"])
    assert mail.status_code == 200 and mail.json() == []  # nothing due yet on an open deal
    assert_problem(await http.get(f"/v1/deals/{deals['B']}/emails", headers=keys["B"]), 403)  # a partner's own deal: ops only
    assert_problem(await http.get(f"/v1/deals/{deals['B']}/emails", headers=keys["A"]), 404)  # not its own: not there
