"""One takeback deal from booking to certificate (rules: shared/domain.md).

The deal orchestrates: its deadline and reminders (timers), its pickups, its mail. What came back
and what it is paid are decided by the store (store.settlement), one transaction at a time with
the deal's row locked; the deal adopts the store's answer (`DealTotals`), told by the API after each
receipt (`receipts_counted`) and by its own decision activity. Its counts are a view, never a second
opinion.
"""

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ContinueAsNewVersioningBehavior, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_activities import (
        DealDecision,
        ExtensionRecord,
        PickupBookingInput,
        ReminderInput,
        SettlementNotice,
        TakebackActivities,
    )
    # DealWorkflowInput, DealTotals and ExtendCommand are this workflow's messages; callers import them from here.
    from domain.deal_progress import (  # noqa: F401
        DealTotals,
        DealWorkflowInput,
        ExtendCommand,
        PickupEscalation,
        adopt_totals,
        close_on_settlement,
        deal_view,
        incentive_amount,
        initial_progress,
        required_units,
    )
    from domain.models import (
        BOOKING_FAILED,
        ESCALATED_CARRIER_STATUSES,
        OPEN_DEAL_STATUSES,
        DealStatus,
        DealView,
        PickupRequest,
        PickupView,
    )
    from domain.durations import format_duration
    from workflows import story
    from workflows.ids import pickup_workflow_id
    from workflows.notices import Notices, mail_task_queue
    from workflows.pickup import PickupInput, PickupWorkflow
    from workflows.search_attributes import DEAL_STATUS

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
SHORT = timedelta(seconds=10)
LONG = timedelta(minutes=5)  # certificates of 100,000 items ...
HEARTBEAT = timedelta(seconds=15)  # ... which heartbeat, so a killed worker's attempt is retried soon
# The store writes a decision waits for go ahead of the deal's other tasks on the shared queue: a
# deadline storm (a vendor's quarter-end) decides every deal first. 1 first, 5 last; unset is 3.
DECISION_PRIORITY = Priority(priority_key=1)
# How long a continue-as-new waits for a caller this run is answering (a booking takes a second or two) (a pickup's carrier booking, an
# extension's store write) before it goes anyway: the caller's retry is answered by the next run, which
# carries every applied update id and re-drives a booking in flight. Mail is never waited for.
CALLER_GRACE = timedelta(seconds=10)
SETTLEMENT_NOTICES = ("released", "forfeited", "clawed_back")
PAID_DEAL = "the incentive was already released; a paid deal cannot be cancelled"


def _activity(fn, *args, timeout: timedelta = SHORT, summary: str | None = None, priority: Priority | None = None):
    """A store write or carrier call: an activity (`summary` is its line in the Web UI, workflows/story.py)."""
    return workflow.execute_activity_method(
        fn, args=list(args), start_to_close_timeout=timeout, heartbeat_timeout=HEARTBEAT if timeout > SHORT else None, retry_policy=ACTIVITY_RETRY,
        summary=summary, priority=priority or Priority.default,
    )


class DealNotOpen(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type="DealNotOpen")


@workflow.defn
class TakebackDealWorkflow:
    @workflow.init
    def __init__(self, input: DealWorkflowInput) -> None:
        self.terms = input.terms
        self.amount = incentive_amount(self.terms)
        self.required = required_units(self.terms)
        # The API answered the booking from the same terms: booked_at is theirs, not this task's.
        self.progress = input.progress or initial_progress(self.terms, self.terms.booked_at)
        self.notices = Notices(f"deal {self.terms.deal_id}", self.progress.notices_in_flight, mail_task_queue(workflow.info().task_queue))
        self.dirty = False
        self.pickup_runs: list = []  # child handles of this run
        self.booking_errors: dict[str, str] = {}  # pickup id -> the carrier's refusal, for its caller
        self.pickups_closed_with: list[PickupView] = []
        self.projected = self._projection_key()  # the booking staged this view; an earlier run projected its own
        self.timer: asyncio.Future | None = None  # the pending wake-up, see _sleep_until_something_happens
        self.timer_target: datetime | None = None
        # A deal is pinned to its worker version (Worker Versioning) and moves to the current one when it
        # continues as new, which it does as soon as a task of it sees a new current version; it wakes
        # every TAKEBACK_VERSION_LOOK to look, so an old version drains within that. Mail and bookings
        # in flight go with it.
        self.look_every = timedelta(seconds=self.terms.version_look_seconds) if self.terms.version_look_seconds > 0 else None
        self.next_look = workflow.now() + self.look_every if self.look_every else None
        # The start event says whether the namespace has DealStatus (service.deals.deal_search_attributes),
        # so replay takes the same branch; the value shown is carried over a continue-as-new.
        self.status_shown = workflow.info().typed_search_attributes.get(DEAL_STATUS)

    # --- queries ----------------------------------------------------------------------------

    @workflow.query
    def view(self) -> DealView:
        return deal_view(self.terms, self.progress)

    @workflow.query
    def pickup_for_request(self, request_id: str) -> PickupView | None:
        """The pickup a request id booked (in this run or an earlier one), if any: a retry is answered with it."""
        known = self.progress.pickup_requests.get(request_id)
        return self._pickup(known) if known is not None else None

    # --- signals: what the store decided, and what the carrier reported ---------------------

    @workflow.signal
    def receipts_counted(self, totals: DealTotals) -> None:
        """The store counted a receipt (the API tells the deal after each commit): adopted if newer."""
        if adopt_totals(self.progress, totals):
            self.dirty = True

    @workflow.signal
    def pickup_status(self, pickup_id: str, status: str) -> None:
        """A carrier status the deal must act on: a failed or returned pickup is escalated.

        Every other status lives in the store, where carrier events are recorded, and is shown
        from there: the deal's history does not grow with tracking news.
        """
        if not any(p.id == pickup_id for p in self.progress.pickups):
            return
        self._set_pickup(pickup_id, status=status)
        if status in {s.value for s in ESCALATED_CARRIER_STATUSES}:
            escalation = PickupEscalation(deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, pickup_id=pickup_id, status=status)
            self.notices.send(TakebackActivities.escalate_pickup, escalation, f"pickup escalation ({status})")
        self.dirty = True

    # --- updates: the caller gets the result; every applied id is carried across runs --------

    def _require_open(self) -> None:
        p = self.progress
        if p.status not in OPEN_DEAL_STATUSES:
            raise DealNotOpen(f"deal {self.terms.deal_id} is {p.status.value}")
        if p.closing:
            raise DealNotOpen(f"deal {self.terms.deal_id} is closing: its decision is being recorded")

    # A caller still waiting when the deal continues as new gets "already completed" and retries the same
    # id, which the next run answers (service.deals._update): abandoning it there is intended.
    @workflow.update(unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def request_pickup(self, request: PickupRequest) -> PickupView:
        p = self.progress
        request_id = workflow.current_update_info().id
        pickup_id = p.pickup_requests.get(request_id)
        if pickup_id is None:  # new; a retry of a request this deal took (maybe in an earlier run) is answered with it
            self._require_open()
            pickup_id = f"{self.terms.deal_id}-p{len(p.pickups) + 1}"
            p.pickup_requests[request_id] = pickup_id
            p.pickups.append(PickupView(id=pickup_id, status="booking", carrier="", tracking_number=""))
            p.bookings_in_flight[pickup_id] = request
            self._book_pickup(pickup_id, request)
        await workflow.wait_condition(lambda: self._pickup(pickup_id).status != "booking")
        if self._pickup(pickup_id).status == BOOKING_FAILED:
            reason = self.booking_errors.get(pickup_id)
            raise ApplicationError(f"the carrier could not book pickup {pickup_id}" + (f": {reason}" if reason else ""), type="PickupBookingFailed", non_retryable=True)
        return self._pickup(pickup_id)

    @request_pickup.validator
    def _validate_pickup(self, request: PickupRequest) -> None:
        if workflow.current_update_info().id not in self.progress.pickup_requests:
            self._require_open()

    def _book_pickup(self, pickup_id: str, request: PickupRequest) -> None:
        """Book the carrier beside the deal (a booking in retries holds nothing up), and, when simulated,
        start its tracking; the deal's view shows it booked, or failed for good."""

        async def book() -> None:
            try:
                booked: PickupView = await _activity(
                    TakebackActivities.book_pickup, PickupBookingInput(deal_id=self.terms.deal_id, pickup_id=pickup_id, request=request),
                    summary=f"book the carrier for {pickup_id}",
                )
            except ActivityError as error:
                self.booking_errors[pickup_id] = str(error.cause or error)
                # The carrier refused for good (a real provider gives up after a day): the deal shows it,
                # and a retry of the request is answered with it instead of waiting for a booking that never comes.
                self._set_pickup(pickup_id, status=BOOKING_FAILED)
            else:
                if self.terms.sim_carrier_step_seconds > 0:
                    # Real carriers report by webhook, into the store; only the simulated one needs a process.
                    self.pickup_runs.append(await workflow.start_child_workflow(
                        PickupWorkflow.run,
                        PickupInput(
                            deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, pickup_id=pickup_id, tracking_number=booked.tracking_number,
                            sim_carrier_step_seconds=self.terms.sim_carrier_step_seconds,
                            track_until=self.progress.deadline + timedelta(seconds=self.terms.return_window_seconds),
                        ),
                        id=pickup_workflow_id(booked.tracking_number),
                        parent_close_policy=ParentClosePolicy.ABANDON,  # pickups outlive a continue-as-new and finish on their own
                    ))
                self.progress.pickups = [booked if x.id == pickup_id else x for x in self.progress.pickups]
            self.progress.bookings_in_flight.pop(pickup_id, None)
            self.dirty = True

        asyncio.ensure_future(book())

    def _pickup(self, pickup_id: str) -> PickupView:
        return next(p for p in self.progress.pickups if p.id == pickup_id)

    def _set_pickup(self, pickup_id: str, **changes) -> None:
        self.progress.pickups = [p.model_copy(update=changes) if p.id == pickup_id else p for p in self.progress.pickups]

    @workflow.update(unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def extend(self, command: ExtendCommand) -> DealView:
        p = self.progress
        request_id = workflow.current_update_info().id
        if request_id in p.applied_extensions:  # a retry, maybe after a continue-as-new: applied once
            return self.view()
        self._validate_extend(command)
        # Applied before the await: two extends at once both move the deadline, each by its own amount.
        new_deadline = p.deadline + timedelta(seconds=command.extend_by_seconds)
        sequence = len(p.extensions) + 1
        p.deadline = new_deadline
        p.extensions.append(f"+{format_duration(timedelta(seconds=command.extend_by_seconds))}: {command.reason}")
        p.applied_extensions[request_id] = sequence
        self.dirty = True
        answer = self.view()
        await _activity(
            TakebackActivities.record_extension,
            ExtensionRecord(deal_id=self.terms.deal_id, sequence=sequence, extend_by_seconds=command.extend_by_seconds, reason=command.reason, new_deadline=new_deadline),
            summary=f"record extension {sequence}",
        )
        return answer

    @extend.validator
    def _validate_extend(self, command: ExtendCommand) -> None:
        if workflow.current_update_info().id in self.progress.applied_extensions:
            return
        self._require_open()
        if command.extend_by_seconds <= 0:
            raise ApplicationError("extend_by must be positive", type="InvalidExtension")

    @workflow.update
    async def cancel(self, reason: str) -> DealView:
        """Asks the store to decide the deal cancelled (the run loop does, one decision at a time); the
        store refuses it once the incentive was released, and the caller is told so."""
        p = self.progress
        request_id = workflow.current_update_info().id
        if p.cancel_request != request_id:
            self._validate_cancel(reason)
            p.cancel_reason, p.cancel_request, p.closing = reason, request_id, True
            self.dirty = True
        await workflow.wait_condition(lambda: p.cancel_request != request_id or p.status not in OPEN_DEAL_STATUSES)
        if p.status != DealStatus.cancelled:
            raise DealNotOpen(f"deal {self.terms.deal_id} is {p.status.value}" if p.status not in OPEN_DEAL_STATUSES else PAID_DEAL)
        return self.view()

    @cancel.validator
    def _validate_cancel(self, reason: str) -> None:
        if workflow.current_update_info().id == self.progress.cancel_request:
            return  # a retry: answered with the cancel's outcome
        self._require_open()
        if self.progress.settlement is not None:
            raise DealNotOpen(PAID_DEAL)

    # --- the process ------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        # What an earlier run had on its way when it continued as new: bookings and mail, driven again.
        for pickup_id, request in self.progress.bookings_in_flight.items():
            self._book_pickup(pickup_id, request)
        self.notices.resume()
        while not await self._step():
            if workflow.info().is_continue_as_new_suggested() or self._new_version_is_current():
                await self._continue_as_new()
                continue
            await self._sleep_until_something_happens()
        self._show()
        # Callers get their answers, bookings under way end and mail goes before the run ends; the money is
        # decided and the deal closed already. A booking that ends after the close is shown in the read model.
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self.progress.bookings_in_flight and self.notices.pending == 0)
        if self.progress.pickups != self.pickups_closed_with:  # a booking ended after the close wrote the view
            await self._project()
        return self.view()

    async def _step(self) -> bool:
        """Act on the current state; True when the deal has closed.

        Decide, record, then notify: the store decides (a cancel, the deadline, every unit back), the
        deal adopts its answer, and mail goes beside the deal (`Notices`), never in the way."""
        p = self.progress
        self.dirty = False
        if p.cancel_reason is not None or p.closed_by_store or self._now() >= p.deadline:
            kind = "close" if p.closed_by_store else "cancel" if p.cancel_reason is not None else "deadline"
            if await self._decide(kind):
                return True
        self._tell_settlement()
        if self._condition_met() and p.status == DealStatus.awaiting_returns:
            p.status = DealStatus.condition_met
        elif not self._condition_met():
            now = self._now()
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
        if self._projection_key() != self.projected:
            await self._project()
        return False

    async def _decide(self, kind: str) -> bool:
        """The store decides the deal for good (`kind`: deadline, cancel, close) over the receipts committed
        before it, and closes it in the same activity; the deal adopts the answer. False: the store
        refused a cancel (the incentive was released meanwhile), and the deal stays open."""
        p = self.progress
        p.closing = True  # from here extensions, pickups and cancels are refused
        self.pickups_closed_with = list(p.pickups)  # as the closed view the activity writes shows them
        totals: DealTotals = await _activity(
            TakebackActivities.decide_and_close, DealDecision(terms=self.terms, progress=p, kind=kind), timeout=LONG,
            summary="record the decision, close and certify", priority=DECISION_PRIORITY,
        )
        adopt_totals(p, totals)
        if not totals.closed:
            p.cancel_reason, p.cancel_request, p.closing = None, None, False
            return False
        # The activity closed the deal's copy by the same rules (domain.deal_progress): the view it
        # wrote to the read model and certified is the one this deal now holds.
        close_on_settlement(self.terms, p)
        self._tell_settlement()
        await self._stop_pickups()
        return True

    def _tell_settlement(self) -> None:
        """The partner (ops in copy) is told of the money the store decided, once a deal and outcome."""
        p = self.progress
        if p.settlement in SETTLEMENT_NOTICES and p.settlement_told != p.settlement:
            p.settlement_told = p.settlement
            notice = SettlementNotice(
                deal_id=self.terms.deal_id, partner_id=self.terms.partner_id, kind=p.settlement, amount=self.amount, deadline=p.deadline,
                received_units=p.received_units, required_units=self.required,
            )
            self.notices.send(TakebackActivities.notify_settlement, notice, story.NOTICE_SUMMARY[p.settlement])

    def _condition_met(self) -> bool:
        return self.progress.received_units >= self.required

    def _pending_reminders(self) -> list[float]:
        done = set(self.progress.reminders_sent) | set(self.progress.reminders_skipped)
        return [o for o in self.terms.reminder_offsets_seconds if o not in done]

    def _new_version_is_current(self) -> bool:
        """A new worker version is current, and no caller waits on this run: move to it (continue as new)."""
        return workflow.info().is_target_worker_deployment_version_changed() and workflow.all_handlers_finished()

    async def _continue_as_new(self) -> None:
        """Continue as new (and move to the current worker version), unless something happened meanwhile.
        Waits CALLER_GRACE at most for a caller this run is answering; never for mail, and never past a
        timer: a deadline that comes meanwhile is decided first."""
        timer = self.timer if not self._timer_fired() else None  # the step just acted on a timer that fired before
        woken = lambda: self.dirty or (timer is not None and timer.done())  # noqa: E731
        if not workflow.all_handlers_finished():
            try:
                await workflow.wait_condition(lambda: woken() or workflow.all_handlers_finished(), timeout=CALLER_GRACE)
            except asyncio.TimeoutError:
                pass
        if woken():
            return
        self._show()
        workflow.continue_as_new(
            DealWorkflowInput(terms=self.terms, progress=self.progress), initial_versioning_behavior=ContinueAsNewVersioningBehavior.AUTO_UPGRADE
        )

    def _timer_fired(self) -> bool:
        return self.timer is not None and self.timer.done()

    def _now(self) -> datetime:
        """The deal's time: workflow.now(), never before the moment of a timer that has fired.

        The history's TimerFired says the moment came, whatever the clock of the task says: a worker
        that cached the deal through queries (a fresh worker after another was killed, GETs arriving)
        was seen handling the deadline's TimerFired with the previous task's time (temporalio 1.35),
        and the deal started its deadline timer again instead of deciding (tests/test_topology.py).
        """
        now = workflow.now()
        fired = self._timer_fired() and not self.timer.cancelled() and self.timer_target is not None
        return max(now, self.timer_target) if fired else now

    async def _sleep_until_something_happens(self) -> None:
        """Wait for a message, the next reminder or deadline, or the monthly look for a new worker version.

        One timer per wake-up moment, kept across messages: restarting it on every message
        would add two history events each time.
        """
        p = self.progress
        self._show()
        wake_at = {p.deadline: None}  # moment -> the reminder offset due then (None: the deadline)
        if not self._condition_met():
            wake_at.update({p.deadline - timedelta(seconds=o): o for o in self._pending_reminders() if p.deadline - timedelta(seconds=o) != p.deadline})
        if self.next_look is not None and self._now() >= self.next_look:
            self.next_look = self._now() + self.look_every
        target, summary = min(wake_at), story.wake_summary(wake_at[min(wake_at)])
        if self.next_look is not None and self.next_look < target:
            target, summary = self.next_look, "look for a new worker version"
        if self.timer is None or self.timer_target != target or self.timer.done():
            if self.timer is not None and not self.timer.done():
                self.timer.cancel()
            seconds = max((target - self._now()).total_seconds(), 0.001)
            self.timer = asyncio.ensure_future(workflow.sleep(timedelta(seconds=seconds), summary=summary))
            self.timer_target = target
        await workflow.wait_condition(lambda: self.dirty or self.timer.done() or self._new_version_is_current())

    def _show(self) -> None:
        """The deal's story in the Web UI: its current details (no command) and, where the namespace has
        it, the DealStatus search attribute (a command, on each change of status)."""
        view = self.view()
        workflow.set_current_details(story.deal_current_details(view))
        if self.status_shown is not None and view.status.value != self.status_shown:
            workflow.upsert_search_attributes([DEAL_STATUS.value_set(view.status.value)])
            self.status_shown = view.status.value

    def _projection_key(self) -> tuple:
        """What of the read model's copy only the deal knows: its status, deadline, extensions and pickups.
        Counts and the incentive's status are written by the store's own transactions, a sent reminder by its
        activity: a change of those alone costs the deal no projection."""
        p = self.progress
        return (p.status, p.deadline, len(p.extensions), tuple((x.id, x.status, x.tracking_number) for x in p.pickups))

    async def _project(self) -> None:
        self.progress.revision += 1
        self.projected = self._projection_key()
        await _activity(TakebackActivities.project_deal, self.view(), summary="update the read model")

    async def _stop_pickups(self) -> None:
        """Pickups still in transit stop tracking, and the deal outlives them (no orphans)."""
        if self.terms.sim_carrier_step_seconds <= 0:
            return
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
