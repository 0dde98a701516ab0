"""One pickup: follow the carrier's events until the shipment reaches a final status."""

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_activities import ShipmentEventInput, TakebackActivities
    from domain.models import (
        CARRIER_PROGRESS,
        ESCALATED_CARRIER_STATUSES,
        FINAL_CARRIER_STATUSES,
        SIMULATED_CARRIER_PATH,
        CarrierEvent,
        CarrierStatus,
    )
    from workflows.ids import deal_workflow_id

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


class PickupInput(BaseModel):
    deal_id: str
    partner_id: str
    pickup_id: str
    tracking_number: str
    sim_carrier_step_seconds: float
    track_until: datetime


class PickupState(BaseModel):
    pickup_id: str
    tracking_number: str
    status: str
    events_seen: int


def moves_forward(current: str, new: CarrierStatus) -> bool:
    """Never move a shipment backwards; a problem status may follow one of the same rank."""
    if current in FINAL_CARRIER_STATUSES:
        return False
    if current == "scheduled":
        return True
    current_rank = CARRIER_PROGRESS[CarrierStatus(current)]
    new_rank = CARRIER_PROGRESS[new]
    return new_rank > current_rank or (new_rank == current_rank and new in ESCALATED_CARRIER_STATUSES and new.value != current)


@workflow.defn
class PickupWorkflow:
    @workflow.init
    def __init__(self, pickup: PickupInput) -> None:
        self.pickup = pickup
        self.status = "scheduled"
        self.seen_event_ids: set[str] = set()
        self.inbox: list[CarrierEvent] = []
        self.simulated_steps = 0
        self.stopped = False

    @workflow.signal
    def carrier_event(self, event: CarrierEvent) -> None:
        self.inbox.append(event)

    @workflow.signal
    def stop_tracking(self) -> None:
        """The deal closed: later carrier news can change nothing."""
        self.stopped = True

    @workflow.query
    def state(self) -> PickupState:
        return PickupState(pickup_id=self.pickup.pickup_id, tracking_number=self.pickup.tracking_number, status=self.status, events_seen=len(self.seen_event_ids))

    def _next_simulated_event(self) -> CarrierEvent | None:
        path = [s.value for s in SIMULATED_CARRIER_PATH]
        position = path.index(self.status) + 1 if self.status in path else 0
        if position >= len(path):
            return None
        self.simulated_steps += 1
        return CarrierEvent(
            event_id=f"{self.pickup.pickup_id}-sim-{self.simulated_steps}",
            tracking_number=self.pickup.tracking_number,
            status=CarrierStatus(path[position]),
            occurred_at=workflow.now(),
        )

    async def _apply(self, event: CarrierEvent) -> None:
        if event.event_id in self.seen_event_ids:
            return  # carriers redeliver webhooks
        self.seen_event_ids.add(event.event_id)
        applied = moves_forward(self.status, event.status)
        await workflow.execute_local_activity_method(  # a quick store write (and maybe a mail): no task of its own
            TakebackActivities.record_shipment_event,
            ShipmentEventInput(
                deal_id=self.pickup.deal_id,
                partner_id=self.pickup.partner_id,
                pickup_id=self.pickup.pickup_id,
                event=event,
                applied=applied,
                escalate=applied and event.status in ESCALATED_CARRIER_STATUSES,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=ACTIVITY_RETRY,
        )
        if applied:
            self.status = event.status.value
            try:
                await workflow.get_external_workflow_handle(deal_workflow_id(self.pickup.deal_id)).signal(
                    "pickup_status", args=[self.pickup.pickup_id, self.status]
                )
            except Exception:  # the deal already closed: nothing left to tell it
                workflow.logger.info("deal %s no longer running", self.pickup.deal_id)

    @workflow.run
    async def run(self, pickup: PickupInput) -> PickupState:
        step = pickup.sim_carrier_step_seconds
        while self.status not in FINAL_CARRIER_STATUSES and not self.stopped:
            remaining = (pickup.track_until - workflow.now()).total_seconds()
            if remaining < 1:  # sub-second timers are not worth a wake-up (and stall the test server)
                break
            timeout = min(step, remaining) if step > 0 else remaining
            try:
                await workflow.wait_condition(lambda: bool(self.inbox) or self.stopped, timeout=timedelta(seconds=timeout))
            except TimeoutError:
                if step > 0 and (event := self._next_simulated_event()):
                    self.inbox.append(event)
            while self.inbox:
                await self._apply(self.inbox.pop(0))
        return self.state()
