"""The store's exactly-once guarantees, on SQLite and on PostgreSQL."""

import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from activities.deal_activities import TakebackActivities
from activities.mailer import Mail, OutboxMailer
from domain.catalog import default_catalog
from domain.models import DealView, Dispositions, Incentive
from service.deals import deal_terms
from store import deals as store
from store import settlement
from store.db import session_scope
from store.tables import IncentiveLedger, Partner, ReturnedItem, SanitizationRecord, ShipmentEvent
from tests.conftest import booking, make_settings

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


def setup_store(url: str, tmp_path):
    settings = make_settings(tmp_path, database_url=url)
    with session_scope(url) as session:
        session.add(Partner(id="P1", name="Partner", contact_email="p@example.com", country="CA"))
        session.commit()
    return settings


def booked_view(deal_id: str, units: int, status: str = "awaiting_returns", incentive_status: str = "held") -> DealView:
    return DealView(id=deal_id, partner_id="P1", status=status, booked_at=NOW, return_deadline=NOW, committed_units=units, required_units=units,
                    incentive=Incentive(mode="rebate", rate=Decimal("0.05"), amount=Decimal("5000.00"), status=incentive_status), dispositions=Dispositions())


def stage(url: str, settings, deal_id: str, request) -> bool:
    with session_scope(url) as session:
        staged = store.stage_booking(session, deal_id, request, deal_terms(deal_id, request, settings), booked_view(deal_id, request.committed_units))
        return staged


def receive(url: str, deal_id: str, batch_id: str, serials: list[str]):
    return receipt(url, deal_id, batch_id, serials).counts


def receipt(url: str, deal_id: str, batch_id: str, serials: list[str]) -> settlement.ReceiptOutcome:
    from domain.models import ReceiptItem

    items = [ReceiptItem(product_id="ISR4331/K9", serial_number=s, condition="working", age_years=2) for s in serials]
    with session_scope(url) as session:
        return settlement.count_receipt(session, deal_id, batch_id, items, 5, default_catalog())


def test_a_listed_serial_can_be_held_by_one_open_deal_only(database_url, tmp_path):
    settings = setup_store(database_url, tmp_path)
    assert stage(database_url, settings, "D1", booking(2, serials=["A", "B"]))
    assert not stage(database_url, settings, "D1", booking(2, serials=["A", "B"]))  # a retry is a no-op
    with pytest.raises(store.SerialConflict) as conflict:
        stage(database_url, settings, "D2", booking(2, serials=["B", "C"]))
    assert conflict.value.serials == ["B"]
    from domain.models import DealView, Dispositions, Incentive

    with session_scope(database_url) as session:  # closing D1 frees its serials
        view = DealView(id="D1", partner_id="P1", status="closed", booked_at=NOW, return_deadline=NOW, committed_units=2, required_units=2,
                        incentive=Incentive(mode="rebate", rate=Decimal("0.05"), amount=Decimal("5000.00"), status="forfeited"), dispositions=Dispositions())
        first_hash = store.close_deal(session, view)
        assert store.close_deal(session, view) == first_hash  # one certificate, issued once
    assert stage(database_url, settings, "D2", booking(2, serials=["B", "C"]))


def test_receipts_count_each_serial_once_across_deals_and_retries(database_url, tmp_path):
    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(5))
    stage(database_url, settings, "D2", booking(5))
    first = receive(database_url, "D1", "b1", ["S1", "S2", "S2", "S3"])
    assert (first.accepted, first.rejected) == (3, 1)  # the repeated line is rejected
    assert receive(database_url, "D1", "b1", ["ignored"]) == first  # processing a batch twice changes nothing
    second = receive(database_url, "D2", "b2", ["S3", "S4"])
    assert (second.accepted, second.rejected) == (1, 1)  # S3 came back on D1 already
    with session_scope(database_url) as session:
        assert settlement.receipt_result(session, "b2")["rejected"] == [{"serial_number": "S3", "reason": "serial already returned"}]
        assert session.execute(select(func.count()).select_from(SanitizationRecord)).scalar_one() == 4  # ISR routers carry data


def test_concurrent_receipts_of_one_serial_accept_it_once(database_url, tmp_path):
    settings = setup_store(database_url, tmp_path)
    for deal_id in ("D1", "D2", "D3", "D4"):
        stage(database_url, settings, deal_id, booking(5))
    results = []
    barrier = threading.Barrier(4)

    def race(deal_id: str):
        barrier.wait()
        results.append(receive(database_url, deal_id, f"b-{deal_id}", ["SAME", f"own-{deal_id}"]))

    threads = [threading.Thread(target=race, args=(d,)) for d in ("D1", "D2", "D3", "D4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.accepted for r in results) == 5 and sum(r.rejected for r in results) == 3
    with session_scope(database_url) as session:
        assert session.execute(select(func.count()).select_from(ReturnedItem).where(ReturnedItem.serial == "SAME")).scalar_one() == 1


def test_money_moves_once_per_deal_and_kind(database_url, tmp_path):
    from store.once import insert_once

    setup_store(database_url, tmp_path)
    with session_scope(database_url) as session:
        assert insert_once(session, IncentiveLedger(deal_id="D1", partner_id="P1", kind="released", amount=Decimal("700.00")))
        assert not insert_once(session, IncentiveLedger(deal_id="D1", partner_id="P1", kind="released", amount=Decimal("700.00")))
        assert session.execute(select(func.sum(IncentiveLedger.amount))).scalar_one() == Decimal("700.00")


def test_an_email_key_is_delivered_once(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    sent = []

    class CountingMailer(OutboxMailer):
        def send(self, mail, sender):
            sent.append(mail.key)
            return super().send(mail, sender)

    activities = TakebackActivities(settings, mailer=CountingMailer(tmp_path / "outbox"))
    mail = Mail(key="D1:reminder:7d", to="p@example.com", subject="s", body="b")
    assert activities._send_once(mail) is True
    assert activities._send_once(mail) is False
    assert sent == ["D1:reminder:7d"]


def test_carrier_events_racing_on_one_pickup_never_move_it_backwards(database_url, tmp_path):
    """Each delivery reads the same old status; the guarded UPDATE lets only a forward move win."""
    from concurrent.futures import ThreadPoolExecutor

    from domain.models import CarrierEvent, PickupRequest

    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(2))
    request = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on="2026-12-01", expected_units=2)
    for n in range(10):
        tracking = f"T{n}"
        with session_scope(database_url) as session:
            store.save_pickup(session, f"D1-p{n}", "D1", "Sim", tracking, request)
        newest = CarrierEvent(event_id=f"{tracking}-b", tracking_number=tracking, status="delivered", occurred_at=NOW)
        older = CarrierEvent(event_id=f"{tracking}-a", tracking_number=tracking, status="in_transit", occurred_at=NOW)

        def record(event):
            with session_scope(database_url) as session:
                return store.record_carrier_event(session, event)

        with ThreadPoolExecutor(4) as pool:  # each event twice at once, too: recorded once
            outcomes = list(pool.map(record, [newest, older, newest, older]))
        with session_scope(database_url) as session:
            assert store.find_pickup_by_tracking(session, tracking).status == "delivered"
            recorded = session.execute(select(func.count()).select_from(ShipmentEvent).where(ShipmentEvent.tracking_number == tracking)).scalar_one()
        assert recorded == 2
        assert sorted(o.repeated for o in outcomes) == [False, False, True, True]


def test_a_deal_settles_once_and_a_contradicting_outcome_is_refused(database_url, tmp_path):
    """The receipt that releases the rebate and a cancel racing on one deal: one settlement, one
    terminal ledger row, and both callers told what the store decided (the order of the locked
    transactions decides): released (the cancel refused) or cancelled (the receipt not counted)."""
    from store.tables import Settlement

    settings = setup_store(database_url, tmp_path)
    for deal in range(12):
        deal_id = f"D{deal}"
        stage(database_url, settings, deal_id, booking(4))
        answers = {}
        barrier = threading.Barrier(2)

        def release():
            barrier.wait()
            answers["receipt"] = receipt(database_url, deal_id, f"{deal_id}-b", [f"{deal_id}-{n}" for n in range(4)]).counted

        def cancel():
            barrier.wait()
            with session_scope(database_url) as session:
                answers["cancel"] = settlement.decide(session, deal_id, "cancel")[0].settlement

        threads = [threading.Thread(target=release), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with session_scope(database_url) as session:
            settled = session.execute(select(Settlement.outcome, Settlement.amount).where(Settlement.deal_id == deal_id)).all()
            rows = session.execute(select(IncentiveLedger.kind, IncentiveLedger.amount).where(IncentiveLedger.deal_id == deal_id)).all()
        assert len(settled) == 1 and answers["cancel"] == settled[0].outcome  # the cancel's caller is told the one outcome
        assert answers["receipt"] == (settled[0].outcome == "released")  # the receipt counted if and only if it released
        assert [tuple(row) for row in rows] == [tuple(settled[0])]  # and the ledger holds just that movement


def test_an_older_projection_never_overwrites_a_newer_one(database_url, tmp_path):
    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(4))
    newer = booked_view("D1", 4, status="condition_met", incentive_status="released").model_copy(update={"revision": 3})
    older = booked_view("D1", 4).model_copy(update={"revision": 2})  # a late retry of an earlier local activity
    with session_scope(database_url) as session:
        store.project_deal(session, newer)
        store.project_deal(session, older)
        stored = store.deal_view_from_store(session, "D1")
    assert stored.status.value == "condition_met" and stored.revision == 3


def test_a_refused_batch_burns_nothing_and_a_counted_one_stays_counted(database_url, tmp_path):
    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(4))
    on_time = receipt(database_url, "D1", "on-time", ["OK-1"])
    with session_scope(database_url) as session:
        settlement.decide(session, "D1", "deadline")
    late = receipt(database_url, "D1", "late", ["LATE-1"])
    assert on_time.counted and not late.counted and late.counts.accepted == 0
    assert receipt(database_url, "D1", "late", ["LATE-1"]).counted is False  # its retry is refused the same
    assert receipt(database_url, "D1", "on-time", ["OK-1"]).counted  # and a counted one's retry answers it counted
    with session_scope(database_url) as session:
        assert session.execute(select(ReturnedItem.serial)).scalars().all() == ["OK-1"]  # the refused serial was not burnt


def test_an_upfront_discount_is_granted_with_its_booking_and_undone_with_a_booking_never_started(database_url, tmp_path):
    """Upfront mode: the "applied" ledger row is written in the booking's own transaction (the discount is
    granted at booking), once however often the booking is retried; a staged booking whose workflow never
    started is discarded with it, so no discount stays granted for a deal that does not exist."""
    settings = setup_store(database_url, tmp_path).model_copy(update={"incentive_mode": "upfront"})
    request = booking(4, serials=["U1", "U2", "U3", "U4"])
    terms = deal_terms("DUP", request, settings)
    view = booked_view("DUP", 4, incentive_status="applied")
    with session_scope(database_url) as session:
        assert store.stage_booking(session, "DUP", request, terms, view)
        assert not store.stage_booking(session, "DUP", request, terms, view)  # a retry
        granted = session.execute(select(IncentiveLedger.kind, IncentiveLedger.amount).where(IncentiveLedger.deal_id == "DUP")).all()
        store.discard_staged_booking(session, "DUP")
        left = session.execute(select(func.count()).select_from(IncentiveLedger).where(IncentiveLedger.deal_id == "DUP")).scalar_one()
    assert [tuple(row) for row in granted] == [("applied", Decimal("5000.00"))] and left == 0
    assert stage(database_url, settings, "DOTHER", request)  # its serials are free again


def test_the_read_model_shows_receipts_and_reminders_as_the_store_holds_them(database_url, tmp_path):
    """Counts are written by the receipt's own transaction, a reminder by its activity; a projection from
    the deal (whose counts may lag the store: it hears of a receipt after its commit) never writes older ones."""
    settings = setup_store(database_url, tmp_path)
    stage(database_url, settings, "D1", booking(4))
    receipt(database_url, "D1", "b1", ["R1", "R2"])
    with session_scope(database_url) as session:
        after_receipt = store.deal_view_from_store(session, "D1")
        lagging = booked_view("D1", 4, status="awaiting_returns").model_copy(update={"revision": 1, "received_units": 0})
        store.project_deal(session, lagging)
        store.show_reminder(session, "D1", "30d")
        store.show_reminder(session, "D1", "30d")  # the reminder's activity retried
        stored = store.deal_view_from_store(session, "D1")
    assert after_receipt.received_units == 2 and after_receipt.dispositions.refresh + after_receipt.dispositions.recycle == 2
    assert stored.revision == 1 and stored.received_units == 2  # the projection was written, with the store's count
    assert stored.reminders_sent == ["30d"]
