"""Receipts: the grey-market guard, disposition by age and condition, sanitization records."""

from decimal import Decimal

import pytest
from sqlalchemy import select

from domain.rules import RuleViolation
from domain.models import DealStatus, IncentiveStatus, ReceiptItem
from service import deals
from store import deals as store
from store.db import session_scope
from store.tables import Deal, OpenSerialClaim, ReceiptRejection, ReturnedItem, SanitizationRecord
from tests.conftest import booking, make_settings, running_worker
from tests.deal_helpers import count, items, ledger, settle


def sanitization(settings, deal_id: str) -> dict[str, str]:
    with session_scope(settings.effective_database_url) as session:
        return dict(session.execute(select(SanitizationRecord.serial, SanitizationRecord.method).where(SanitizationRecord.deal_id == deal_id)).all())


def dispositions(settings, deal_id: str) -> dict[str, str]:
    with session_scope(settings.effective_database_url) as session:
        return dict(session.execute(select(ReturnedItem.serial, ReturnedItem.disposition).where(ReturnedItem.deal_id == deal_id)).all())


async def test_serials_the_deal_did_not_list_are_rejected_and_do_not_count(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        listed = [f"L-{i}" for i in range(10)]
        deal = await deals.book_deal(env.client, settings, booking(10, serials=listed))
        received = items("L", 7) + [ReceiptItem(product_id="C9300-48P", serial_number=s, condition="working", age_years=1) for s in ("GREY-1", "GREY-2")]
        result = await deals.record_receipt(env.client, settings, deal.id, received)
        assert result["accepted"] == 7
        assert result["rejected"] == [
            {"serial_number": "GREY-1", "reason": "serial not listed on this deal"},
            {"serial_number": "GREY-2", "reason": "serial not listed on this deal"},
        ]
        view = await settle(env, settings, deal.id)
        # 9 items arrived but only 7 count: 7 < 8 required, so nothing is released
        assert (view.received_units, view.rejected_units) == (7, 2)
        assert view.status == DealStatus.awaiting_returns and view.incentive.status == IncentiveStatus.held
        await deals.record_receipt(env.client, settings, deal.id, items("L", 1, start=7))
        view = await settle(env, settings, deal.id)
    assert view.received_units == 8 and view.incentive.status == IncentiveStatus.released
    assert ledger(settings, deal.id) == {"released": 1}
    assert count(settings, ReturnedItem, deal_id=deal.id) == 8


async def test_a_serial_is_returned_once_across_all_deals(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        first = await deals.book_deal(env.client, settings, booking(10))
        second = await deals.book_deal(env.client, settings, booking(10))
        assert (await deals.record_receipt(env.client, settings, first.id, items("X", 3)))["accepted"] == 3
        result = await deals.record_receipt(env.client, settings, second.id, items("X", 3, start=2) + items("X", 1, start=4))
        view = await settle(env, settings, second.id)
    # X-2 came back on the first deal; X-4 is listed twice in this receipt: only X-3 and one X-4 count
    assert result["accepted"] == 2
    assert result["rejected"] == [
        {"serial_number": "X-2", "reason": "serial already returned"},
        {"serial_number": "X-4", "reason": "serial appears twice in this receipt"},
    ]
    assert (view.received_units, view.rejected_units) == (2, 2)
    with session_scope(settings.effective_database_url) as session:
        owners = dict(session.execute(select(ReturnedItem.serial, ReturnedItem.deal_id)).all())
    assert owners == {"X-0": first.id, "X-1": first.id, "X-2": first.id, "X-3": second.id, "X-4": second.id}


async def test_a_serial_committed_on_another_open_deal_is_refused_at_booking(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        first = await deals.book_deal(env.client, settings, booking(3, serials=["K-1", "K-2", "K-3"]))
        with pytest.raises(store.SerialConflict) as conflict:
            await deals.book_deal(env.client, settings, booking(3, serials=["N-1", "K-2", "K-3"]))
        assert conflict.value.serials == ["K-2", "K-3"]
        # nothing of the refused booking stays behind, and its free serial is still free
        assert count(settings, Deal) == 1 and count(settings, OpenSerialClaim) == 3
        again = await deals.book_deal(env.client, settings, booking(1, serials=["N-1"]))
        assert again.status == DealStatus.awaiting_returns
        with pytest.raises(store.SerialConflict):  # N-1 is now held by `again`
            await deals.book_deal(env.client, settings, booking(1, serials=["N-1"]))
        with pytest.raises(RuleViolation):  # a booking that lists a serial twice
            await deals.book_deal(env.client, settings, booking(2, serials=["D-1", "D-1"]))
    assert first.id != again.id and count(settings, Deal) == 2


async def test_disposition_by_age_and_condition_and_sanitization_of_data_bearing_gear(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    received = [
        ReceiptItem(product_id="C9300-48P", serial_number="SW-young", condition="working", age_years=5),
        ReceiptItem(product_id="C9300-48P", serial_number="SW-old", condition="working", age_years=5.5),
        ReceiptItem(product_id="C9300-48P", serial_number="SW-damaged", condition="damaged", age_years=1),
        ReceiptItem(product_id="ISR4331/K9", serial_number="RT-young", condition="working", age_years=2),
        ReceiptItem(product_id="ISR4331/K9", serial_number="RT-dead", condition="dead", age_years=0.5),
        ReceiptItem(product_id="UCSC-C220-M5SX", serial_number="SRV-old", condition="working", age_years=8),
    ]
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(20))
        result = await deals.record_receipt(env.client, settings, deal.id, received)
        view = await settle(env, settings, deal.id)
    assert result["accepted"] == 6 and result["rejected"] == []
    assert dispositions(settings, deal.id) == {
        "SW-young": "refresh",
        "SW-old": "recycle",
        "SW-damaged": "recycle",
        "RT-young": "refresh",
        "RT-dead": "recycle",
        "SRV-old": "recycle",
    }
    assert (view.dispositions.refresh, view.dispositions.recycle, view.dispositions.other) == (2, 4, 0)
    # switches, routers and servers all keep data (configurations, keys: domain/catalog.csv): each gets
    # the method its disposition calls for; what was actually done is recorded by POST .../sanitizations
    assert sanitization(settings, deal.id) == {
        "SW-young": "purge", "SW-old": "destroy", "SW-damaged": "destroy", "RT-young": "purge", "RT-dead": "destroy", "SRV-old": "destroy",
    }


async def test_the_refresh_age_limit_is_a_setting(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, refresh_max_age_years=2)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(5))
        await deals.record_receipt(env.client, settings, deal.id, items("Y", 1, age_years=2) + items("Z", 1, age_years=3))
    assert dispositions(settings, deal.id) == {"Y-0": "refresh", "Z-0": "recycle"}


async def test_a_repeated_receipt_counts_once(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        first = await deals.record_receipt(env.client, settings, deal.id, items("R", 5), batch_id="batch-1")
        second = await deals.record_receipt(env.client, settings, deal.id, items("R", 5), batch_id="batch-1")
        view = await settle(env, settings, deal.id)
    assert first == second and first["accepted"] == 5
    assert view.received_units == 5 and view.rejected_units == 0
    assert count(settings, ReturnedItem, deal_id=deal.id) == 5 and count(settings, ReceiptRejection) == 0
    assert view.incentive.amount == Decimal("5000.00") and view.incentive.status == IncentiveStatus.held
