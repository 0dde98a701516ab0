"""One takeback deal from booking to certificate (rules: shared/domain.md)."""

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_activities import (
        DeadlineClose,
        DeadlineSettlement,
        ExtensionRecord,
        LedgerEntry,
        PickupBookingInput,
        ReceiptSweep,
        ReminderInput,
        SettlementEntry,
        SettlementNotice,
        TakebackActivities,
        deadline_decision,
        deadline_outcome,
    )
    # DealWorkflowInput and ExtendCommand are this workflow's messages; callers import them from here.
    from domain.deal_progress import (  # noqa: F401
        DealWorkflowInput,
        ExtendCommand,
        PickupEscalation,
        adopt_settlement,
        close_on_settlement,
        count_receipt,
        deal_view,
        incentive_amount,
        initial_progress,
        required_units,
        take_in_deadline_decision,
    )
    from domain.models import (
        BOOKING_FAILED,
        ESCALATED_CARRIER_STATUSES,
        OPEN_DEAL_STATUSES,
        DealStatus,
        DealView,
        IncentiveMode,
        IncentiveStatus,
        PickupRequest,
        PickupView,
        ReceiptCounts,
    )
    from domain.durations import format_duration
    from workflows import story
    from workflows.ids import pickup_workflow_id
    from workflows.notices import Notices, mail_task_queue
    from workflows.pickup import PickupInput, PickupWorkflow
    from workflows.search_attributes import DEAL_STATUS

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
SHORT = timedelta(seconds=10)
LONG = timedelta(minutes=5)  # receipts of thousands of items, certificates of 100,000 ...
HEARTBEAT = timedelta(seconds=15)  # ... which heartbeat, so a killed worker's attempt is retried soon

# Decide, record, then notify: settlements are one row per deal, decided before any mail, and mail
# runs beside the deal instead of in its way. Deals started before this change replay as they ran.
DECIDE_THEN_NOTIFY = "decide-then-notify"
# Store writes are activities, not local activities: updates arriving while a local activity is
# outstanding made histories that do not replay (resolution order differs between the first run and
# replay: temporalio/sdk-python#1573, #1591), so an evicted or restarted deal failed every task.
STORE_WRITES_AS_ACTIVITIES = "store-writes-as-activities"
# A deal started with the DealStatus search attribute (TAKEBACK_SEARCH_ATTRIBUTES) keeps it current, so
# ops filter deals by status in the Web UI. An upsert is a command: deals begun by a worker without
# this code replay as they ran.
DEAL_STATUS_SEARCH_ATTRIBUTE = "deal-status-search-attribute"
# A deadline storm (thousands of deals due in one second, a vendor's quarter-end) decides every deal
# first: mail goes to its own queue (workflows.notices.mail_task_queue), served at the provider's
# pace, and the store writes a decision waits for (the sweep of receipts staged by the deadline, the
# settlement) go ahead of the deal's other tasks (read model, certificate) on the shared queue.
# Commands change (a queue, a priority): deals begun before this replay as they ran.
DECIDE_FIRST = "decide-first"
DECISION_PRIORITY = Priority(priority_key=1)  # 1 first, 5 last; unset is 3
# At the deadline the deal sweeps the receipts staged by it and records its settlement in one
# activity (TakebackActivities.sweep_and_settle), deciding by the same rule (deadline_outcome) on its
# count plus the swept units, then adopts the settlement the store holds: one activity and one
# workflow task between the deadline and the recorded decision instead of two and two, which a
# storm of deadlines (a quarter-end) pays thousands of times. Commands change: deals begun before
# this replay as they ran.
DECIDE_AT_ONCE = "decide-at-once"
# ... and closes in that same activity (TakebackActivities.decide_and_close): the read model's closed
# view and the certificate are written from the deal's state and the settlement by the rules the deal
# applies to itself (domain.deal_progress), so the deal closes with one activity and one workflow task
# after its deadline instead of two and two. Measured in a 2,000-deal storm: see bench/RESULTS.md.
# Commands change: deals begun before this replay as they ran (v4 histories).
DECIDE_AND_CLOSE = "decide-and-close"


def _activity(fn, *args, timeout: timedelta = SHORT, summary: str | None = None, priority: Priority | None = None):
    """A task of its own: for mail (a provider may be slow or rate-limit) and long store work that heartbeats.
    `summary`: its line in the Web UI (workflows/story.py); `priority`: DECISION_PRIORITY for a decision's writes."""
    return workflow.execute_activity_method(
        fn, args=list(args), start_to_close_timeout=timeout, heartbeat_timeout=HEARTBEAT if timeout > SHORT else None, retry_policy=ACTIVITY_RETRY,
        summary=summary, priority=priority or Priority.default,
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
        self.v2 = workflow.patched(DECIDE_THEN_NOTIFY)
        self.v3 = workflow.patched(STORE_WRITES_AS_ACTIVITIES)
        self.terms = input.terms
        self.amount = incentive_amount(self.terms)
        self.required = required_units(self.terms)
        self.progress = input.progress
        self.receipts_in_flight = 0  # accepted receipts not yet counted: the decision waits for them
        self.pickups_in_flight = 0  # accepted pickups not yet booked: the closed view and certificate wait for them
        self.decide_first = workflow.patched(DECIDE_FIRST)
        self.notices = Notices(f"deal {input.terms.deal_id}", mail_task_queue(workflow.info().task_queue) if self.decide_first else None)
        # The priority of the writes a decision waits for (DECIDE_FIRST).
        self.decision_priority = DECISION_PRIORITY if self.decide_first else None
        self.is_booked = input.progress is not None
        self.dirty = False
        self.pickup_runs: list = []  # child handles of this run
        self.timer: asyncio.Future | None = None  # the pending wake-up, see _sleep_until_something_happens
        self.timer_target: datetime | None = None
        # The start event says whether the namespace has DealStatus (service.deals.deal_search_attributes),
        # so replay takes the same branch; the value shown is carried over a continue-as-new.
        self.status_shown = workflow.info().typed_search_attributes.get(DEAL_STATUS)
        self.keeps_status_attribute = self.status_shown is not None and workflow.patched(DEAL_STATUS_SEARCH_ATTRIBUTE)

    # --- queries ----------------------------------------------------------------------------

    @workflow.query
    def view(self) -> DealView:
        if self.progress is None:
            raise ApplicationError("the deal is still being booked", type="DealBooking")
        return deal_view(self.terms, self.progress)

    @workflow.query
    def pickup_for_request(self, request_id: str) -> PickupView | None:
        """The pickup a request id booked (in this run or an earlier one), if any: a retry is answered with it."""
        known = self.progress.pickup_requests.get(request_id) if self.progress is not None else None
        return self._pickup(known) if known is not None else None

    # --- updates: the caller gets the result ------------------------------------------------

    def _require_open(self) -> None:
        if self.progress is not None and self.progress.status not in OPEN_DEAL_STATUSES:
            raise ApplicationError(f"deal {self.terms.deal_id} is {self.progress.status.value}", type="DealNotOpen")
        if self.progress is not None and self.progress.closing:
            raise ApplicationError(f"deal {self.terms.deal_id} is closing: its decision is being recorded", type="DealNotOpen")

    @workflow.update
    async def request_pickup(self, request: PickupRequest) -> PickupView:
        await workflow.wait_condition(lambda: self.is_booked)
        request_id = workflow.current_update_info().id
        known = self.progress.pickup_requests.get(request_id)
        if known is not None:  # a retry of a request this deal took, maybe in an earlier run
            await workflow.wait_condition(lambda: self._pickup(known).status != "booking")
            if self._pickup(known).status == BOOKING_FAILED:
                raise ApplicationError(f"the carrier could not book pickup {known}", type="PickupBookingFailed", non_retryable=True)
            return self._pickup(known)
        self._require_open()
        pickup_id = f"{self.terms.deal_id}-p{len(self.progress.pickups) + 1}"
        self.progress.pickup_requests[request_id] = pickup_id
        self.progress.pickups.append(PickupView(id=pickup_id, status="booking", carrier="", tracking_number=""))
        self.pickups_in_flight += 1
        try:
            booked = await self._book_pickup(pickup_id, request)
        except ActivityError as error:
            # The carrier refused the booking for good (a real provider gives up after a day): the
            # deal shows it, and a retry of the request is answered with it instead of waiting for
            # a booking that never comes. Commands are unchanged where a booking never failed, as
            # in every recorded history (the simulated carrier retries for as long as it takes).
            self.progress.pickups = [p.model_copy(update={"status": BOOKING_FAILED}) if p.id == pickup_id else p for p in self.progress.pickups]
            self.dirty = True
            raise ApplicationError(f"the carrier could not book pickup {pickup_id}: {error.cause or error}", type="PickupBookingFailed", non_retryable=True) from None
        finally:
            self.pickups_in_flight -= 1
        self.dirty = True
        return booked

    async def _book_pickup(self, pickup_id: str, request: PickupRequest) -> PickupView:
        """Book the carrier (and, when simulated, start its tracking); the deal's view shows it booked."""
        booked: PickupView = await self._write(
            TakebackActivities.book_pickup, PickupBookingInput(deal_id=self.terms.deal_id, pickup_id=pickup_id, request=request), summary=f"book the carrier for {pickup_id}"
        )
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
        return booked

    def _write(self, fn, *args, timeout: timedelta = SHORT, summary: str | None = None, priority: Priority | None = None):
        """A store write: an activity (see STORE_WRITES_AS_ACTIVITIES); deals started before it replay their local activities."""
        if self.v3:
            return _activity(fn, *args, timeout=timeout, summary=summary, priority=priority)
        return _local(fn, *args, timeout=timeout)

    def _pickup(self, pickup_id: str) -> PickupView:
        return next(p for p in self.progress.pickups if p.id == pickup_id)

    @request_pickup.validator
    def _validate_pickup(self, request: PickupRequest) -> None:
        if self.progress is not None and workflow.current_update_info().id in self.progress.pickup_requests:
            return  # a retry: answered with the pickup it booked
        self._require_open()

    @workflow.update
    async def record_receipt(self, batch_id: str) -> ReceiptCounts:
        # Counted from acceptance: a deal that starts to close meanwhile waits for this receipt and decides with it.
        self.receipts_in_flight += 1
        try:
            await workflow.wait_condition(lambda: self.is_booked)
            if not self.v2:
                self._require_open()
            if self.v2:  # an activity of its own, heartbeating: a batch of thousands does not hold the workflow task
                counts: ReceiptCounts = await _activity(TakebackActivities.process_receipt, self.terms.deal_id, batch_id, timeout=LONG, summary="process a receipt batch")
            else:
                counts = await _local(TakebackActivities.process_receipt, self.terms.deal_id, batch_id, timeout=LONG)
            self._count(counts)
        finally:
            self.receipts_in_flight -= 1
        return counts

    def _count(self, counts: ReceiptCounts) -> None:
        if count_receipt(self.progress, counts):  # a repeated update counts once
            self.dirty = True

    @record_receipt.validator
    def _validate_receipt(self, batch_id: str) -> None:
        self._require_open()

    @workflow.update
    async def extend(self, command: ExtendCommand) -> DealView:
        await workflow.wait_condition(lambda: self.is_booked)
        self._require_open()
        # Applied before the await: two extends at once both move the deadline, each by its own amount.
        new_deadline = self.progress.deadline + timedelta(seconds=command.extend_by_seconds)
        sequence = len(self.progress.extensions) + 1
        self.progress.deadline = new_deadline
        self.progress.extensions.append(f"+{format_duration(timedelta(seconds=command.extend_by_seconds))}: {command.reason}")
        self.dirty = True
        answer = self.view()
        await self._write(
            TakebackActivities.record_extension,
            ExtensionRecord(deal_id=self.terms.deal_id, sequence=sequence, extend_by_seconds=command.extend_by_seconds, reason=command.reason, new_deadline=new_deadline),
            summary=f"record extension {sequence}",
        )
        return answer

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
        if self.v2:
            self.progress.closing = True  # nothing arriving after this cancel changes the deal
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
        if self.progress is not None and (self.progress.incentive_status == IncentiveStatus.released or self.progress.settlement is not None):
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
            escalation = PickupEscalation(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, pickup_id=pickup_id, status=status)
            if self.v2:
                self.notices.send(TakebackActivities.escalate_pickup, escalation, f"pickup escalation ({status})")  # also after the decision, while the run lasts
            else:
                self.progress.pending_escalations.append(escalation)
        self.dirty = True

    # --- the process ------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        if self.progress is None:
            await self._book()
        if not self.v2:
            return await self._run_v1()
        while not await self._step():
            if workflow.info().is_continue_as_new_suggested():
                # Handlers and mail finish in this run; a cancel or receipt arriving meanwhile is
                # acted on first (a cancel waits for the deal to close: waiting on it would never end).
                await workflow.wait_condition(lambda: self.dirty or (workflow.all_handlers_finished() and self.notices.pending == 0))
                if not self.dirty:
                    workflow.continue_as_new(DealWorkflowInput(terms=self.terms, progress=self.progress))
                continue
            await self._sleep_until_something_happens()
        self._show()
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and self.notices.pending == 0)
        return self.view()

    async def _run_v1(self) -> DealView:
        """Deals started before DECIDE_THEN_NOTIFY: as they ran. Removed once none is open."""
        while not await self._step_v1():
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DealWorkflowInput(terms=self.terms, progress=self.progress))
            await self._sleep_until_something_happens()
        self._show()
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
        """Act on the current state; True when the deal has closed.

        Decide, record, then notify: every decision changes the state before its first await (so
        a handler running meanwhile sees it), is recorded in the store before anything is told,
        and mail goes beside the deal (`Notices`), never in the way of a decision.
        """
        p = self.progress
        changed, self.dirty = self.dirty, False
        now = self._now()
        if not p.closing and (p.cancel_reason is not None or p.received_units >= self.terms.committed_units or now >= p.deadline):
            p.closing = True  # from here receipts, extensions, pickups and cancels are refused
        if p.closing:
            await self._close()
            return True
        if self._condition_met() and p.status == DealStatus.awaiting_returns:
            p.status = DealStatus.condition_met
            changed = True
            if self.terms.mode == IncentiveMode.rebate and p.settlement is None:
                await self._settle("released")
        elif not self._condition_met():
            due = [o for o in self._pending_reminders() if p.deadline - timedelta(seconds=o) <= now]
            if due:
                # After downtime several may be due: send the most urgent, skip the stale ones.
                nearest = min(due)
                p.reminders_sent.append(nearest)
                p.reminders_skipped.extend(o for o in due if o != nearest)
                self.notices.send(
                    TakebackActivities.send_reminder,
                    ReminderInput(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, offset_seconds=nearest, deadline=p.deadline, received_units=p.received_units, required_units=self.required),
                    story.wake_summary(nearest),
                )
                changed = True
        if changed:
            await self._project()
        return False

    async def _close(self) -> None:
        """The deal's end: wait for the receipts it accepted, take in those staged by its deadline,
        decide once, record, project, certify; then notify."""
        p = self.progress
        await workflow.wait_condition(lambda: self.receipts_in_flight == 0 and self.pickups_in_flight == 0)
        at_deadline = p.cancel_reason is None and self._now() >= p.deadline
        # The patches are asked only where the commands differ (a deal closing at its deadline): no marker
        # in the history of a deal that closes otherwise.
        if at_deadline and workflow.patched(DECIDE_AND_CLOSE):
            await self._decide_at_deadline(
                TakebackActivities.decide_and_close, DeadlineClose(terms=self.terms, progress=p),
                "take in the receipts staged by the deadline, record the decision, close and certify",
            )
            # The activity closed the deal's copy by the same rules (domain.deal_progress): the view it
            # wrote to the read model and certified is the one this deal now holds.
            close_on_settlement(self.terms, p)
            await self._stop_pickups()
            return
        if at_deadline and workflow.patched(DECIDE_AT_ONCE):
            await self._decide_at_deadline(
                TakebackActivities.sweep_and_settle, deadline_decision(self.terms, p), "take in the receipts staged by the deadline and record the decision"
            )
        elif at_deadline:
            sweep = ReceiptSweep(deal_id=self.terms.deal_id, staged_until=p.deadline)
            swept = await _activity(
                TakebackActivities.sweep_receipts, sweep, timeout=LONG, summary="take in the receipts staged by the deadline", priority=self.decision_priority
            )
            for counts in swept:
                self._count(counts)
        if p.settlement is None:
            await self._settle("cancelled" if p.cancel_reason is not None else deadline_outcome(self.terms.mode.value, p.received_units, self.required))
        close_on_settlement(self.terms, p)
        await _activity(TakebackActivities.close_deal, self.view(), timeout=LONG, summary="close and certify")
        await self._stop_pickups()

    async def _decide_at_deadline(self, fn, decision, summary: str) -> None:
        """The deadline's decision in one activity (DECIDE_AT_ONCE; with the close, DECIDE_AND_CLOSE): the
        receipts staged by the deadline are counted, and the settlement the store holds (this one, or the
        first recorded) is adopted. The deal is closing, so no cancel, receipt or extension changes it meanwhile."""
        p = self.progress
        already = p.settlement is not None  # a rebate released before its deadline: the sweep only counts
        decided: DeadlineSettlement = await _activity(fn, decision, timeout=LONG, summary=summary, priority=self.decision_priority)
        take_in_deadline_decision(p, decided.swept, decided.outcome)
        if not already:
            self._stand_by(decided.outcome, deadline_outcome(self.terms.mode.value, p.received_units, self.required))

    def _stand_by(self, held: str, decided: str) -> None:
        """The store's settlement stands: one other than this deal decided is adopted (and logged);
        the partner is told of the deal's own, beside the deal."""
        if held != decided:
            workflow.logger.warning("deal %s: the store holds the settlement %s, not %s; it stands", self.terms.deal_id, held, decided)
            adopt_settlement(self.progress, held)
            return
        if decided in ("released", "forfeited", "clawed_back"):
            self.notices.send(TakebackActivities.notify_settlement, self._settlement_notice(decided), story.NOTICE_SUMMARY[decided])

    async def _settle(self, outcome: str) -> None:
        """Decide the deal's money once. The state changes first, so a cancel or a second decision
        arriving while the store write runs is refused; the store keeps the first outcome for the
        deal, and the deal adopts what it holds. Then the partner is told, beside the deal."""
        p = self.progress
        adopt_settlement(p, outcome)
        amount = Decimal(0) if outcome == "cancelled" and self.terms.mode == IncentiveMode.rebate else self.amount
        decided = await self._write(
            TakebackActivities.record_settlement, SettlementEntry(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, outcome=outcome, amount=amount),
            summary=f"record the decision: {outcome}",
            priority=self.decision_priority,
        )
        self._stand_by(decided.outcome, outcome)

    def _settlement_notice(self, kind: str) -> SettlementNotice:
        p = self.progress
        return SettlementNotice(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=kind, amount=self.amount, deadline=p.deadline, received_units=p.received_units, required_units=self.required)

    async def _step_v1(self) -> bool:
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
            await self._close_v1(DealStatus.cancelled, f"cancelled: {p.cancel_reason}")
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
            await self._close_v1(DealStatus.closed, "every committed unit returned")
            return True
        now = self._now()
        if now >= p.deadline:
            if self._condition_met():
                await self._close_v1(DealStatus.closed, "return window ended with the condition met")
            else:
                kind = "forfeited" if self.terms.mode == IncentiveMode.rebate else "clawed_back"
                await self._ledger(kind)
                p.incentive_status = IncentiveStatus(kind)
                await self._notify(kind)
                await self._close_v1(DealStatus.expired, "return window ended short of the condition")
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

    def _now(self) -> datetime:
        """The deal's time: workflow.now(), never before the moment of a timer that has fired.

        The history's TimerFired says the moment came, whatever the clock of the task says: a worker
        that cached the deal through queries (a fresh worker after another was killed, GETs arriving)
        was seen handling the deadline's TimerFired with the previous task's time (temporalio 1.35):
        the deal started its deadline timer again instead of deciding, and that history no longer
        replayed, so the deal stuck undecided (tests/test_topology.py). On every history where the
        clock is right this is workflow.now() itself (a timer fires after its moment), so no recorded
        history takes another path.
        """
        now = workflow.now()
        fired = self.timer is not None and self.timer.done() and not self.timer.cancelled() and self.timer_target is not None
        return max(now, self.timer_target) if fired else now

    async def _sleep_until_something_happens(self) -> None:
        """Wait for a message or the next reminder or deadline.

        One timer per wake-up moment, kept across messages: restarting it on every message
        would add two history events each time.
        """
        p = self.progress
        self._show()
        wake_at = {p.deadline: None}  # moment -> the reminder offset due then (None: the deadline)
        if not self._condition_met():
            wake_at.update({p.deadline - timedelta(seconds=o): o for o in self._pending_reminders() if p.deadline - timedelta(seconds=o) != p.deadline})
        target = min(wake_at)
        if self.timer is None or self.timer_target != target or self.timer.done():
            if self.timer is not None and not self.timer.done():
                self.timer.cancel()
            seconds = max((target - self._now()).total_seconds(), 0.001)
            self.timer = asyncio.ensure_future(workflow.sleep(timedelta(seconds=seconds), summary=story.wake_summary(wake_at[target])))
            self.timer_target = target
        await workflow.wait_condition(lambda: self.dirty or self.timer.done())

    def _show(self) -> None:
        """The deal's story in the Web UI: its current details (no command, nothing to replay) and, where
        the deal keeps it, the DealStatus search attribute (a command, on each change of status)."""
        if self.progress is None:
            return
        view = self.view()
        workflow.set_current_details(story.deal_current_details(view))
        if self.keeps_status_attribute and view.status.value != self.status_shown:
            workflow.upsert_search_attributes([DEAL_STATUS.value_set(view.status.value)])
            self.status_shown = view.status.value

    async def _ledger(self, kind: str) -> None:
        amount = Decimal(0) if kind == "cancelled" and self.progress is not None and self.progress.incentive_status == IncentiveStatus.held else self.amount
        await self._write(TakebackActivities.record_incentive, LedgerEntry(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=kind, amount=amount), summary=f"ledger: {kind}")

    async def _notify(self, kind: str) -> None:
        p = self.progress
        await _activity(
            TakebackActivities.notify_settlement,
            SettlementNotice(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=kind, amount=self.amount, deadline=p.deadline, received_units=p.received_units, required_units=self.required),
        )

    async def _project(self) -> None:
        self.progress.revision += 1
        await self._write(TakebackActivities.project_deal, self.view(), summary="update the read model")

    async def _close_v1(self, status: DealStatus, reason: str) -> None:
        self.progress.status = status
        self.progress.closed_reason = reason
        await _activity(TakebackActivities.close_deal, self.view(), timeout=LONG)
        await self._stop_pickups()

    async def _stop_pickups(self) -> None:
        """Pickups still in transit stop tracking, and the deal outlives them (no orphans)."""
        if self.v2 and self.terms.sim_carrier_step_seconds > 0:
            # Pickups started by an earlier run (before a continue-as-new) are no children of this one.
            ours = {child.id for child in self.pickup_runs}
            for pickup in self.progress.pickups:
                if pickup.tracking_number and pickup_workflow_id(pickup.tracking_number) not in ours:
                    try:
                        await workflow.get_external_workflow_handle(pickup_workflow_id(pickup.tracking_number)).signal(PickupWorkflow.stop_tracking)
                    except Exception:  # it ended already
                        workflow.logger.info("pickup %s of deal %s already ended", pickup.id, self.terms.deal_id)
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
