"""The simulated carrier: moves one pickup along the carrier's path, a step every `sim_carrier_step`.

Real carriers report by webhook (POST /v1/carrier-events) and the API records their events in
the store. This workflow stands in for such a carrier in development and demos; it records its
events the same way, so a pickup's history holds only its own steps, never the deal's.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_activities import TakebackActivities
    from domain.models import FINAL_CARRIER_STATUSES, SIMULATED_CARRIER_PATH, CarrierEvent
    from store.deals import CarrierEventOutcome

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
FINAL = {status.value for status in FINAL_CARRIER_STATUSES}
PATH = [status.value for status in SIMULATED_CARRIER_PATH]


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
    simulated_steps: int


@workflow.defn
class PickupWorkflow:
    @workflow.init
    def __init__(self, pickup: PickupInput) -> None:
        self.pickup = pickup
        self.status = "scheduled"
        self.simulated_steps = 0
        self.stopped = False

    @workflow.signal
    def stop_tracking(self) -> None:
        """The deal closed: the shipment no longer matters to it."""
        self.stopped = True

    @workflow.query
    def state(self) -> PickupState:
        return PickupState(pickup_id=self.pickup.pickup_id, tracking_number=self.pickup.tracking_number, status=self.status, simulated_steps=self.simulated_steps)

    def _next_event(self) -> CarrierEvent | None:
        """The next status on the path; none once the shipment left it (a webhook reported a problem)."""
        if self.status != "scheduled" and self.status not in PATH:
            return None
        position = PATH.index(self.status) + 1 if self.status in PATH else 0
        if position >= len(PATH):
            return None
        self.simulated_steps += 1
        return CarrierEvent(
            event_id=f"{self.pickup.pickup_id}-sim-{self.simulated_steps}",
            tracking_number=self.pickup.tracking_number,
            status=PATH[position],
            occurred_at=workflow.now(),
        )

    @workflow.run
    async def run(self, pickup: PickupInput) -> PickupState:
        step = pickup.sim_carrier_step_seconds
        while self.status not in FINAL and not self.stopped:
            remaining = (pickup.track_until - workflow.now()).total_seconds()
            if remaining < 1:  # sub-second timers are not worth a wake-up (and stall the test server)
                break
            try:
                await workflow.wait_condition(lambda: self.stopped, timeout=timedelta(seconds=min(step, remaining)))
                break
            except TimeoutError:
                pass
            event = self._next_event()
            if event is None:
                break
            outcome: CarrierEventOutcome = await workflow.execute_local_activity_method(
                TakebackActivities.record_carrier_event, event, start_to_close_timeout=timedelta(seconds=30), retry_policy=ACTIVITY_RETRY
            )
            # The store's status: a webhook may have moved the shipment further. The simulated path
            # holds no problem status, so there is nothing to escalate here.
            self.status = outcome.status
        return self.state()
