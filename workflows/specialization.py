"""One partner's specialization: certification, then one specialization year after another."""

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ContinueAsNewVersioningBehavior

with workflow.unsafe.imports_passed_through():
    from activities.partner_activities import PartnerActivities, PartnerMail, TrainingInput, TrainingTotals
    from domain.durations import format_duration
    from workflows import story
    from workflows.notices import Notices
    from domain.deal_progress import PendingNotice
    from domain.specialization import (
        ExamResult,
        SpecializationStatus,
        SpecializationView,
        TrainingRecord,
        certification_complete,
    )

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
TIMEOUT = timedelta(seconds=30)


class SpecializationInput(BaseModel):
    partner_id: str
    year_seconds: float
    reminder_offsets_seconds: list[float]
    state: SpecializationView | None = None  # carried across continue-as-new
    reminders_sent_this_year: list[float] = []
    reminders_due_this_year: list[float] = []  # offsets whose moment came: sent, or not needed
    # Carried so that a continue-as-new never waits on mail (workflows.notices), and a reinstate retried
    # after one is answered, not applied again (the engine de-duplicates update ids within a run only).
    notices_in_flight: list[PendingNotice] = []
    reinstate_requests: list[str] = []


def _activity(fn, *args):
    return workflow.execute_activity_method(fn, args=list(args), start_to_close_timeout=TIMEOUT, retry_policy=ACTIVITY_RETRY)


@workflow.defn
class PartnerSpecializationWorkflow:
    @workflow.init
    def __init__(self, input: SpecializationInput) -> None:
        self.notices = Notices(f"partner {input.partner_id}", list(input.notices_in_flight))
        self.reinstate_requests = list(input.reinstate_requests)
        self.input = input
        self.state = input.state or SpecializationView()
        self.reminders_sent = list(input.reminders_sent_this_year)
        self.reminders_due = list(input.reminders_due_this_year)
        self.dirty = False
        self.woke_for: datetime | None = None  # the moment of the last wake-up whose timer fired

    @workflow.query
    def view(self) -> SpecializationView:
        # deals_this_year is as of the last look at the store; readers count afresh (service.partners).
        return self.state.model_copy(update={"reminders_sent_this_year": [format_duration(timedelta(seconds=o)) for o in self.reminders_sent]})

    # --- what ops (and the partner) record --------------------------------------------------

    @workflow.update
    async def record_training(self, request_id: str, training: TrainingRecord) -> SpecializationView:
        totals: TrainingTotals = await _activity(
            PartnerActivities.record_training,
            TrainingInput(partner_id=self.input.partner_id, request_id=request_id, person_email=training.person_email, person_name=training.person_name, hours=training.hours),
        )
        self.state.training_hours = totals.training_hours
        self.state.trainees = totals.trainees
        self.state.trees_planted = totals.trees_planted
        self.dirty = True
        await self._certify_if_complete()
        return self.view()

    @workflow.update
    async def record_exam(self, result: ExamResult) -> SpecializationView:
        if result.passed and result.exam not in self.state.exams_passed:
            self.state.exams_passed = sorted([*self.state.exams_passed, result.exam])
        await _activity(
            PartnerActivities.record_specialization_event,
            self.input.partner_id,
            f"exam-{result.exam}-{workflow.uuid4()}",
            "exam",
            f"exam {result.exam} {'passed' if result.passed else 'failed'}",
        )
        self.dirty = True
        await self._certify_if_complete()
        return self.view()

    @workflow.update
    async def sign_pledge(self) -> SpecializationView:
        self.state.pledge_signed = True
        self.dirty = True
        await self._certify_if_complete()
        return self.view()

    @workflow.update
    async def reinstate(self, reason: str) -> SpecializationView:
        request_id = workflow.current_update_info().id
        if request_id in self.reinstate_requests:  # a retry, maybe after a continue-as-new: applied once
            return self.view()
        self._validate_reinstate(reason)
        self.reinstate_requests.append(request_id)
        # Reinstated before the await: a second reinstate at the same moment finds it certified (NotLapsed).
        lapsed_year = self.state.year_number
        self.state.status = SpecializationStatus.certified
        self.state.lapsed_at = None
        self._start_year(workflow.now())
        self.dirty = True
        answer = self.view()
        await _activity(PartnerActivities.record_specialization_event, self.input.partner_id, f"reinstated-{lapsed_year}", "reinstated", reason)
        return answer

    @reinstate.validator
    def _validate_reinstate(self, reason: str) -> None:
        if workflow.current_update_info().id in self.reinstate_requests:
            return
        if self.state.status != SpecializationStatus.lapsed:
            raise ApplicationError(f"partner {self.input.partner_id} is {self.state.status.value}, not lapsed", type="NotLapsed")

    # --- the process ------------------------------------------------------------------------

    async def _certify_if_complete(self) -> None:
        """Runs in the update that completes the requirements, so its caller sees `certified`."""
        s = self.state
        if s.status != SpecializationStatus.not_certified or not certification_complete(s):
            return
        s.status = SpecializationStatus.certified  # before any await: a concurrent update cannot certify twice
        self._start_year(workflow.now())
        partner = self.input.partner_id
        await _activity(PartnerActivities.record_specialization_event, partner, "certified", "certified", "")
        await self._project()  # booking reads this projection
        await self._mail(f"{partner}:certified", f"Partner {partner}: Environmental Sustainability Specialization certified",
                         f"Partner {partner} is certified. Specialization year {s.year_number} ends {s.year_end.isoformat()}; book at least one takeback deal before then.")
        self.dirty = True

    def _start_year(self, start) -> None:
        self.state.year_number += 1
        self.state.year_start = start
        self.state.year_end = start + timedelta(seconds=self.input.year_seconds)
        self.state.deals_this_year = 0
        self.reminders_sent = []
        self.reminders_due = []

    async def _project(self) -> None:
        view = self.view()
        await _activity(PartnerActivities.project_specialization, self.input.partner_id, view.status.value, view.model_dump_json())

    async def _mail(self, key: str, subject: str, body: str, copy_ops: bool = False) -> None:
        mail = PartnerMail(key=key, partner_id=self.input.partner_id, subject=subject, body=body, copy_ops=copy_ops)
        # Beside the year: a refused address or a mail outage never holds up certification or a lapse.
        self.notices.send(PartnerActivities.mail_partner, mail, f"mail {key}")

    def _next_wake(self):
        if self.state.status != SpecializationStatus.certified:
            return None
        times = [self.state.year_end]
        times += [self.state.year_end - timedelta(seconds=o) for o in self.input.reminder_offsets_seconds if o not in self.reminders_due]
        return min(times)

    async def _deals_this_year(self) -> int:
        """Asked of the store only at the year's decision points: bookings cost the year nothing."""
        s = self.state
        s.deals_this_year = await _activity(PartnerActivities.deals_in_year, self.input.partner_id, s.year_start, s.year_end)
        return s.deals_this_year

    def _now(self) -> datetime:
        """workflow.now(), never before the moment of a wake-up whose timer fired: a task handling a
        TimerFired was seen with the previous task's time on a worker that cached the workflow through
        queries (temporalio 1.35; the deal's twin is TakebackDealWorkflow._now). Where the clock is
        right (every recorded history) it is workflow.now() itself."""
        now = workflow.now()
        return max(now, self.woke_for) if self.woke_for is not None else now

    async def _step(self) -> bool:
        """Act on the state; True when the year rolled over and the workflow should continue as new."""
        s = self.state
        partner = self.input.partner_id
        await self._certify_if_complete()
        if s.status == SpecializationStatus.certified:
            now = self._now()
            if now >= s.year_end:
                if deals := await self._deals_this_year():
                    await _activity(PartnerActivities.record_specialization_event, partner, f"year-{s.year_number}-completed", "year_completed", f"{deals} deals")
                    self._start_year(s.year_end)
                    await self._project()
                    return True
                s.status = SpecializationStatus.lapsed
                s.lapsed_at = now
                await self._project()  # the booking gate closes before anyone is told
                await _activity(PartnerActivities.record_specialization_event, partner, f"lapsed-{s.year_number}", "lapsed", "no takeback deal in the specialization year")
                await self._mail(f"{partner}:year-{s.year_number}:lapsed", f"Partner {partner}: specialization lapsed",
                                 f"Partner {partner} booked no takeback deal in specialization year {s.year_number}, which ended {s.year_end.isoformat()}. "
                                 "The specialization has lapsed: no new incentive deals are accepted until ops reinstates it.", copy_ops=True)
                self.dirty = True
            else:
                due = [o for o in self.input.reminder_offsets_seconds if o not in self.reminders_due and s.year_end - timedelta(seconds=o) <= now]
                if due:
                    self.reminders_due += due
                    self.dirty = True
                if due and not await self._deals_this_year():
                    nearest = min(due)
                    await self._mail(f"{partner}:year-{s.year_number}:reminder:{format_duration(timedelta(seconds=nearest))}",
                                     f"Partner {partner}: book a takeback deal before {s.year_end:%Y-%m-%d}",
                                     f"Specialization year {s.year_number} of partner {partner} ends {s.year_end.isoformat()} and no takeback deal was booked in it yet. "
                                     "Book at least one to keep the Environmental Sustainability Specialization.")
                    self.reminders_sent.append(nearest)  # the stale ones after downtime are skipped, not sent
        if self.dirty:
            self.dirty = False
            await self._project()
        return False

    @workflow.run
    async def run(self, input: SpecializationInput) -> None:
        self.notices.resume()
        if input.state is None:
            await self._project()
        while True:
            if await self._step() or workflow.info().is_continue_as_new_suggested():
                # Callers get their answers (store writes of a second or two); mail in flight goes with the next run.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    SpecializationInput(
                        partner_id=input.partner_id,
                        year_seconds=input.year_seconds,
                        reminder_offsets_seconds=input.reminder_offsets_seconds,
                        state=self.state,
                        reminders_sent_this_year=self.reminders_sent,
                        reminders_due_this_year=self.reminders_due,
                        notices_in_flight=self.notices.in_flight,
                        reinstate_requests=self.reinstate_requests[-20:],  # the latest: a retry comes within minutes
                    ),
                    initial_versioning_behavior=ContinueAsNewVersioningBehavior.AUTO_UPGRADE,
                )
            wake = self._next_wake()
            timeout = None if wake is None else timedelta(seconds=max((wake - self._now()).total_seconds(), 0.001))
            # The Web UI's account of the partner (workflows/story.py): details and a timer summary, no command.
            workflow.set_current_details(story.partner_current_details(self.view()))
            try:
                await workflow.wait_condition(lambda: self.dirty, timeout=timeout, timeout_summary=story.year_wake_summary(self.state.year_end, wake))
            except TimeoutError:
                self.woke_for = wake  # its timer fired: the moment came (see _now)
