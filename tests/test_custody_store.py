"""Custody events in the store (issue 14), on SQLite and PostgreSQL: each written once by the store code
behind booking, pickups, carrier events and receipts, however often a retried activity runs it."""

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import select

from domain.catalog import default_catalog
from domain.custody import SanitizationRequest
from domain.models import CarrierEvent, DealView, Dispositions, Incentive, PickupRequest, ReceiptItem
from service.deals import deal_terms
from store import custody
from store import deals as store
from store import settlement
from store.db import session_scope
from store.tables import Certificate, CertificateIssue, CustodyEvent
from tests.conftest import add_partner, booking, make_settings

NOW = datetime.now(timezone.utc).replace(microsecond=0)  # pickups are booked at the wall clock
ROUTER = "ISR4331/K9"


def kinds(url: str, serial: str) -> Counter:
    with session_scope(url) as session:
        return Counter(session.execute(select(CustodyEvent.kind).where(CustodyEvent.serial == serial)).scalars())


def closed_view(deal_id: str, received: int) -> DealView:
    return DealView(id=deal_id, partner_id="P1", status="closed", booked_at=NOW, return_deadline=NOW + timedelta(days=365), committed_units=2, required_units=2,
                    received_units=received, incentive=Incentive(mode="rebate", rate=Decimal("0.05"), amount=Decimal("5000.00"), status="released"),
                    dispositions=Dispositions(refresh=received))


def test_every_step_is_recorded_once_however_often_its_store_code_runs(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    add_partner(settings)
    request = booking(2, serials=["A", "B"], product_id=ROUTER)
    terms = deal_terms("D1", request, settings, booked_at=NOW)
    from domain.deal_progress import deal_view, initial_progress

    view = deal_view(terms, initial_progress(terms, NOW))
    pickup = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on=NOW.date(), expected_units=2)
    delivered = CarrierEvent(event_id="e1", tracking_number="TRK1", status="delivered", occurred_at=NOW + timedelta(days=2))
    items = [ReceiptItem(product_id=ROUTER, serial_number=s, condition="working", age_years=2) for s in ("A", "B", "A", "GREY")]
    context = {"actor": "ops:alice", "facility": "Toronto", "operator": "Rita", "tracking_number": "TRK1", "pickup_id": "D1-p1"}
    for attempt in range(2):  # the second time round is every activity retried after it wrote
        with session_scope(database_url) as session:
            assert store.stage_booking(session, "D1", request, terms, view, actor="partner:P1") is (attempt == 0)
            store.save_pickup(session, "D1-p1", "D1", "SimCarrier", "TRK1", pickup)
            assert store.record_carrier_event(session, delivered).repeated is (attempt == 1)
            counts = settlement.count_receipt(session, "D1", "b1", items, 5, default_catalog(), received_at=NOW + timedelta(days=3), context=context).counts
            assert (counts.accepted, counts.rejected) == (2, 2)
            store.close_deal(session, closed_view("D1", 2))
    assert kinds(database_url, "A") == {"committed": 1, "received": 1, "graded": 1, "rejected": 1}  # scanned twice in the batch
    assert kinds(database_url, "GREY") == {"rejected": 1}
    assert kinds(database_url, "") == {"pickup_booked": 1, "carrier": 1}
    with session_scope(database_url) as session:
        timeline = custody.timeline(session, "B")
        assert [e.kind for e in timeline.events] == ["committed", "pickup_booked", "carrier", "received", "graded"]
        assert [e.at for e in timeline.events][3] == NOW + timedelta(days=3)  # when the facility scanned it
        assert timeline.events[3].detail == {"value": ROUTER, "pickup_id": "D1-p1", "facility": "Toronto", "operator": "Rita", "tracking_number": "TRK1",
                                             "condition": "working", "age_years": 2.0, "batch_id": "b1"}
        grey = custody.timeline(session, "GREY").events[-1]
        assert (grey.kind, grey.detail["value"], grey.actor) == ("rejected", "not_listed", "ops:alice")
        assert custody.timeline(session, "B", partner_id="P2") is None  # not P2's: nothing to show
        assert session.execute(select(Certificate.status)).scalars().all() == ["provisional"]  # routers, unsanitized
        assert len(session.execute(select(CertificateIssue)).all()) == 1  # issued once


def test_a_sanitization_completing_a_closed_deal_issues_its_final_certificate_once(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    add_partner(settings)
    request = booking(2, serials=["A", "B"], product_id=ROUTER)
    terms = deal_terms("D1", request, settings, booked_at=NOW)
    from domain.deal_progress import deal_view, initial_progress

    with session_scope(database_url) as session:
        store.stage_booking(session, "D1", request, terms, deal_view(terms, initial_progress(terms, NOW)))
        settlement.count_receipt(session, "D1", "b1", [ReceiptItem(product_id=ROUTER, serial_number=s, condition="working", age_years=2) for s in ("A", "B")], 5, default_catalog(), received_at=NOW)
        store.close_deal(session, closed_view("D1", 2))
        provisional = session.get(Certificate, "D1")
        assert provisional.status == "provisional"

    def sanitize(serials, verification, source):
        body = SanitizationRequest(serial_numbers=serials, method="purge", technique="crypto erase", tool="t", tool_version="1", operator="o", facility="f",
                                   at=NOW + timedelta(days=4), verification=verification, verified_by="v")
        with session_scope(database_url) as session:
            custody.record_sanitization(session, "D1", body, "ops:alice", source)
            return custody.certify_if_complete(session, "D1", default_catalog())

    assert sanitize(["A"], "passed", "s1") is False  # B still outstanding
    assert sanitize(["B"], "failed", "s2") is False  # B failed its verification: still blocked
    assert sanitize(["B"], "passed", "s3") is True
    assert sanitize(["B"], "passed", "s3") is False  # the same request again: recorded once, issued once
    with session_scope(database_url) as session:
        final = session.get(Certificate, "D1")
        content = json.loads(final.content_json)
        issues = {i.certificate_id: i for i in session.execute(select(CertificateIssue)).scalars()}
        assert session.execute(select(CustodyEvent).where(CustodyEvent.serial == "B", CustodyEvent.kind == "sanitized")).scalars().all().__len__() == 2
    assert final.status == "final" and content["sanitization"]["complete"] is True and final.certificate_id != provisional.certificate_id
    assert issues[provisional.certificate_id].superseded_at is not None and issues[final.certificate_id].superseded_at is None
    with session_scope(database_url) as session:
        assert custody.verify(session, final.certificate_id, final.content_hash)["valid"] is True
        assert custody.verify(session, final.certificate_id, provisional.content_hash)["valid"] is False


def test_a_certificate_reads_back_from_its_parts_slice_by_slice(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(custody, "PART_CHARS", 97)  # many parts, items split across them
    settings = make_settings(tmp_path, database_url=database_url)
    add_partner(settings)
    request = booking(3, serials=["A", "B", "C"], product_id="SFP-10G-SR")  # carries no data: final at once
    terms = deal_terms("D1", request, settings, booked_at=NOW)
    from domain.deal_progress import deal_view, initial_progress

    with session_scope(database_url) as session:
        store.stage_booking(session, "D1", request, terms, deal_view(terms, initial_progress(terms, NOW)))
        settlement.count_receipt(session, "D1", "b1", [ReceiptItem(product_id="SFP-10G-SR", serial_number=s, condition="working", age_years=2) for s in ("A", "B", "C")], 5, default_catalog(), received_at=NOW)
        store.close_deal(session, closed_view("D1", 3))
        stored = session.get(Certificate, "D1")
    assert stored.status == "final" and len(stored.content_json) > 10 * 97
    text = custody.certificate_text(database_url, stored.certificate_id, "D1")
    assert "".join(text.chunks()) == stored.content_json
    assert list(text.items()) == json.loads(stored.content_json)["items"] and text.fields["units_received"] == 3
