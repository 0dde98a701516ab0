"""Minor, webhook: a malformed `Takeback-Signature` is a 401 problem, never a 500; several `v1`
values and several secrets are accepted during a rotation; a carrier's event ids are scoped to
their tracking number (the same id on two tracking numbers is two events)."""

import hashlib
import hmac
import json
import secrets
import time

import pytest

from domain.models import CarrierEvent, PickupRequest
from store import deals as store
from store.db import session_scope
from tests.api_helpers import api_client
from tests.conftest import make_settings
from tests.postgres import _free_port

OLD, NEW = secrets.token_hex(32), secrets.token_hex(32)
EVENT = {"event_id": "evt-1", "tracking_number": "SIMNOSUCHPICKUP", "status": "in_transit", "occurred_at": "2026-12-02T10:00:00Z"}
RAW = json.dumps(EVENT).encode()


def v1(secret: str, t: str, body: bytes = RAW) -> str:
    return hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()


@pytest.fixture
async def http(tmp_path):
    # Temporal is not there: the route reaches the store only once the signature is good, and an
    # unknown tracking number is then a 404. So 404 means "signature accepted", 401 "refused".
    settings = make_settings(tmp_path, carrier_webhook_secret=f"{NEW},{OLD}", temporal_address=f"127.0.0.1:{_free_port()}")
    async with api_client(settings) as client:
        yield client


async def post(http, signature: bytes | str):
    return await http.post("/v1/carrier-events", content=RAW, headers={"Content-Type": "application/json", "Takeback-Signature": signature})


def now() -> str:
    return str(int(time.time()))


@pytest.mark.parametrize("header", [
    "t=\xb2,v1=" + "0" * 64,  # SUPERSCRIPT TWO: a digit to str.isdigit(), not to int()
    "t=\xb9\xb2\xb3,v1=" + "0" * 64,
    "t=" + "9" * 5000 + ",v1=" + "0" * 64,  # past int()'s 4,300-digit limit
    "t=-5,v1=" + "0" * 64,
    "t=1e9,v1=" + "0" * 64,
    "t={now},v1=" + "z" * 64,  # not hex
    "t={now},v1=" + "\xe9" * 64,  # not ASCII: compare_digest raised TypeError
    "t={now},v1=",
    "t={now}",
    "t={now},t={now},v1=" + "0" * 64,
    ",,,=,==",
    "t=,v1=,",
])
async def test_a_malformed_signature_is_a_401_problem_never_a_500(http, header):
    response = await post(http, header.replace("{now}", now()).encode("latin-1"))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 401


async def test_several_v1_values_and_several_secrets_are_accepted_during_a_rotation(http):
    t = now()
    wrong = v1(secrets.token_hex(32), t)
    # The carrier signs with the old and the new secret during the overlap: either may come first.
    assert (await post(http, f"t={t},v1={v1(NEW, t)},v1={wrong}")).status_code == 404
    assert (await post(http, f"t={t},v1={wrong},v1={v1(OLD, t)}")).status_code == 404
    # The server lists both secrets: a carrier still on the old one, or already on the new, passes.
    assert (await post(http, f"t={t},v1={v1(OLD, t)}")).status_code == 404
    assert (await post(http, f"t={t},v1={v1(NEW, t)}")).status_code == 404
    assert (await post(http, f"t={t},v1={wrong}")).status_code == 401
    assert (await post(http, f"t={t},v0={v1(NEW, t)}")).status_code == 401  # another scheme is not a v1


def test_event_ids_are_scoped_to_their_tracking_number(database_url, tmp_path):
    from tests.test_store import NOW, setup_store, stage
    from tests.conftest import booking

    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(4))
    request = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on="2026-12-01", expected_units=2)
    with session_scope(database_url) as session:
        store.save_pickup(session, "D1-p1", "D1", "Sim", "TRACK-A", request)
        store.save_pickup(session, "D1-p2", "D1", "Sim", "TRACK-B", request)

    def record(tracking: str, status: str = "in_transit"):
        with session_scope(database_url) as session:
            return store.record_carrier_event(session, CarrierEvent(event_id="evt-1", tracking_number=tracking, status=status, occurred_at=NOW))

    first, second = record("TRACK-A"), record("TRACK-B")
    assert (first.pickup_id, first.applied, first.repeated) == ("D1-p1", True, False)
    assert (second.pickup_id, second.applied, second.repeated) == ("D1-p2", True, False)  # another pickup's event, not a replay
    again = record("TRACK-B")
    assert again.repeated and again.applied  # a redelivery is still one event
    with session_scope(database_url) as session:
        assert store.find_pickup_by_tracking(session, "TRACK-B").status == "in_transit"


def test_an_event_recorded_before_scoping_is_still_a_repeat(database_url, tmp_path):
    """Rows written under the carrier's bare id (before this change) still deduplicate their redelivery."""
    from store.tables import ShipmentEvent
    from tests.conftest import booking
    from tests.test_store import NOW, setup_store, stage

    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(4))
    request = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on="2026-12-01", expected_units=2)
    with session_scope(database_url) as session:
        store.save_pickup(session, "D1-p1", "D1", "Sim", "TRACK-A", request)
        session.add(ShipmentEvent(event_id="legacy-1", tracking_number="TRACK-A", status="pre_transit", occurred_at=NOW, applied=True))
        session.commit()
    with session_scope(database_url) as session:
        legacy = store.record_carrier_event(session, CarrierEvent(event_id="legacy-1", tracking_number="TRACK-A", status="pre_transit", occurred_at=NOW))
        elsewhere = store.record_carrier_event(session, CarrierEvent(event_id="legacy-1", tracking_number="TRACK-B", status="pre_transit", occurred_at=NOW))
    assert legacy.repeated and elsewhere is None  # TRACK-B is no pickup of ours


# --- Issue 24, 3: EasyPost's X-Hmac-Signature, and the console's signed cookie ----------------------

EASYPOST_SECRET = secrets.token_hex(32)
EASYPOST = "/v1/carrier-events/easypost"


def easypost_api_settings(tmp_path, **overrides):
    # As above, Temporal is not there: an event signed right about a tracker that is not ours is answered 200 and ignored.
    return make_settings(tmp_path, easypost_webhook_secret=EASYPOST_SECRET, temporal_address=f"127.0.0.1:{_free_port()}", **overrides)


def easypost_event() -> tuple[bytes, dict]:
    from tests.easypost_payloads import DOCS_TRACKER, signed, tracker_updated

    return signed(tracker_updated(DOCS_TRACKER), EASYPOST_SECRET)


@pytest.mark.parametrize("header", [
    "hmac-sha256-hex=" + "\xe9" * 64,  # compare_digest raised TypeError on non-ASCII text: a 500 with a traceback
    "hmac-sha256-hex=\xff",
    "\xe9",
])
async def test_a_non_ascii_easypost_signature_is_a_401_problem_never_a_500(tmp_path, header):
    body, _ = easypost_event()
    async with api_client(easypost_api_settings(tmp_path)) as http:
        response = await http.post(EASYPOST, content=body, headers={"Content-Type": "application/json", "X-Hmac-Signature": header.encode("latin-1")})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json") and response.json()["type"].endswith("/signature-invalid")


async def test_bad_easypost_signatures_spend_the_addresss_failed_authentication_budget(tmp_path):
    """Before: X-Hmac-Signature was no credential to the rate limit, so forging it cost nothing (and its 401s were free)."""
    body, good = easypost_event()
    async with api_client(easypost_api_settings(tmp_path, rate_failed_auth=0.01, rate_failed_auth_burst=3)) as http:
        accepted = await http.post(EASYPOST, content=body, headers=good)
        assert accepted.status_code == 200 and accepted.json()["status"] == "ignored", accepted.text  # a good one spends nothing
        for forged in ("hmac-sha256-hex=" + "0" * 64, "hmac-sha256-hex=" + "\xe9" * 64, "sha1=abc"):
            refused = await http.post(EASYPOST, content=body, headers={"Content-Type": "application/json", "X-Hmac-Signature": forged.encode("latin-1")})
            assert refused.status_code == 401, refused.text
        locked = await http.post(EASYPOST, content=body, headers=good)  # the address spent its 3: refused before any check
        assert locked.status_code == 429 and locked.json()["type"].endswith("/rate-limited") and int(locked.headers["Retry-After"]) >= 1, locked.text


async def test_a_console_cookie_with_a_non_ascii_signature_is_no_session_never_a_500(tmp_path):
    """The console's session cookie is HMAC-signed too: a forged one with non-ASCII text was a TypeError (a 500)."""
    async with api_client(make_settings(tmp_path)) as http:
        for cookie in ("e30.\xe9\xe9", "e30." + "\xff" * 43):
            response = await http.get("/console/deals", headers={"Cookie": f"takeback_console={cookie}".encode("latin-1")})
            assert response.status_code == 303 and "/console/sign-in" in response.headers["location"], response.text


@pytest.mark.parametrize("change", [
    {"tracking_details": ["delivered", 1]},
    {"tracking_details": "delivered"},
    {"tracking_details": [{"status": "delivered", "datetime": 1700000000}]},
    {"status": ["delivered"]},
    {"updated_at": 1700000000},
])
async def test_a_signed_tracker_of_the_wrong_shape_is_a_422_never_a_500(tmp_path, change):
    """Before: a tracker EasyPost's signature covers, but not of EasyPost's schema (a list for a status, a number for
    a time), was a 500 with a traceback; only a ValueError was answered 422."""
    from tests.easypost_payloads import DOCS_TRACKER, signed, tracker_updated

    body, headers = signed(tracker_updated({**DOCS_TRACKER, **change}), EASYPOST_SECRET)
    async with api_client(easypost_api_settings(tmp_path)) as http:
        response = await http.post(EASYPOST, content=body, headers=headers)
    assert response.status_code == 422 and response.json()["type"].endswith("/validation-error"), response.text
