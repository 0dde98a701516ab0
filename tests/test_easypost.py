"""A real carrier through EasyPost (issue 16), the real `easypost` client driven against a local
stand-in of EasyPost's API (tests/easypost_standin.py), with the worker on the dev server and the API
over HTTP: booking, an invalid address, an outage and lost answers, webhooks signed good, bad and
stale, lost webhooks recovered by the tracking poll's schedule, and cancelling a deal."""

import asyncio
import json
import time
from datetime import date, datetime, timedelta, timezone

import pytest
from pydantic import SecretStr
from temporalio.service import RPCError

from activities.easypost_carrier import estimate_parcel, parse_address, pickup_window, tracker_events
from activities.tracking_poll import PollSummary
from domain.catalog import default_catalog
from settings import Settings
from store.db import session_scope
from store.tables import CarrierPickup
from tests.api_helpers import WEBHOOK_SECRET, api_client, booking_body, eventually, key
from tests.conftest import add_partner, make_settings, running_worker
from tests.deal_helpers import outbox
from tests.easypost_payloads import DOCS_TRACKER, DOCS_TRACKER_UPDATED, signed, tracker_updated
from tests.easypost_standin import UNDELIVERABLE_ZIP, EasyPostStandIn
from workflows.tracking_poll import ensure_tracking_poll_schedule, schedule_id

EASYPOST_SECRET = "ep-webhook-secret-for-the-tests"
RETURNS = {"company": "Takeback Returns", "street1": "6400 Northwest Dr", "city": "Mississauga", "state": "ON", "zip": "L4V 1K1", "country": "CA", "phone": "905 555 0100"}
ADDRESS = "417 Montgomery St\nFloor 5\nSan Francisco, CA 94104\nUS"
TODAY = datetime.now(timezone.utc).date().isoformat()


def pickup_body(address: str = ADDRESS, units: int = 3) -> dict:
    return {"address": address, "contact_name": "Sam Ortiz", "contact_phone": "+1 415 555 0100", "ready_on": TODAY, "expected_units": units}


@pytest.fixture
def standin():
    server = EasyPostStandIn()
    yield server
    server.close()


def easypost_settings(tmp_path, standin: EasyPostStandIn, dev_server_env, **overrides) -> Settings:
    values = dict(
        carrier="easypost", easypost_api_key=standin.api_key, easypost_webhook_secret=EASYPOST_SECRET, easypost_api_base=standin.url,
        returns_address=RETURNS, carrier_webhook_secret=WEBHOOK_SECRET, temporal_address=dev_server_env.client.service_client.config.target_host,
    )
    return make_settings(tmp_path, **{**values, **overrides})


async def booked_deal(http, ops) -> str:
    r = await http.post("/v1/deals", json=booking_body("P1", 10), headers=ops)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def booking_row(settings, pickup_id: str) -> CarrierPickup | None:
    with session_scope(settings.effective_database_url) as session:
        return session.get(CarrierPickup, pickup_id)


async def webhook(http, event: dict, secret: str = EASYPOST_SECRET, headers: dict | None = None):
    body, signature = signed(event, secret)
    return await http.post("/v1/carrier-events/easypost", content=body, headers=headers if headers is not None else signature)


# --- what a booking is made of ------------------------------------------------------------------


def test_the_address_parcel_and_window_a_booking_sends():
    assert parse_address(ADDRESS, "CA") == {"street1": "417 Montgomery St", "street2": "Floor 5", "city": "San Francisco", "state": "CA", "zip": "94104", "country": "US"}
    # One line, no country: the deal's customer country; a Canadian postal code with its province.
    assert parse_address("6400 Northwest Dr, Mississauga, ON L4V 1K1", "ca") == {"street1": "6400 Northwest Dr", "city": "Mississauga", "state": "ON", "zip": "L4V 1K1", "country": "CA"}
    for unreadable in ("1 Main St", "1 Main St, Toronto", "1 Main St, Toronto, Ontario"):
        with pytest.raises(ValueError, match="postal code"):
            parse_address(unreadable, "CA")

    catalog = default_catalog()
    committed = [("C9300-48P", 10), ("WS-C2960X-48FPD-L", 10)]  # 7.9 kg and 6.8 kg a unit in domain/catalog.csv
    assert estimate_parcel(committed, 4, catalog).model_dump() == {"kind": "parcel", "weight_kg": 29.4}
    heavy = estimate_parcel(committed, 20, catalog)  # 147 kg: more than one parcel may weigh, so a pallet (with its tare)
    assert heavy.model_dump() == {"kind": "pallet", "weight_kg": 172.0} and heavy.as_easypost()["length"] == 48
    assert estimate_parcel([("NOT-IN-CATALOG", 2)], 2, catalog).weight_kg == 2 * catalog.default_weight_kg

    # Three business days from ready_on: a Friday runs to Tuesday, a Saturday starts on Monday.
    assert pickup_window(date(2026, 12, 4)) == (date(2026, 12, 4), date(2026, 12, 8))
    assert pickup_window(date(2026, 12, 5)) == (date(2026, 12, 7), date(2026, 12, 9))
    assert pickup_window(date(2026, 12, 1)) == (date(2026, 12, 1), date(2026, 12, 3))


def test_tracker_events_from_the_documented_payloads():
    events = tracker_events(DOCS_TRACKER_UPDATED["result"])
    assert [(e.status.value, e.occurred_at.isoformat()) for e in events] == [
        ("pre_transit", "2014-08-21T14:24:00+00:00"), ("in_transit", "2014-08-21T14:48:00+00:00"), ("delivered", "2014-08-24T15:33:00+00:00"),
    ]
    assert all(e.tracking_number == "EZ4000000004" for e in events) and len({e.event_id for e in events}) == 3
    # The same tracker read again (the poll after a webhook) makes the same events: recorded once.
    assert [e.event_id for e in tracker_events(json.loads(json.dumps(DOCS_TRACKER_UPDATED["result"])))] == [e.event_id for e in events]
    assert [e.status.value for e in tracker_events(DOCS_TRACKER)] == ["pre_transit"]
    assert tracker_events({**DOCS_TRACKER, "status": "unknown", "tracking_details": []}) == []  # EasyPost knows nothing yet


def test_easypost_selected_but_unconfigured_refuses_to_start(monkeypatch):
    problems = Settings(carrier="easypost", env="development").startup_problems()
    assert any("EASYPOST_API_KEY" in p for p in problems)
    assert any("EASYPOST_WEBHOOK_SECRET" in p for p in problems)
    assert any("TAKEBACK_RETURNS_ADDRESS" in p for p in problems)
    assert not Settings(env="development").startup_problems()  # the simulated carrier, the default, needs none of it
    stepping = Settings(carrier="easypost", env="development", easypost_api_key="k", easypost_webhook_secret="s", returns_address=RETURNS, sim_carrier_step="5s")
    assert [p for p in stepping.startup_problems() if "SIM_CARRIER_STEP" in p]

    monkeypatch.setenv("TAKEBACK_CARRIER", "easypost")
    monkeypatch.setenv("EASYPOST_API_KEY", "EZAK-live-key-never-printed")
    monkeypatch.setenv("EASYPOST_WEBHOOK_SECRET", "short")
    monkeypatch.setenv("TAKEBACK_RETURNS_ADDRESS", json.dumps(RETURNS))
    production = Settings(env="production")
    carrier_problems = production.carrier_problems()
    assert carrier_problems == ["EASYPOST_WEBHOOK_SECRET must be at least 32 random bytes: openssl rand -hex 32"]
    assert isinstance(production.easypost_api_key, SecretStr) and "EZAK-live-key-never-printed" not in repr(production) + str(production.model_dump())
    monkeypatch.setenv("EASYPOST_WEBHOOK_SECRET", "9f2c1e7a4b8d0f3e6a5c2b9d8e7f1a0c")
    assert Settings(env="production").carrier_problems() == []


# --- booking --------------------------------------------------------------------------------------


async def test_a_pickup_is_booked_through_easypost_with_its_label(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops, partner = key(settings), key(settings, "partner", "P1")
        deal_id = await booked_deal(http, ops)
        r = await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(units=3), headers=partner)
        assert r.status_code == 201, r.text
        pickup = r.json()
        assert pickup["status"] == "scheduled" and pickup["carrier"] == "EasyPost/UPS" and pickup["tracking_number"].startswith("1Z")
        view = (await http.get(f"/v1/deals/{deal_id}", headers=partner)).json()
        assert view["pickups"] == [pickup]

        booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}", headers=partner)).json()
        assert booking["provider"] == "easypost" and booking["booking_state"] == "booked" and booking["attempts"] == 1 and booking["last_error"] is None
        assert booking["parcel_kind"] == "parcel" and booking["weight_kg"] == 23.7  # 3 of the deal's C9300-48P, 7.9 kg each
        assert booking["window_start"] == pickup_window(date.fromisoformat(TODAY))[0].isoformat()
        assert booking["window_end"] == pickup_window(date.fromisoformat(TODAY))[1].isoformat() and booking["confirmation"].startswith("WTC")
        label = (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}/label", headers=partner)).json()
        assert label["label_url"].endswith(".pdf") and label["label_format"] == "PDF" and label["tracking_number"] == pickup["tracking_number"]
        add_partner(settings, "P2", "p2@example.com")
        other = key(settings, "partner", "P2")
        assert (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}/label", headers=other)).status_code == 404

    reference = f"takeback-{pickup['id']}"
    shipment = next(s for s in standin.shipments.values() if s["reference"] == reference)
    assert shipment["to_address"]["street1"] == RETURNS["street1"]  # from the customer to the returns address
    assert shipment["from_address"]["street1"] == "417 MONTGOMERY ST" and shipment["from_address"]["name"] == "Sam Ortiz"  # as EasyPost verified it
    assert shipment["parcel"]["weight"] == round(23.7 * 35.274, 1) and shipment["options"]["label_format"] == "PDF"
    assert shipment["selected_rate"]["service"] == "Ground"  # the cheapest rate
    provider_pickup = standin.pickup_by_reference(reference)
    assert (provider_pickup["status"], provider_pickup["carrier"], provider_pickup["service"]) == ("scheduled", "UPS", "Future-day Pickup")  # the label's carrier, cheapest
    assert provider_pickup["min_datetime"] == f"{booking['window_start']}T09:00:00" and provider_pickup["max_datetime"] == f"{booking['window_end']}T17:00:00"
    assert [standin.done[(what, reference)] for what in ("shipment", "label", "pickup", "pickup_bought")] == [1, 1, 1, 1]


async def test_an_address_the_carrier_cannot_deliver_to_is_a_422_before_the_deal_is_asked(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        r = await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(f"1 Nowhere Rd, Springfield, IL {UNDELIVERABLE_ZIP}, US"), headers=ops)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        problem = r.json()
        assert problem["type"].endswith("/address-unverified") and "Address not found" in problem["detail"]
        assert problem["errors"] == [{"field": "address", "code": "E.ADDRESS.NOT_FOUND", "message": "Address not found"}]
        r = await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body("1 Main St, Toronto"), headers=ops)  # no postal code: not even asked
        assert r.status_code == 422 and r.json()["type"].endswith("/address-unverified") and "postal code" in r.json()["detail"]
        # The deal was never asked: no pickup on it, no shipment at the provider.
        assert (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"] == []
        assert standin.count("POST", "shipment_create") == 0 and standin.count("POST", "address_create") == 1

        standin.down = True  # EasyPost cannot be asked: nothing is booked, the partner is told to come back
        r = await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(), headers=ops)
        assert r.status_code == 503 and r.json()["type"].endswith("/carrier-unavailable") and r.headers["retry-after"] == "30"
        assert (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"] == []


async def test_the_simulated_carrier_stays_the_default(dev_server_env, tmp_path):
    settings = make_settings(tmp_path, temporal_address=dev_server_env.client.service_client.config.target_host)
    assert settings.carrier == "sim"
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        pickup = (await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body("1 Main St"), headers=ops)).json()  # no address check
        assert pickup["carrier"] == "SimCarrier" and pickup["tracking_number"].startswith("SIM")
        booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}", headers=ops)).json()
        assert booking["provider"] == "sim" and booking["booking_state"] == "booked"
        r = await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}/label", headers=ops)
        assert r.status_code == 404 and r.json()["type"].endswith("/label-not-available")
        r = await webhook(http, tracker_updated(DOCS_TRACKER))  # without EasyPost's secret its webhook is not there
        assert r.status_code == 404 and r.json()["type"].endswith("/webhook-not-enabled")


async def test_an_outage_is_retried_visibly_and_the_pickup_booked_once(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        standin.failing = {"shipment_create"}  # EasyPost's shipments are down after the address was checked
        request = asyncio.create_task(http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(), headers=ops))

        async def failing_visibly():
            rows = (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"]
            if not rows:
                return None
            booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{rows[0]['id']}", headers=ops)).json()
            return (rows, booking) if booking["attempts"] >= 2 else None

        rows, booking = await eventually(failing_visibly, what="two failed booking attempts")
        assert rows[0]["status"] == "booking"  # on the deal while the provider is down ...
        assert booking["booking_state"] == "booking" and "HTTP 503" in booking["last_error"] and "SERVICE.UNAVAILABLE" in booking["last_error"]  # ... with why
        as_partner = (await http.get(f"/v1/deals/{deal_id}/pickups/{rows[0]['id']}", headers=key(settings, "partner", "P1"))).json()
        assert as_partner["booking_state"] == "booking" and "being retried" in as_partner["last_error"] and "503" not in as_partner["last_error"]
        standin.failing = set()
        r = await request
        assert r.status_code == 201, r.text
        pickup = r.json()
        assert pickup["status"] == "scheduled" and pickup["tracking_number"]
        booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}", headers=ops)).json()
        assert booking["booking_state"] == "booked" and booking["last_error"] is None and booking["attempts"] >= 3
    reference = f"takeback-{pickup['id']}"
    assert [standin.done[(what, reference)] for what in ("shipment", "label", "pickup", "pickup_bought")] == [1, 1, 1, 1]


async def test_a_retried_booking_whose_answers_were_lost_never_books_twice(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        # Each of these is done by EasyPost, but its answer never reaches us: the attempt fails, and its
        # retry must find what was made (by reference, or by reading the object) instead of making it again.
        for route in ("shipment_create", "shipment_buy", "pickup_create", "pickup_buy"):
            standin.lose_answer[("POST", route)] = 1
        r = await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(), headers=ops)
        assert r.status_code == 201, r.text
        pickup = r.json()
        booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{pickup['id']}", headers=ops)).json()
        # A lost creation costs an attempt (its retry finds the object by reference); a lost purchase is read back at once.
        assert booking["booking_state"] == "booked" and booking["attempts"] == 3
    reference = f"takeback-{pickup['id']}"
    assert [standin.done[(what, reference)] for what in ("shipment", "label", "pickup", "pickup_bought")] == [1, 1, 1, 1]
    assert standin.count("POST", "shipment_buy") == 1 and standin.count("POST", "pickup_buy") == 1  # bought once: the retries read it back
    assert pickup["tracking_number"] == next(s for s in standin.shipments.values() if s["reference"] == reference)["tracking_code"]


# --- tracking -------------------------------------------------------------------------------------


async def test_webhooks_signed_good_bad_and_stale(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env, easypost_webhook_secret=f"an-older-secret,{EASYPOST_SECRET}")
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        pickup = (await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(), headers=ops)).json()
        code = pickup["tracking_number"]

        async def status() -> str:
            return (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"][0]["status"]

        event = tracker_updated(standin.advance(code, "in_transit", "ORIGIN SCAN"), previous_status="pre_transit")
        r = await webhook(http, event)
        assert r.status_code == 200 and r.json() == {"status": "accepted", "events": 2, "applied": 2, "repeated": 0}, r.text
        assert await status() == "in_transit"
        r = await webhook(http, event)  # EasyPost sends at least once: the same event again changes nothing
        assert r.status_code == 200 and r.json()["applied"] == 0 and r.json()["repeated"] == 2
        r = await webhook(http, event, secret="an-older-secret")  # either secret of a rotation verifies
        assert r.status_code == 200

        forged = tracker_updated(standin.advance(code, "delivered", "DELIVERED"), previous_status="in_transit")
        for headers, kind in (
            ({"X-Hmac-Signature": signed(forged, "not-the-secret")[1]["X-Hmac-Signature"]}, "signature-invalid"),
            ({}, "signature-missing"),
            ({"X-Hmac-Signature": "hmac-sha256-hex=" + "0" * 64}, "signature-invalid"),
        ):
            r = await http.post("/v1/carrier-events/easypost", content=json.dumps(forged).encode(), headers=headers)
            assert r.status_code == 401 and r.json()["type"].endswith(f"/{kind}") and r.headers["content-type"] == "application/problem+json"
        body, headers = signed(forged, EASYPOST_SECRET)
        r = await http.post("/v1/carrier-events/easypost", content=body + b" ", headers=headers)  # a byte changed after signing
        assert r.status_code == 401 and r.json()["type"].endswith("/signature-invalid")
        # The documented sample as published, correctly signed, is from 2014: stale, refused.
        r = await webhook(http, DOCS_TRACKER_UPDATED)
        assert r.status_code == 401 and r.json()["type"].endswith("/signature-stale")
        stale = {**forged, "created_at": "2026-01-01T00:00:00Z", "updated_at": (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        r = await webhook(http, stale)
        assert r.status_code == 401 and r.json()["type"].endswith("/signature-stale")
        assert await status() == "in_transit"  # nothing refused moved the shipment

        # The documented sample, as EasyPost sends it today: fresh, for our tracking number.
        sample = tracker_updated({**DOCS_TRACKER_UPDATED["result"], "tracking_code": code}, previous_status="in_transit")
        r = await webhook(http, sample)
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        await eventually(lambda: _is(status, "delivered"), what="delivered")
        late = tracker_updated({**DOCS_TRACKER_UPDATED["result"], "tracking_code": code, "status": "in_transit", "tracking_details": DOCS_TRACKER_UPDATED["result"]["tracking_details"][:2]})
        assert (await webhook(http, late)).status_code == 200 and await status() == "delivered"  # never backwards

        not_ours = tracker_updated({**DOCS_TRACKER_UPDATED["result"], "tracking_code": "EZ4000000004"})
        r = await webhook(http, not_ours)  # acknowledged, so EasyPost does not retry it for ever
        assert r.status_code == 200 and r.json()["status"] == "ignored"
        batch = {**event, "description": "batch.created", "result": {"id": "batch_1", "object": "Batch"}}
        assert (await webhook(http, batch)).json()["status"] == "ignored"


async def _is(read, value) -> bool:
    return await read() == value


async def test_a_failure_reported_by_webhook_is_escalated_to_the_partner(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        pickup = (await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(), headers=ops)).json()
        event = tracker_updated(standin.advance(pickup["tracking_number"], "failure", "PICKUP ATTEMPTED: BUSINESS CLOSED"))
        assert (await webhook(http, event)).status_code == 200

        async def escalated():
            return [name for name in outbox(settings) if "escalation" in name]

        mails = await eventually(escalated, what="the escalation e-mail")
        assert len(mails) == 1
        assert (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"][0]["status"] == "failure"


async def test_lost_webhooks_are_recovered_by_the_tracking_poll_schedule(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env, easypost_poll_every="1h")
    client = dev_server_env.client
    async with running_worker(client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        pickups = [(await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(units=2), headers=ops)).json() for _ in range(2)]
        # The carrier moved both; none of EasyPost's webhooks reached us.
        standin.advance(pickups[0]["tracking_number"], "in_transit", "ORIGIN SCAN")
        standin.advance(pickups[0]["tracking_number"], "delivered", "DELIVERED")
        standin.advance(pickups[1]["tracking_number"], "return_to_sender", "RETURNED TO SHIPPER")

        handle = await ensure_tracking_poll_schedule(client, settings)
        try:
            again = await ensure_tracking_poll_schedule(client, settings.model_copy(update={"easypost_poll_every": "30m"}))  # a second worker starting
            assert again.id == handle.id == schedule_id(settings.task_queue)
            description = await handle.describe()
            assert description.schedule.spec.intervals[0].every == timedelta(minutes=30)  # one schedule, brought to the current interval
            await handle.trigger()

            async def recovered():
                statuses = [p["status"] for p in (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"]]
                return statuses if statuses == ["delivered", "return_to_sender"] else None

            await eventually(recovered, what="the poll to bring the lost news")
            await eventually(lambda: _escalations(settings), what="the return to sender escalated")
            action = (await handle.describe()).info.recent_actions[-1].action
            result = await client.get_workflow_handle(action.workflow_id, run_id=action.first_execution_run_id, result_type=PollSummary).result()
            # Both trackers read; the news the webhooks never brought: label created, in transit, delivered; label created, returned.
            assert (result.trackers, result.events, result.applied, result.errors) == (2, 5, 5, [])
        finally:
            await handle.delete()


async def _escalations(settings) -> bool:
    return any("escalation" in name for name in outbox(settings))


async def test_cancelling_a_deal_cancels_its_pickups_not_yet_collected(dev_server_env, tmp_path, standin):
    settings = easypost_settings(tmp_path, standin, dev_server_env)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deal_id = await booked_deal(http, ops)
        waiting, collected, refused = [(await http.post(f"/v1/deals/{deal_id}/pickups", json=pickup_body(units=2), headers=ops)).json() for _ in range(3)]
        event = tracker_updated(standin.advance(collected["tracking_number"], "in_transit", "PICKUP SCAN"))
        assert (await webhook(http, event)).status_code == 200
        # The provider refuses to cancel the third one right now (an outage of its pickups).
        provider_refused = standin.pickup_by_reference(f"takeback-{refused['id']}")["id"]
        original = standin.pickup_cancel

        def cancel_some(params, key):
            if key == provider_refused:
                from tests.easypost_standin import ApiError

                raise ApiError(503, "SERVICE.UNAVAILABLE", "try again later")
            return original(params, key)

        standin.pickup_cancel = cancel_some
        r = await http.post(f"/v1/deals/{deal_id}/cancel", json={"reason": "customer withdrew the refresh"}, headers=ops)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        async def cancelled_with_the_provider():
            return standin.done[("pickup_cancelled", f"takeback-{waiting['id']}")] == 1 and booking_row(settings, refused["id"]).state == "cancel_requested"

        await eventually(cancelled_with_the_provider, what="the open pickup cancelled with EasyPost")
        statuses = {p["id"]: p["status"] for p in (await http.get(f"/v1/deals/{deal_id}", headers=ops)).json()["pickups"]}
        assert statuses == {waiting["id"]: "cancelled", collected["id"]: "in_transit", refused["id"]: "scheduled"}
        assert standin.pickup_by_reference(f"takeback-{collected['id']}")["status"] == "scheduled"  # on its way already: left alone
        assert "HTTP 503" in booking_row(settings, refused["id"]).last_error  # the refusal, kept for the poll to finish

        standin.pickup_cancel = original  # the provider is back: the next tracking poll cancels it
        handle = await ensure_tracking_poll_schedule(dev_server_env.client, settings)
        try:
            await handle.trigger()
            await eventually(lambda: _state(settings, refused["id"], "cancelled"), what="the poll to finish the cancellation")
        finally:
            await handle.delete()
        assert standin.done[("pickup_cancelled", f"takeback-{refused['id']}")] == 1
        booking = (await http.get(f"/v1/deals/{deal_id}/pickups/{refused['id']}", headers=ops)).json()
        assert booking["booking_state"] == "cancelled" and booking["status"] == "cancelled" and booking["last_error"] is None


async def _state(settings, pickup_id: str, state: str) -> bool:
    return booking_row(settings, pickup_id).state == state


async def test_takeback_worker_refuses_easypost_unconfigured_and_creates_the_poll_schedule_when_configured(dev_server_env, tmp_path, standin):
    import os
    import signal
    import subprocess
    import sys
    import uuid

    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, TEMPORAL_ADDRESS=dev_server_env.client.service_client.config.target_host, TAKEBACK_DATA_DIR=str(tmp_path),
               TAKEBACK_TASK_QUEUE=task_queue, TAKEBACK_CARRIER="easypost", EASYPOST_API_BASE=standin.url, TAKEBACK_EASYPOST_POLL_EVERY="15m")
    refused = subprocess.run([sys.executable, "-m", "cli", "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "EASYPOST_API_KEY" in refused.stderr and "TAKEBACK_RETURNS_ADDRESS" in refused.stderr

    env.update(EASYPOST_API_KEY=standin.api_key, EASYPOST_WEBHOOK_SECRET=EASYPOST_SECRET, TAKEBACK_RETURNS_ADDRESS=json.dumps(RETURNS))
    worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, stderr=subprocess.PIPE, text=True)
    handle = dev_server_env.client.get_schedule_handle(schedule_id(task_queue))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "worker polling" not in worker.stderr.readline():
            pass
        for _ in range(100):  # made once the worker polls (it runs the schedule's first poll)
            try:
                description = await handle.describe()
                break
            except RPCError:  # not made yet
                await asyncio.sleep(0.1)
        assert description.schedule.spec.intervals[0].every == timedelta(minutes=15)
        assert description.schedule.action.task_queue == task_queue and description.schedule.action.workflow == "TrackingPollWorkflow"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        logged = worker.stderr.read()
        assert standin.api_key not in logged and EASYPOST_SECRET not in logged
    finally:
        if worker.poll() is None:
            worker.kill()
        await handle.delete()
