"""A deal's page: its header and its timeline from the store, newest first; the review step of an
action; the impact page's charts (no browser, no workflow engine: the deal has closed)."""

import json
import re
from datetime import timedelta
from decimal import Decimal

from domain.models import PickupView
from store.db import session_scope
from store.tables import (
    AuditEvent, Certificate, DealExtension, EmailMessage, IncentiveLedger, Pickup, ReceiptBatch, ReceiptRejection, ReminderSent, ReturnedItem, Settlement,
    ShipmentEvent,
)
from tests.api_helpers import api_client
from tests.conftest import make_settings
from tests.console.seed import NOW, api_key, deal, sign_in

T0 = NOW - timedelta(days=20)


def seed_story(settings, ops_key_id: int) -> None:
    """A deal's life, one row of each kind: booked, a pickup tracked, a receipt, a reminder and its
    mail, an extension and a refused one, then cancelled by ops, with the money and a certificate."""
    deal(settings, "DSTORY", "P1", status="cancelled", received=2, booked=T0, deadline=T0 + timedelta(days=40), incentive_status="cancelled",
         pickups=[PickupView(id="DSTORY-p1", status="delivered", carrier="SIM", tracking_number="SIM123")], closed_reason="cancelled: duplicate booking")
    rows = [
        Pickup(id="DSTORY-p1", deal_id="DSTORY", carrier="SIM", tracking_number="SIM123", status="delivered", address="1 Main St", contact_name="Sam",
               contact_phone="+1 555", ready_on="2026-11-01", expected_units=3, created_at=T0 + timedelta(days=1)),
        ShipmentEvent(event_id="SIM123:e1", tracking_number="SIM123", status="in_transit", occurred_at=T0 + timedelta(days=2), applied=True, recorded_at=T0 + timedelta(days=2)),
        ShipmentEvent(event_id="SIM123:e2", tracking_number="SIM123", status="delivered", occurred_at=T0 + timedelta(days=3), applied=True, recorded_at=T0 + timedelta(days=3)),
        ReceiptBatch(id="DSTORY-r1", deal_id="DSTORY", items_json="[]", item_count=3, created_at=T0 + timedelta(days=4), processed_at=T0 + timedelta(days=4, minutes=1)),
        ReturnedItem(serial="FOC1", deal_id="DSTORY", batch_id="DSTORY-r1", product_id="C9300-48P", condition="working", age_years=2, disposition="refresh"),
        ReturnedItem(serial="FOC2", deal_id="DSTORY", batch_id="DSTORY-r1", product_id="C9300-48P", condition="dead", age_years=9, disposition="recycle"),
        ReceiptRejection(batch_id="DSTORY-r1", deal_id="DSTORY", position=2, serial="FOC1", reason="serial appears twice in this receipt"),
        ReminderSent(deal_id="DSTORY", offset_seconds=7 * 86400, deadline=T0 + timedelta(days=40), sent_at=T0 + timedelta(days=5)),
        EmailMessage(key="DSTORY:reminder:7d", deal_id="DSTORY", partner_id="P1", to="p1@partner.example", subject="Deal DSTORY: 6 units to return",
                     body="...", state="failed", attempts=3, last_error="550 mailbox unavailable", created_at=T0 + timedelta(days=5)),
        DealExtension(deal_id="DSTORY", sequence=1, extend_by_seconds=10 * 86400, reason="customer moved offices", new_deadline=T0 + timedelta(days=40), recorded_at=T0 + timedelta(days=6)),
        AuditEvent(at=T0 + timedelta(days=6), api_key_id=ops_key_id, account="ops:ana", role="ops", action="extend", method="POST", path="/v1/deals/DSTORY/extend",
                   deal_id="DSTORY", partner_id="P1", reason="customer moved offices", status_code=200),
        AuditEvent(at=T0 + timedelta(days=7), api_key_id=ops_key_id, account="ops:ana", role="ops", action="extend", method="POST", path="/console/deals/DSTORY/extend",
                   deal_id="DSTORY", partner_id="P1", reason="typo", status_code=422),
        AuditEvent(at=T0 + timedelta(days=8), api_key_id=ops_key_id, account="ops:ana", role="ops", action="cancel", method="POST", path="/console/deals/DSTORY/cancel",
                   deal_id="DSTORY", partner_id="P1", reason="duplicate booking", status_code=200),
        Settlement(deal_id="DSTORY", partner_id="P1", outcome="cancelled", amount=Decimal("0.00"), decided_at=T0 + timedelta(days=8, seconds=1)),
        IncentiveLedger(deal_id="DSTORY", partner_id="P1", kind="cancelled", amount=Decimal("0.00"), recorded_at=T0 + timedelta(days=8, seconds=1)),
        Certificate(deal_id="DSTORY", content_json=json.dumps({"deal_id": "DSTORY", "partner_id": "P1", "status": "cancelled", "booked_at": T0.isoformat(),
                    "return_deadline": T0.isoformat(), "units_received": 2, "dispositions": {"refresh": 1, "recycle": 1, "other": 0}, "items": []}),
                    content_hash="c0ffee" * 10 + "abcd", issued_at=T0 + timedelta(days=8, seconds=2)),
    ]
    with session_scope(settings.effective_database_url) as session:
        session.add_all(rows)
        session.commit()


def titles(html: str) -> list[str]:
    timeline = html[html.index('id="timeline"'):]
    return re.findall(r"<strong>([^<]+)</strong>", timeline)


async def test_the_timeline_tells_the_deals_story_newest_first_with_who_and_why(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    seed_story(settings, ops_key_id=1)
    async with api_client(settings) as http:
        await sign_in(http, key)
        page = await http.get("/console/deals/DSTORY")
        assert page.status_code == 200, page.text
        assert titles(page.text) == [
            "Certificate of recycling issued",
            "Ledger: cancelled 0.00",
            "Decision: incentive cancelled, 0.00",
            "Cancelled",
            "Extend refused (422)",
            "Window extended by 10d: deadline " + (T0 + timedelta(days=40)).strftime("%Y-%m-%d %H:%M") + " UTC",
            "Reminder: 7d before the deadline",
            "E-mail: Deal DSTORY: 6 units to return",
            "Receipt: 2 of 3 items accepted",
            "Carrier: delivered",
            "Carrier: in transit",
            "Pickup DSTORY-p1 booked with SIM",
            "Booked",
        ]
        text = re.sub(r"\s+", " ", page.text)
        assert "Cancelled</strong>" in text and "by ops:ana (ops key" in text and "reason: duplicate booking" in text
        assert "reason: customer moved offices" in text
        assert 'badge-failed">failed</span>' in text and "last error: 550 mailbox unavailable" in text and "3 attempts" in text
        assert "<td>FOC1</td><td>C9300-48P</td><td>working</td><td class=\"num\">2.0</td><td>refresh</td>" in text
        assert "<td>FOC2</td><td>C9300-48P</td><td>dead</td><td class=\"num\">9.0</td><td>recycle</td>" in text
        assert "rejected: serial appears twice in this receipt" in text
        assert "1 refresh, 1 recycle, 0 other" in text
        assert 'href="/console/deals/DSTORY/certificate"' in text
        assert 'http://localhost:8233/namespaces/default/workflows/deal-DSTORY' in text  # ops get the Temporal Web UI link
        assert 'id="poller"' not in text and 'id="actions"' not in text  # closed: no polling, no actions
        assert "1 Main St" not in text and "+1 555" not in text  # a pickup's address and contact stay out of the page
        certificate = await http.get("/console/deals/DSTORY/certificate")
        assert certificate.status_code == 200 and "c0ffee" in certificate.text and "form-action 'none'" in certificate.headers["content-security-policy"]


async def test_a_partner_reads_its_deal_without_actions_or_engine_links(tmp_path):
    settings = make_settings(tmp_path)
    seed_story(settings, ops_key_id=99)
    key = api_key(settings, "partner", "P1")
    async with api_client(settings) as http:
        await sign_in(http, key)
        page = await http.get("/console/deals/DSTORY")
        assert page.status_code == 200 and "Decision: incentive cancelled" in page.text
        assert "Temporal Web UI" not in page.text and 'action="/console/deals/DSTORY/cancel"' not in page.text


async def test_an_action_is_reviewed_before_it_is_sent_and_a_bad_one_is_refused_in_words(tmp_path):
    settings = make_settings(tmp_path)
    deal(settings, "DOPEN", "P1", deadline=NOW + timedelta(days=10))
    key = api_key(settings)
    async with api_client(settings) as http:
        csrf = await sign_in(http, key)
        review = await http.post("/console/deals/DOPEN/extend", data={"csrf": csrf, "extend_by": "7d", "reason": "strike at the port", "step": "review"},
                                 headers={"HX-Request": "true"})
        assert review.status_code == 200 and "Confirm the extension" in review.text and "<b>7d</b>" in review.text
        assert (NOW + timedelta(days=17)).strftime("%Y-%m-%d") in review.text  # where the deadline would move
        assert re.search(r'name="idempotency_key" value="[\w-]{16,}"', review.text) and 'value="confirm"' in review.text
        bad = await http.post("/console/deals/DOPEN/extend", data={"csrf": csrf, "extend_by": "400d", "reason": "x", "step": "review"})
        assert bad.status_code == 422 and "Extend by:" in bad.text and "365" in bad.text and 'id="deal-header"' in bad.text  # the whole page, without JS
        empty = await http.post("/console/deals/DOPEN/cancel", data={"csrf": csrf, "reason": "", "step": "review"}, headers={"HX-Request": "true"})
        assert empty.status_code == 422 and "Reason:" in empty.text
    partner = api_key(settings, "partner", "P1")
    async with api_client(settings) as http:
        csrf = await sign_in(http, partner)
        own = await http.post("/console/deals/DOPEN/cancel", data={"csrf": csrf, "reason": "mine", "step": "review"})
        assert own.status_code == 403 and "needs an ops key" in own.text  # as the API: 403 on its own deal


async def test_impact_shows_the_report_and_monthly_charts(tmp_path):
    settings = make_settings(tmp_path)
    deal(settings, "DA", "P1", status="closed", received=2)
    deal(settings, "DB", "P2", status="expired", received=1)
    months = [NOW.replace(day=1) - timedelta(days=40), NOW]
    with session_scope(settings.effective_database_url) as session:
        for n, (deal_id, disposition, at) in enumerate([("DA", "refresh", months[0]), ("DA", "recycle", months[1]), ("DB", "refresh", months[1])]):
            session.add(ReturnedItem(serial=f"S{n}", deal_id=deal_id, batch_id="b", product_id="C9300-48P", condition="working", age_years=1, disposition=disposition, received_at=at))
        session.add(Settlement(deal_id="DA", partner_id="P1", outcome="released", amount=Decimal("5000.00"), decided_at=months[1]))
        session.add(Settlement(deal_id="DB", partner_id="P2", outcome="forfeited", amount=Decimal("700.00"), decided_at=months[1]))
        session.commit()
    async with api_client(settings) as http:
        await sign_in(http, api_key(settings))
        page = await http.get("/console/impact")
        assert page.status_code == 200 and 'id="units-returned">3<' in page.text and "5,000.00" in page.text and "700.00" in page.text
        assert page.text.count('<svg viewBox="0 0 640 240" role="img"') == 2
        assert f"<title>{months[0]:%Y-%m}: 1 refreshed</title>" in page.text and f"<title>{months[1]:%Y-%m}: 5,000.00 released</title>" in page.text
        one = await http.get("/console/impact?partner=P2")
        assert 'id="units-returned">1<' in one.text and "5,000.00" not in one.text
    async with api_client(settings) as http:
        await sign_in(http, api_key(settings, "partner", "P1"))
        own = await http.get("/console/impact")
        assert 'id="units-returned">2<' in own.text and "Impact of P1" in own.text


def open_deal_whose_pickup_went_in_transit(settings, deal_id: str, tracking_number: str) -> None:
    """3 of 8 received; its projection shows the pickup booked, the carrier has since reported it in transit (store only)."""
    deal(settings, deal_id, received=3, pickups=[PickupView(id=f"{deal_id}-p1", status="booked", carrier="SIM", tracking_number=tracking_number)])
    with session_scope(settings.effective_database_url) as session:
        session.add(Pickup(id=f"{deal_id}-p1", deal_id=deal_id, carrier="SIM", tracking_number=tracking_number, status="in_transit", address="1 Main St",
                           contact_name="Sam", contact_phone="+1 555 0100", ready_on=NOW.date(), expected_units=3, created_at=NOW))
        session.commit()


async def test_an_open_deals_poll_reads_the_store_and_asks_the_workflow_nothing(tmp_path, monkeypatch):
    """A query of the workflow is a billable Temporal Cloud Action: the poll of an open deal's page
    (every few seconds, as long as the page is open) reads the store's copy; the page itself asks."""
    from service import deals as service
    from store.deals import deal_view_from_store

    settings = make_settings(tmp_path)
    open_deal_whose_pickup_went_in_transit(settings, "DOPEN", "SIM9")
    asked = []

    async def workflow_view(handle, query):  # the workflow's answer: here, what its projection holds
        asked.append(handle.id)
        with session_scope(settings.effective_database_url) as session:
            return deal_view_from_store(session, "DOPEN")

    monkeypatch.setattr(service, "ask", workflow_view)
    async with api_client(settings) as http:
        await sign_in(http, api_key(settings))
        poll = await http.get("/console/deals/DOPEN/live")
        assert poll.status_code == 200 and asked == []
        assert "3 received of 8 required" in poll.text
        assert "in_transit" in poll.text or "in transit" in poll.text.lower()  # the carrier's latest status, from the store
        assert 'hx-get="/console/deals/DOPEN/live"' in poll.text  # still open: it keeps polling
        page = await http.get("/console/deals/DOPEN")
        assert page.status_code == 200 and asked == ["deal-DOPEN"]


async def test_with_the_engine_down_the_deal_page_shows_the_stores_copy_with_the_carriers_latest_pickup_status(tmp_path, monkeypatch):
    """The page says the engine did not answer and shows what its poll would: the deal's projection with
    the pickup statuses the carrier reported since (recorded in the store, not in the workflow)."""
    from temporalio.service import RPCError, RPCStatusCode

    from service import deals as service

    settings = make_settings(tmp_path)
    open_deal_whose_pickup_went_in_transit(settings, "DDOWN", "SIM8")

    async def engine_down(handle, query):
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    monkeypatch.setattr(service, "ask", engine_down)
    async with api_client(settings) as http:
        await sign_in(http, api_key(settings))
        page = await http.get("/console/deals/DDOWN")
        assert page.status_code == 200, page.text[:300]
        assert "The workflow engine did not answer" in page.text and "3 received of 8 required" in page.text
        assert 'DDOWN-p1: <span class="badge badge-in_transit">' in page.text  # the header's pickup line, not the timeline
