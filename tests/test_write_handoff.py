"""What the API accepted is what the deal decides on, even when no worker takes the write in time.

Each kind of write is sent while the worker is away. A receipt needs no worker: the store counts
it at once (store.settlement) and the deal is told when a worker is back. An update is not taken
in time, the caller is told to come back, and after the worker returns the write is applied once,
by the caller's retry with the same identity.
"""

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from domain.models import DealStatus
from domain.specialization import ExamResult, TrainingRecord
from service import deals, partners
from store.tables import DealExtension, Pickup, ReceiptBatch, ReturnedItem
from tests.conftest import add_partner, booking, make_settings
from tests.deal_helpers import PICKUP, count, items
from tests.test_deal_races import uncached_worker

YEAR = timedelta(days=365)
# What the API turns into a 503: an update not taken in time, or (a pickup is
# checked against the deal first) a query no worker answered.
NOT_TAKEN = (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError, RPCError)


async def not_taken(call, seconds: float = 3):
    """The write, cut off as the API cuts off a write the deal does not take in time."""
    with pytest.raises(NOT_TAKEN):
        await asyncio.wait_for(call, seconds)


async def test_deal_writes_sent_while_no_worker_runs_are_applied_once_after_it_returns(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.get_deal(env.client, settings, view.id)  # its first task done before the worker goes
    # The worker is gone: the receipt is counted all the same; each update is sent, and the caller hears "not yet".
    first = await deals.record_receipt(env.client, settings, view.id, items("H", 4))
    assert first["accepted"] == 4 and count(settings, ReturnedItem, deal_id=view.id) == 4
    await not_taken(deals.request_pickup(env.client, view.id, PICKUP, request_id="pickup-key-1"))
    await not_taken(deals.extend_deal(env.client, view.id, "30d", "customer asked", request_id="extend-key-1"))
    async with uncached_worker(env, settings):
        # The callers retry with the same identity: each write lands once; the deal has heard of the receipt.
        receipt = await deals.record_receipt(env.client, settings, view.id, items("H", 4))
        pickup = await deals.request_pickup(env.client, view.id, PICKUP, request_id="pickup-key-1")
        again = await deals.request_pickup(env.client, view.id, PICKUP, request_id="pickup-key-1")
        extended = await deals.extend_deal(env.client, view.id, "30d", "customer asked", request_id="extend-key-1")
        current = await deals.get_deal(env.client, settings, view.id)
    assert receipt["accepted"] == 4 and current.received_units == 4 and count(settings, ReturnedItem, deal_id=view.id) == 4
    assert count(settings, ReceiptBatch, deal_id=view.id) == 1  # the retry re-drove the staged batch, not a second one
    assert again == pickup and count(settings, Pickup, deal_id=view.id) == 1 and len(current.pickups) == 1
    assert extended.return_deadline == view.return_deadline + timedelta(days=30) == current.return_deadline
    assert count(settings, DealExtension, deal_id=view.id) == 1


async def test_a_receipt_counted_while_no_worker_runs_counts_at_the_deadline(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.get_deal(env.client, settings, view.id)  # its first task done before the worker goes
    assert (await deals.record_receipt(env.client, settings, view.id, items("Z", 8)))["accepted"] == 8  # and the caller never comes back
    async with uncached_worker(env, settings):
        await env.sleep(YEAR)
        final = await deals.deal_handle(env.client, view.id).result()
    assert final.status == DealStatus.closed and final.received_units == 8 and final.incentive.status.value == "released"


async def test_a_cancel_sent_while_no_worker_runs_is_applied_once_on_retry(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.get_deal(env.client, settings, view.id)  # its first task done before the worker goes
    await not_taken(deals.cancel_deal(env.client, view.id, "customer withdrew", request_id="cancel-key-1"))
    async with uncached_worker(env, settings):
        cancelled = await deals.cancel_deal(env.client, view.id, "customer withdrew", request_id="cancel-key-1")
        final = await deals.deal_handle(env.client, view.id).result()
    assert cancelled.status == final.status == DealStatus.cancelled


async def test_partner_writes_sent_while_no_worker_runs_are_applied_once_after_it_returns(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings, "HP", certified=False)
    async with uncached_worker(env, settings):
        await partners.start_specialization(env.client, settings, "HP")
        await partners.specialization(env.client, settings, "HP")
    training = TrainingRecord(person_email="ana@hp.example", person_name="Ana", hours=6)
    await not_taken(partners.record_training(env.client, "HP", training, request_id="training-key-1"))
    await not_taken(partners.record_exam(env.client, "HP", ExamResult(exam=1, passed=True), request_id="exam-key-1"))
    async with uncached_worker(env, settings):
        await partners.record_training(env.client, "HP", training, request_id="training-key-1")
        await partners.record_exam(env.client, "HP", ExamResult(exam=1, passed=True), request_id="exam-key-1")
        view = await partners.specialization(env.client, settings, "HP")
    assert view.training_hours == 6 and view.trainees == 1 and view.trees_planted == 1 and view.exams_passed == [1]
