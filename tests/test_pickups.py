"""Pickups: carrier events recorded once and never backwards, escalations, the simulated carrier."""

from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.models import DealStatus
from service import deals
from store import deals as store_deals
from store.db import session_scope
from store.tables import EmailMessage, Pickup, ShipmentEvent
from tests.api_helpers import as_the_api_calls
from tests.conftest import booking, make_settings, running_worker
from tests.deal_helpers import PICKUP, count, event, mail, outbox, settle
from workflows.ids import pickup_workflow_id
from workflows.pickup import PickupWorkflow


def pickup_handle(client, tracking: str):
    return client.get_workflow_handle_for(PickupWorkflow.run, pickup_workflow_id(tracking))


def shipment_events(settings, tracking: str) -> list[tuple[str, str, bool]]:
    with session_scope(settings.effective_database_url) as session:
        rows = session.execute(select(ShipmentEvent.event_id, ShipmentEvent.status, ShipmentEvent.applied).where(ShipmentEvent.tracking_number == tracking)).all()
    # The store keys an event by `<tracking>:<carrier's event id>`; the carrier's id is compared here.
    return sorted((event_id.removeprefix(f"{tracking}:"), status, applied) for event_id, status, applied in rows)


def stored_pickup(settings, pickup_id: str) -> Pickup:
    with session_scope(settings.effective_database_url) as session:
        return session.get(Pickup, pickup_id)


async def deal_history_length(client, deal_id: str) -> int:
    return len((await deals.deal_handle(client, deal_id).fetch_history()).events)


async def test_repeated_and_backward_carrier_events_are_ignored(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        pickup = await deals.request_pickup(env.client, deal.id, PICKUP)
        assert pickup.id == f"{deal.id}-p1" and pickup.status == "scheduled" and pickup.tracking_number.startswith("SIM")
        tracking = pickup.tracking_number
        await env.sleep(timedelta(days=3))
        assert (await settle(env, settings, deal.id)).pickups[0].status == "scheduled"  # no step configured: it waits for the carrier
        history_before = await deal_history_length(env.client, deal.id)

        outcomes = []
        for e in [
            event("e1", tracking, "pre_transit"),
            event("e2", tracking, "in_transit"),
            event("e2", tracking, "in_transit"),  # webhook redelivered
            event("e3", tracking, "out_for_delivery"),
            event("e4", tracking, "in_transit"),  # late, older news: never backwards
            event("e1", tracking, "pre_transit"),  # redelivered once more
        ]:
            outcomes.append(await deals.send_carrier_event(env.client, settings, e))
        assert [(o.applied, o.repeated) for o in outcomes] == [(True, False), (True, False), (True, True), (True, False), (False, False), (True, True)]
        view = await settle(env, settings, deal.id)
        assert view.pickups[0].status == "out_for_delivery"
        assert stored_pickup(settings, pickup.id).status == "out_for_delivery"

        await deals.send_carrier_event(env.client, settings, event("e5", tracking, "delivered"))
        view = await settle(env, settings, deal.id)
        # Tracking news lives in the store: the deal's history did not grow by one event.
        assert await deal_history_length(env.client, deal.id) == history_before

    assert view.pickups[0].status == "delivered" and stored_pickup(settings, pickup.id).status == "delivered"
    assert shipment_events(settings, tracking) == [
        ("e1", "pre_transit", True),
        ("e2", "in_transit", True),
        ("e3", "out_for_delivery", True),
        ("e4", "in_transit", False),
        ("e5", "delivered", True),
    ]
    assert [name for name in outbox(settings) if "escalation" in name] == []  # nothing went wrong
    try:
        await pickup_handle(env.client, tracking).describe()
        raise AssertionError("a webhook-tracked pickup needs no workflow of its own")
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND


async def test_failure_and_return_to_sender_escalate_by_mail_with_ops_in_cc(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        first = await deals.request_pickup(env.client, deal.id, PICKUP)
        second = await deals.request_pickup(env.client, deal.id, PICKUP)
        assert second.id == f"{deal.id}-p2" and second.tracking_number != first.tracking_number

        for e in [
            event("f1", first.tracking_number, "in_transit"),
            event("f2", first.tracking_number, "failure"),
            event("f2", first.tracking_number, "failure"),  # the same news twice: one e-mail
            event("f3", first.tracking_number, "failure"),  # a second failure report: no new state, no new mail
            event("f4", first.tracking_number, "delivered"),  # the carrier recovers
            event("r1", second.tracking_number, "pre_transit"),
            event("r2", second.tracking_number, "return_to_sender"),
        ]:
            await deals.send_carrier_event(env.client, settings, e)
        view = await settle(env, settings, deal.id)

    assert [p.status for p in view.pickups] == ["delivered", "return_to_sender"]
    assert view.status == DealStatus.awaiting_returns  # pickups alone change no money
    escalations = [name for name in outbox(settings) if "escalation" in name]
    assert escalations == [f"{deal.id}_{first.id}_escalation_failure.eml", f"{deal.id}_{second.id}_escalation_return_to_sender.eml"]
    for name in escalations:
        message = mail(settings, name)
        assert message["To"] == "partner@example.com" and message["Cc"] == settings.ops_email
    assert first.tracking_number in mail(settings, escalations[0]).get_content()
    with session_scope(settings.effective_database_url) as session:
        keys = session.execute(select(EmailMessage.key).where(EmailMessage.key.like("%escalation%"))).scalars().all()
    assert len(keys) == 2
    assert ("f3", "failure", False) in shipment_events(settings, first.tracking_number)


async def test_the_simulated_carrier_advances_by_itself(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, sim_carrier_step="1h")
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        pickup = await deals.request_pickup(env.client, deal.id, PICKUP)
        handle = pickup_handle(env.client, pickup.tracking_number)
        await env.sleep(timedelta(minutes=30))
        assert (await handle.query(PickupWorkflow.state)).status == "scheduled"
        await env.sleep(timedelta(minutes=45))  # one step
        assert (await handle.query(PickupWorkflow.state)).status == "pre_transit"
        assert (await deals.get_deal(env.client, settings, deal.id)).pickups[0].status == "pre_transit"
        await env.sleep(timedelta(hours=1))
        assert (await handle.query(PickupWorkflow.state)).status == "in_transit"
        await env.sleep(timedelta(hours=3))
        final = await handle.result()
        view = await settle(env, settings, deal.id)

    assert final.status == "delivered"
    assert view.pickups[0].status == "delivered" and stored_pickup(settings, pickup.id).status == "delivered"
    assert shipment_events(settings, pickup.tracking_number) == [
        (f"{pickup.id}-sim-1", "pre_transit", True),
        (f"{pickup.id}-sim-2", "in_transit", True),
        (f"{pickup.id}-sim-3", "out_for_delivery", True),
        (f"{pickup.id}-sim-4", "delivered", True),
    ]


async def test_a_retried_pickup_request_books_one_pickup(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        a = await as_the_api_calls(lambda: deals.request_pickup(env.client, deal.id, PICKUP, request_id="req-1"), env.client)
        b = await as_the_api_calls(lambda: deals.request_pickup(env.client, deal.id, PICKUP, request_id="req-1"), env.client)
        view = await deals.get_deal(env.client, settings, deal.id)
    assert a == b and len(view.pickups) == 1
    assert count(settings, Pickup, deal_id=deal.id) == 1


async def test_closing_a_deal_stops_its_simulated_pickups_and_the_deal_does_not_wait_for_them(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, sim_carrier_step="2d")
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        pickup = await deals.request_pickup(env.client, deal.id, PICKUP)
        await deals.send_carrier_event(env.client, settings, event("t1", pickup.tracking_number, "in_transit"))
        await env.sleep(timedelta(days=1))
        await deals.cancel_deal(env.client, deal.id, "customer withdrew")
        await env.sleep(timedelta(seconds=5))
        deal_status = (await deals.deal_handle(env.client, deal.id).describe()).status
        handle = pickup_handle(env.client, pickup.tracking_number)
        pickup_status = (await handle.describe()).status
        stopped = await handle.result()
    assert deal_status == WorkflowExecutionStatus.COMPLETED  # not held open by a pickup still in transit
    assert pickup_status == WorkflowExecutionStatus.COMPLETED and stopped.simulated_steps == 0  # stopped before its first step
    assert stored_pickup(settings, pickup.id).status == "in_transit"


async def test_a_webhook_moves_a_simulated_shipment_and_the_simulation_follows_the_store(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, sim_carrier_step="1h")
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        pickup = await deals.request_pickup(env.client, deal.id, PICKUP)
        await deals.send_carrier_event(env.client, settings, event("w1", pickup.tracking_number, "out_for_delivery"))
        await env.sleep(timedelta(hours=2, minutes=10))
        final = await pickup_handle(env.client, pickup.tracking_number).query(PickupWorkflow.state)
    # Its first step (pre_transit) is older news than the webhook's and changes nothing; it then
    # goes on from the store's status instead of its own.
    assert final.status == "delivered" and final.simulated_steps == 2
    assert shipment_events(settings, pickup.tracking_number) == sorted([
        ("w1", "out_for_delivery", True),
        (f"{pickup.id}-sim-1", "pre_transit", False),
        (f"{pickup.id}-sim-2", "delivered", True),
    ])



async def test_a_failure_redelivered_after_its_signal_was_lost_still_escalates(time_skipping_env, tmp_path):
    """The store took the failure but the deal was never told (Temporal was down, the webhook got a 503);
    the carrier's retry arrives after the pickup moved on, and must still escalate the failure."""
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        pickup = await deals.request_pickup(env.client, deal.id, PICKUP)
        tracking = pickup.tracking_number
        with session_scope(settings.effective_database_url) as session:  # recorded, the signal lost
            assert store_deals.record_carrier_event(session, event("x1", tracking, "failure")).escalate
        await deals.send_carrier_event(env.client, settings, event("x2", tracking, "delivered"))
        retried = await deals.send_carrier_event(env.client, settings, event("x1", tracking, "failure"))
        assert retried.repeated and retried.escalate
        view = await settle(env, settings, deal.id)

    assert view.pickups[0].status == "delivered"
    assert [name for name in outbox(settings) if "escalation" in name] == [f"{deal.id}_{pickup.id}_escalation_failure.eml"]


async def test_a_retried_pickup_request_is_the_same_request_after_the_deal_moved_on(time_skipping_env, tmp_path):
    """Units received after the first request would make a new one too big: its retry still gets its pickup."""
    from domain.models import PickupRequest
    from tests.conftest import booking
    from tests.deal_helpers import TODAY, items

    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        whole = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on=TODAY, expected_units=10)
        def ask(request_id: str):  # as the API asks, retried as a client does when a query runs past its deadline
            return as_the_api_calls(lambda: deals.request_pickup(env.client, view.id, whole, request_id=request_id, settings=settings), env.client)

        first = await ask("order-9-pickup")
        await deals.record_receipt(env.client, settings, view.id, items("M", 4))
        retry = await ask("order-9-pickup")
        with pytest.raises(deals.PickupRefused):  # a new request for 10 units is too big now: 6 are awaited
            await ask("order-10-pickup")
    assert retry == first


async def test_a_retry_of_a_pickup_still_being_booked_is_not_counted_against_itself(dev_server_env, tmp_path):
    """A retried request the deal took while the carrier is still booking it (an outage) is the same request: it waits
    for its pickup. Before, it was checked again, with its own pickup counted among those under way: at the deal's
    last open place (TAKEBACK_MAX_OPEN_PICKUPS) the retry of an accepted request was refused, 422."""
    import asyncio

    from tests.api_helpers import eventually
    from tests.easypost_standin import EasyPostStandIn
    from tests.test_easypost import ADDRESS, easypost_settings

    standin = EasyPostStandIn()
    settings = easypost_settings(tmp_path, standin, dev_server_env, max_open_pickups=1)
    request = PICKUP.model_copy(update={"address": ADDRESS})
    try:
        async with running_worker(dev_server_env.client, settings):
            deal = await deals.book_deal(dev_server_env.client, settings, booking(10))
            standin.failing = {"shipment_create"}  # the carrier is booked after the address was checked: it stays `booking`
            first = asyncio.create_task(deals.request_pickup(dev_server_env.client, deal.id, request, request_id="order-1-pickup", settings=settings))

            async def booking_under_way():
                view = await deals.get_deal(dev_server_env.client, settings, deal.id)
                return [p.status for p in view.pickups] == ["booking"]

            await eventually(booking_under_way, what="the pickup shown as booking")
            first.cancel()  # the caller gave up waiting (its HTTP call timed out); the deal keeps the request
            retry = asyncio.create_task(deals.request_pickup(dev_server_env.client, deal.id, request, request_id="order-1-pickup", settings=settings))
            await asyncio.sleep(1)
            assert not retry.done() or retry.exception() is None, retry.exception()  # waiting for its pickup, not refused
            standin.failing = set()
            pickup = await asyncio.wait_for(retry, 60)
    finally:
        standin.close()
    assert pickup.id == f"{deal.id}-p1" and pickup.status == "scheduled" and pickup.tracking_number
