"""One takeback deal from booking to certificate (rules: shared/domain.md)."""

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_activities import (
        ExtensionRecord,
        LedgerEntry,
        PickupBookingInput,
        ReminderInput,
        SettlementNotice,
        TakebackActivities,
    )
    from domain import rules
    # DealWorkflowInput and ExtendCommand are this workflow's messages; callers import them from here.
    from domain.deal_progress import DealWorkflowInput, ExtendCommand, PickupEscalation, deal_view, initial_progress  # noqa: F401
    from domain.models import (
        ESCALATED_CARRIER_STATUSES,
        OPEN_DEAL_STATUSES,
        DealStatus,
        DealView,
        Dispositions,
        IncentiveMode,
        IncentiveStatus,
        PickupRequest,
        PickupView,
        ReceiptCounts,
    )
    from domain.durations import format_duration
    from workflows.ids import pickup_workflow_id
    from workflows.pickup import PickupInput, PickupWorkflow

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
SHORT = timedelta(seconds=10)
LONG = timedelta(minutes=5)  # receipts of thousands of items, certificates of 100,000 ...
HEARTBEAT = timedelta(seconds=15)  # ... which heartbeat, so a killed worker's attempt is retried soon


def _activity(fn, *args, timeout: timedelta = SHORT):
    """A task of its own: for mail (a provider may be slow or rate-limit) and long store work that heartbeats."""
    return workflow.execute_activity_method(
        fn, args=list(args), start_to_close_timeout=timeout, heartbeat_timeout=HEARTBEAT if timeout > SHORT else None, retry_policy=ACTIVITY_RETRY
    )


def _local(fn, *args, timeout: timedelta = SHORT):
    """A store write run inside the workflow task: one marker in history instead of an activity's
    three events and a workflow task more. Idempotent like every activity here, so a retried
    workflow task may run it again."""
    return workflow.execute_local_activity_method(fn, args=list(args), start_to_close_timeout=timeout, retry_policy=ACTIVITY_RETRY)


@workflow.defn
class TakebackDealWorkflow:
    @workflow.init
    def __init__(self, input: DealWorkflowInput) -> None:
        self.terms = input.terms
        self.amount = rules.incentive_amount(self.terms.new_products_value, self.terms.incentive_rate)
        self.required = rules.required_units(self.terms.committed_units, self.terms.return_threshold)
        self.progress = input.progress
        self.is_booked = input.progress is not None
        self.dirty = False
        self.pickup_runs: list = []  # child handles of this run
        self.timer: asyncio.Future | None = None  # the pending wake-up, see _sleep_until_something_happens
        self.timer_target: datetime | None = None

    # --- queries ----------------------------------------------------------------------------

    @workflow.query
    def view(self) -> DealView:
        if self.progress is None:
            raise ApplicationError("the deal is still being booked", type="DealBooking")
        return deal_view(self.terms, self.progress)

    # --- updates: the caller gets the result ------------------------------------------------

    def _require_open(self) -> None:
        if self.progress is not None and self.progress.status not in OPEN_DEAL_STATUSES:
            raise ApplicationError(f"deal {self.terms.deal_id} is {self.progress.status.value}", type="DealNotOpen")

    @workflow.update
    async def request_pickup(self, request: PickupRequest) -> PickupView:
        await workflow.wait_condition(lambda: self.is_booked)
        self._require_open()
        pickup_id = f"{self.terms.deal_id}-p{len(self.progress.pickups) + 1}"
        self.progress.pickups.append(PickupView(id=pickup_id, status="booking", carrier="", tracking_number=""))
        booked: PickupView = await _local(TakebackActivities.book_pickup, PickupBookingInput(deal_id=self.terms.deal_id, pickup_id=pickup_id, request=request))
        if self.terms.sim_carrier_step_seconds > 0:
            # Real carriers report by webhook, into the store; only the simulated one needs a process.
            self.pickup_runs.append(
                await workflow.start_child_workflow(
                    PickupWorkflow.run,
                    PickupInput(
                        deal_id=self.terms.deal_id,
                        partner_id=self.terms.partner_id,
                        pickup_id=pickup_id,
                        tracking_number=booked.tracking_number,
                        sim_carrier_step_seconds=self.terms.sim_carrier_step_seconds,
                        track_until=self.progress.deadline + timedelta(seconds=self.terms.return_window_seconds),
                    ),
                    id=pickup_workflow_id(booked.tracking_number),
                    # Pickups outlive a continue-as-new of the deal and finish on their own.
                    parent_close_policy=ParentClosePolicy.ABANDON,
                )
            )
        self.progress.pickups = [booked if p.id == pickup_id else p for p in self.progress.pickups]
        self.dirty = True
        return booked

    @request_pickup.validator
    def _validate_pickup(self, request: PickupRequest) -> None:
        self._require_open()

    @workflow.update
    async def record_receipt(self, batch_id: str) -> ReceiptCounts:
        await workflow.wait_condition(lambda: self.is_booked)
        self._require_open()
        counts: ReceiptCounts = await _local(TakebackActivities.process_receipt, self.terms.deal_id, batch_id, timeout=LONG)
        if batch_id not in self.progress.processed_batches:  # a repeated update counts once
            self.progress.processed_batches.append(batch_id)
            p = self.progress
            p.received_units += counts.accepted
            p.rejected_units += counts.rejected
            p.dispositions = Dispositions(
                refresh=p.dispositions.refresh + counts.refresh,
                recycle=p.dispositions.recycle + counts.recycle,
                other=p.dispositions.other + counts.other,
            )
            self.dirty = True
        return counts

    @record_receipt.validator
    def _validate_receipt(self, batch_id: str) -> None:
        self._require_open()

    @workflow.update
    async def extend(self, command: ExtendCommand) -> DealView:
        await workflow.wait_condition(lambda: self.is_booked)
        self._require_open()
        new_deadline = self.progress.deadline + timedelta(seconds=command.extend_by_seconds)
        sequence = len(self.progress.extensions) + 1
        await _local(
            TakebackActivities.record_extension,
            ExtensionRecord(deal_id=self.terms.deal_id, sequence=sequence, extend_by_seconds=command.extend_by_seconds, reason=command.reason, new_deadline=new_deadline),
        )
        self.progress.deadline = new_deadline
        self.progress.extensions.append(f"+{format_duration(timedelta(seconds=command.extend_by_seconds))}: {command.reason}")
        self.dirty = True
        return self.view()

    @extend.validator
    def _validate_extend(self, command: ExtendCommand) -> None:
        self._require_open()
        if command.extend_by_seconds <= 0:
            raise ApplicationError("extend_by must be positive", type="InvalidExtension")

    @workflow.update
    async def cancel(self, reason: str) -> DealView:
        await workflow.wait_condition(lambda: self.is_booked)
        self._validate_cancel(reason)
        self.progress.cancel_reason = reason
        self.dirty = True
        # The deal may close another way first (its deadline passed while this waited):
        # then this cancel must end too, or the deal could never finish its handlers.
        await workflow.wait_condition(lambda: self.progress.status not in OPEN_DEAL_STATUSES)
        if self.progress.status != DealStatus.cancelled:
            raise ApplicationError(f"deal {self.terms.deal_id} is {self.progress.status.value}", type="DealNotOpen")
        return self.view()

    @cancel.validator
    def _validate_cancel(self, reason: str) -> None:
        self._require_open()
        if self.progress is not None and self.progress.incentive_status == IncentiveStatus.released:
            raise ApplicationError("the incentive was already released; a paid deal cannot be cancelled", type="DealNotOpen")

    # --- signals ----------------------------------------------------------------------------

    @workflow.signal
    def pickup_status(self, pickup_id: str, status: str) -> None:
        """A carrier status the deal must act on: a failed or returned pickup is escalated.

        Every other status lives in the store, where carrier events are recorded, and is shown
        from there: the deal's history does not grow with tracking news.
        """
        if self.progress is None or not any(p.id == pickup_id for p in self.progress.pickups):
            return
        self.progress.pickups = [p.model_copy(update={"status": status}) if p.id == pickup_id else p for p in self.progress.pickups]
        if status in {s.value for s in ESCALATED_CARRIER_STATUSES}:
            self.progress.pending_escalations.append(PickupEscalation(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, pickup_id=pickup_id, status=status))
        self.dirty = True

    # --- the process ------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        if self.progress is None:
            await self._book()
        while not await self._step():
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DealWorkflowInput(terms=self.terms, progress=self.progress))
            await self._sleep_until_something_happens()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.view()

    async def _book(self) -> None:
        # The API answered the booking from the same terms: booked_at is theirs, not this task's.
        self.progress = initial_progress(self.terms, self.terms.booked_at or workflow.now())
        if self.terms.mode == IncentiveMode.upfront:
            await self._ledger("applied")
        self.is_booked = True

    def _condition_met(self) -> bool:
        return self.progress.received_units >= self.required

    def _pending_reminders(self) -> list[float]:
        done = set(self.progress.reminders_sent) | set(self.progress.reminders_skipped)
        return [o for o in self.terms.reminder_offsets_seconds if o not in done]

    async def _step(self) -> bool:
        """Act on the current state; True when the deal has closed."""
        p = self.progress
        # A handler that changes the deal while this step awaits sets `dirty` again, so the
        # loop wakes at once instead of sleeping on a change it has not acted on.
        changed, self.dirty = self.dirty, False
        while p.pending_escalations:
            await _activity(TakebackActivities.escalate_pickup, p.pending_escalations[0])
            p.pending_escalations.pop(0)
        if p.cancel_reason is not None:
            await self._ledger("cancelled")
            p.incentive_status = IncentiveStatus.cancelled
            await self._close(DealStatus.cancelled, f"cancelled: {p.cancel_reason}")
            return True
        if self._condition_met() and p.status == DealStatus.awaiting_returns:
            if self.terms.mode == IncentiveMode.rebate:
                await self._ledger("released")
                p.incentive_status = IncentiveStatus.released
            p.status = DealStatus.condition_met
            changed = True
            if self.terms.mode == IncentiveMode.rebate:
                await self._notify("released")
        if p.received_units >= self.terms.committed_units:
            await self._close(DealStatus.closed, "every committed unit returned")
            return True
        now = workflow.now()
        if now >= p.deadline:
            if self._condition_met():
                await self._close(DealStatus.closed, "return window ended with the condition met")
            else:
                kind = "forfeited" if self.terms.mode == IncentiveMode.rebate else "clawed_back"
                await self._ledger(kind)
                p.incentive_status = IncentiveStatus(kind)
                await self._notify(kind)
                await self._close(DealStatus.expired, "return window ended short of the condition")
            return True
        if not self._condition_met():
            due = [o for o in self._pending_reminders() if p.deadline - timedelta(seconds=o) <= now]
            if due:
                # After downtime several may be due: send the most urgent, skip the stale ones.
                nearest = min(due)
                await _activity(
                    TakebackActivities.send_reminder,
                    ReminderInput(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, offset_seconds=nearest, deadline=p.deadline, received_units=p.received_units, required_units=self.required),
                )
                p.reminders_sent.append(nearest)
                p.reminders_skipped.extend(o for o in due if o != nearest)
                changed = True
        if changed:
            await self._project()
        return False

    async def _sleep_until_something_happens(self) -> None:
        """Wait for a message or the next reminder or deadline.

        One timer per wake-up moment, kept across messages: restarting it on every message
        would add two history events each time.
        """
        p = self.progress
        wake_at = [p.deadline]
        if not self._condition_met():
            wake_at += [p.deadline - timedelta(seconds=o) for o in self._pending_reminders()]
        target = min(wake_at)
        if self.timer is None or self.timer_target != target or self.timer.done():
            if self.timer is not None and not self.timer.done():
                self.timer.cancel()
            seconds = max((target - workflow.now()).total_seconds(), 0.001)
            self.timer = asyncio.ensure_future(workflow.sleep(timedelta(seconds=seconds)))
            self.timer_target = target
        await workflow.wait_condition(lambda: self.dirty or self.timer.done())

    async def _ledger(self, kind: str) -> None:
        amount = Decimal(0) if kind == "cancelled" and self.progress is not None and self.progress.incentive_status == IncentiveStatus.held else self.amount
        await _local(TakebackActivities.record_incentive, LedgerEntry(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=kind, amount=amount))

    async def _notify(self, kind: str) -> None:
        p = self.progress
        await _activity(
            TakebackActivities.notify_settlement,
            SettlementNotice(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=kind, amount=self.amount, deadline=p.deadline, received_units=p.received_units, required_units=self.required),
        )

    async def _project(self) -> None:
        await _local(TakebackActivities.project_deal, self.view())

    async def _close(self, status: DealStatus, reason: str) -> None:
        self.progress.status = status
        self.progress.closed_reason = reason
        await _activity(TakebackActivities.close_deal, self.view(), timeout=LONG)
        await self._stop_pickups()

    async def _stop_pickups(self) -> None:
        """Pickups still in transit stop tracking, and the deal outlives them (no orphans)."""
        running = [child for child in self.pickup_runs if not child.done()]
        for child in running:
            try:
                await child.signal(PickupWorkflow.stop_tracking)
            except Exception:  # the pickup ended meanwhile: nothing to stop
                workflow.logger.info("pickup of deal %s already ended", self.terms.deal_id)
        for child in running:
            try:
                await child
            except Exception:  # a failed pickup must not fail the closed deal
                workflow.logger.warning("pickup of deal %s ended in failure", self.terms.deal_id)
