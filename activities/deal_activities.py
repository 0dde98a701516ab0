"""Activities of the deal and pickup workflows. Each is idempotent for (deal id, step)."""

import functools
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.carrier import carrier_from_settings
from activities.mailer import Mail, Mailer, mailer_from_settings
from domain.catalog import Catalog, default_catalog
from domain.deal_progress import DealProgress, PickupEscalation, close_on_settlement, deal_view, incentive_amount, required_units, take_in_deadline_decision
from domain.durations import format_duration
from domain.models import CarrierEvent, DealTerms, DealView, IncentiveMode, PickupRequest, PickupView, ReceiptCounts
from domain.rules import RuleViolation
from observability import worker_metrics
from settings import Settings
from store import deals as store
from store import mail as mail_store
from store.db import session_scope
from store.deals import CarrierEventOutcome, SettlementOutcome
from store.tables import EmailMessage, Pickup, ReceiptBatch, ReminderSent, Settlement


class ReminderInput(BaseModel):
    deal_id: str
    partner_id: str
    offset_seconds: float
    deadline: datetime
    received_units: int
    required_units: int


class SettlementNotice(BaseModel):
    deal_id: str
    partner_id: str
    kind: str  # released | forfeited | clawed_back
    amount: Decimal
    deadline: datetime
    received_units: int
    required_units: int


class LedgerEntry(BaseModel):
    deal_id: str
    partner_id: str
    kind: str
    amount: Decimal


class SettlementEntry(BaseModel):
    deal_id: str
    partner_id: str
    outcome: str  # released | forfeited | clawed_back | cancelled | applied
    amount: Decimal


class ReceiptSweep(BaseModel):
    deal_id: str
    staged_until: datetime


class DeadlineDecision(BaseModel):
    """What a deal decides on at its deadline: its counts so far and its terms' rule inputs."""

    deal_id: str
    partner_id: str
    staged_until: datetime  # the deadline: batches staged by it count
    counted_batches: list[str]  # the batches the deal has counted already
    received_units: int  # counted so far
    required_units: int
    mode: str  # IncentiveMode: rebate | upfront
    amount: Decimal


def deadline_decision(terms: DealTerms, progress: DealProgress) -> DeadlineDecision:
    """What a deal decides on at its deadline, from its terms and its state."""
    return DeadlineDecision(
        deal_id=terms.deal_id, partner_id=terms.partner_id, staged_until=progress.deadline, counted_batches=list(progress.processed_batches),
        received_units=progress.received_units, required_units=required_units(terms), mode=terms.mode.value, amount=incentive_amount(terms),
    )


class DeadlineClose(BaseModel):
    """A deal at its deadline, as it holds itself when it starts closing (patch decide-and-close)."""

    terms: DealTerms
    progress: DealProgress


class DeadlineSettlement(BaseModel):
    swept: list[ReceiptCounts]  # batches taken in by the deadline that the deal had not counted
    outcome: str  # the settlement the store holds (the first one recorded for the deal)
    amount: Decimal
    recorded: bool  # recorded by this call (False: one was held already, which stands)


def deadline_outcome(mode: str, received_units: int, required_units: int) -> str:
    """The money decision at a deal's deadline (shared/domain.md): the condition is met when at
    least the required units came back; a rebate is then released and an upfront incentive stays
    applied, else the rebate is forfeited or the upfront incentive clawed back. The workflow and
    `sweep_and_settle` decide with this one rule."""
    met = received_units >= required_units
    if mode == IncentiveMode.rebate.value:
        return "released" if met else "forfeited"
    return "applied" if met else "clawed_back"


class ExtensionRecord(BaseModel):
    deal_id: str
    sequence: int
    extend_by_seconds: float
    reason: str
    new_deadline: datetime


class PickupBookingInput(BaseModel):
    deal_id: str
    pickup_id: str
    request: PickupRequest


def non_retryable_on_bad_input(fn):
    """Bad input will be as bad on the next attempt: fail the activity for good."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuleViolation, LookupError) as error:
            raise ApplicationError(str(error), type=type(error).__name__, non_retryable=True) from error

    return wrapper


class TakebackActivities:
    def __init__(self, settings: Settings, mailer: Mailer | None = None, catalog: Catalog | None = None):
        self.settings = settings
        self.database_url = settings.effective_database_url
        self.mailer = mailer or mailer_from_settings(settings)
        self.catalog = catalog or default_catalog()
        self.carrier = carrier_from_settings(settings)  # TAKEBACK_CARRIER: sim (default) or easypost

    def all(self) -> list:
        return [
            self.book_pickup,
            self.record_carrier_event,
            self.escalate_pickup,
            self.process_receipt,
            self.record_incentive,
            self.record_settlement,
            self.sweep_receipts,
            self.sweep_and_settle,
            self.decide_and_close,
            self.record_extension,
            self.send_reminder,
            self.notify_settlement,
            self.project_deal,
            self.close_deal,
        ]

    # --- mail -------------------------------------------------------------------------------

    def _send_once(self, mail: Mail) -> bool:
        """Queue the message under its key, claim it, then deliver it; True if this attempt sent it.

        The claim comes before the provider call, so an attempt that timed out while still running
        cannot be doubled by its retry (the claim outlives it). A message the provider refuses
        for good is `failed` with the provider's reason, and the activity ends normally: a bad
        address never fails a deal. Everything else raises for Temporal to retry.
        """
        with session_scope(self.database_url) as session:
            row = mail_store.queue(
                session,
                EmailMessage(key=mail.key, deal_id=mail.deal_id, partner_id=mail.partner_id, to=mail.to, cc=mail.cc, subject=mail.subject, body=mail.body),
            )
            if row.state in ("sent", "failed"):
                return False
            if not mail_store.claim(session, mail.key):
                session.expire_all()
                if session.get(EmailMessage, mail.key).state != "sending":
                    return False  # sent meanwhile, or given up as outcome unknown
                raise ApplicationError(
                    f"message {mail.key} is being sent by another attempt", type="MailInFlight", next_retry_delay=mail_store.CLAIM_LEASE / 10
                )
            try:
                provider_id = self.mailer.send(mail, self.settings.mail_from)
            except ApplicationError as error:
                if error.non_retryable:
                    mail_store.mark_failed(session, mail.key, str(error))
                    activity.logger.warning("mail %s failed for good: %s", mail.key, error)
                    worker_metrics.mail_failed(mail.key, error)
                    return False
                mail_store.release_for_retry(session, mail.key, str(error))
                worker_metrics.mail_attempt_failed(mail.key, error)
                raise
            except Exception as error:
                mail_store.release_for_retry(session, mail.key, repr(error))
                worker_metrics.mail_attempt_failed(mail.key, error)
                raise
            mail_store.mark_sent(session, mail.key, provider_id)
            worker_metrics.mail_sent(mail.key)
            return True

    def _contact(self, session, partner_id: str) -> str:
        return store.partner_contact(session, partner_id) or self.settings.ops_email

    # --- booking ----------------------------------------------------------------------------

    # --- pickups ----------------------------------------------------------------------------

    @activity.defn
    @non_retryable_on_bad_input
    def book_pickup(self, booking: PickupBookingInput) -> PickupView:
        with session_scope(self.database_url) as session:
            existing = session.get(Pickup, booking.pickup_id)
            if existing is None:
                carrier = self.carrier.book(booking.pickup_id, booking.deal_id, booking.request)
                existing = store.save_pickup(session, booking.pickup_id, booking.deal_id, carrier.carrier, carrier.tracking_number, booking.request)
            return PickupView(id=existing.id, status=existing.status, carrier=existing.carrier, tracking_number=existing.tracking_number)

    @activity.defn
    def record_carrier_event(self, event: CarrierEvent) -> CarrierEventOutcome:
        """The simulated carrier's event, recorded as a webhook's would be."""
        with session_scope(self.database_url) as session:
            outcome = store.record_carrier_event(session, event)
        if outcome is None:
            raise ApplicationError(f"no pickup has tracking number {event.tracking_number}", type="UnknownTracking", non_retryable=True)
        return outcome

    @activity.defn
    def escalate_pickup(self, escalation: PickupEscalation) -> bool:
        """Tell the partner (ops in copy) that a pickup went wrong; once per (pickup, status)."""
        with session_scope(self.database_url) as session:
            contact = self._contact(session, escalation.partner_id)
            pickup = session.get(Pickup, escalation.pickup_id)
            tracking = pickup.tracking_number if pickup is not None else "unknown"
        return self._send_once(
            Mail(
                key=f"{escalation.deal_id}:{escalation.pickup_id}:escalation:{escalation.status}",
                deal_id=escalation.deal_id,
                partner_id=escalation.partner_id,
                to=contact,
                cc=self.settings.ops_email,
                subject=f"Takeback deal {escalation.deal_id}: pickup {escalation.pickup_id} reported {escalation.status}",
                body=(
                    f"The carrier reported '{escalation.status}' for pickup {escalation.pickup_id} "
                    f"(tracking {tracking}) of takeback deal {escalation.deal_id}.\n"
                    "Ops will contact the carrier; please check the pickup address and contact details."
                ),
            )
        )

    # --- receipts ---------------------------------------------------------------------------

    @activity.defn
    @non_retryable_on_bad_input
    def process_receipt(self, deal_id: str, batch_id: str) -> ReceiptCounts:
        with session_scope(self.database_url) as session:
            # A local activity (deals booked before receipts became activities) cannot heartbeat.
            heartbeat = (lambda: None) if activity.info().is_local else activity.heartbeat
            fresh = _unprocessed(session, batch_id)  # a retry answers the stored counts: counted once
            counts = store.process_receipt(session, deal_id, batch_id, self.settings.refresh_max_age_years, self.catalog, heartbeat=heartbeat)
        if fresh:
            worker_metrics.receipt_processed(counts.accepted, counts.rejected)
        return counts

    @activity.defn
    @non_retryable_on_bad_input
    def sweep_receipts(self, sweep: ReceiptSweep) -> list[ReceiptCounts]:
        """Process the batches staged for the deal by its deadline whose update never arrived (the
        API's call timed out, a worker died): what the API accepted is what the deal decides on."""
        with session_scope(self.database_url) as session:
            swept = [
                store.process_receipt(session, sweep.deal_id, batch_id, self.settings.refresh_max_age_years, self.catalog, heartbeat=activity.heartbeat)
                for batch_id in store.unprocessed_batches(session, sweep.deal_id, sweep.staged_until)
            ]
        for counts in swept:
            worker_metrics.receipt_processed(counts.accepted, counts.rejected)
        return swept

    # --- money ------------------------------------------------------------------------------

    @activity.defn
    def record_incentive(self, entry: LedgerEntry) -> bool:
        with session_scope(self.database_url) as session:
            return store.record_incentive(session, entry.deal_id, entry.partner_id, entry.kind, entry.amount)

    @activity.defn
    def record_settlement(self, entry: SettlementEntry) -> SettlementOutcome:
        """The deal's one money decision; the outcome the store holds (the first one) is returned."""
        with session_scope(self.database_url) as session:
            # A retry finds its own decision: counted once. (Columns, not the row: the store adds the row itself.)
            fresh = session.execute(select(Settlement.deal_id).where(Settlement.deal_id == entry.deal_id)).first() is None
            decided = store.record_settlement(session, entry.deal_id, entry.partner_id, entry.outcome, entry.amount)
        if fresh and decided.outcome == entry.outcome:
            worker_metrics.decided(decided.outcome)
        return decided

    @activity.defn
    @non_retryable_on_bad_input
    def sweep_and_settle(self, decision: DeadlineDecision) -> DeadlineSettlement:
        """A deal's decision at its deadline in one activity (patch decide-at-once): the receipts
        staged by the deadline that the deal has not counted are taken in, the outcome is decided
        by `deadline_outcome` on the deal's count plus theirs, and the settlement recorded, in one
        round trip instead of two activities and the workflow task between them. The store keeps
        the first settlement of a deal; the deal adopts what it returns."""

        def decide(swept: list[ReceiptCounts]) -> tuple[str, Decimal]:
            received = decision.received_units + sum(counts.accepted for counts in swept)
            return deadline_outcome(decision.mode, received, decision.required_units), decision.amount

        with session_scope(self.database_url) as session:
            fresh_batches = set(store.unprocessed_batches(session, decision.deal_id, decision.staged_until))
            swept, held, recorded = store.sweep_and_settle(
                session, decision.deal_id, decision.partner_id, decision.staged_until, decision.counted_batches,
                self.settings.refresh_max_age_years, self.catalog, decide, heartbeat=activity.heartbeat,
            )
        for counts in swept:
            if counts.batch_id in fresh_batches:
                worker_metrics.receipt_processed(counts.accepted, counts.rejected)
        if recorded:
            worker_metrics.decided(held.outcome)
        return DeadlineSettlement(swept=swept, outcome=held.outcome, amount=held.amount, recorded=recorded)

    @activity.defn
    def decide_and_close(self, deal: DeadlineClose) -> DeadlineSettlement:
        """sweep_and_settle, then the close (read model and certificate) in the same activity: the deal's
        closed state is computed here by the rules the deal applies to itself after this returns
        (domain.deal_progress), so what is written is the view the deal then holds. A retry decides
        nothing anew (the settlement is held) and closes the same."""
        decided = self.sweep_and_settle(deadline_decision(deal.terms, deal.progress))
        closed = deal.progress.model_copy(deep=True)
        take_in_deadline_decision(closed, decided.swept, decided.outcome)
        close_on_settlement(deal.terms, closed)
        self.close_deal(deal_view(deal.terms, closed))
        return decided

    @activity.defn
    def record_extension(self, record: ExtensionRecord) -> None:
        with session_scope(self.database_url) as session:
            store.record_extension(session, record.deal_id, record.sequence, record.extend_by_seconds, record.reason, record.new_deadline)

    # --- notifications ----------------------------------------------------------------------

    @activity.defn
    def send_reminder(self, reminder: ReminderInput) -> bool:
        """One reminder per (deal, offset): the unique row is written before the mail goes."""
        with session_scope(self.database_url) as session:
            already = select(ReminderSent).where(ReminderSent.deal_id == reminder.deal_id, ReminderSent.offset_seconds == reminder.offset_seconds)
            if session.execute(already).first() is None:
                session.add(ReminderSent(deal_id=reminder.deal_id, offset_seconds=reminder.offset_seconds, deadline=reminder.deadline))
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
            contact = self._contact(session, reminder.partner_id)
        offset = format_duration_seconds(reminder.offset_seconds)
        missing = reminder.required_units - reminder.received_units
        return self._send_once(
            Mail(
                key=f"{reminder.deal_id}:reminder:{offset}",
                deal_id=reminder.deal_id,
                partner_id=reminder.partner_id,
                to=contact,
                subject=f"Takeback deal {reminder.deal_id}: {missing} more units due by {reminder.deadline:%Y-%m-%d %H:%M:%S} UTC",
                body=(
                    f"Takeback deal {reminder.deal_id} has {reminder.received_units} of the {reminder.required_units} units "
                    f"it needs back by its deadline {reminder.deadline.isoformat()} ({offset} from now).\n"
                    f"Request a pickup for the remaining {missing} units to keep the incentive."
                ),
            )
        )

    @activity.defn
    def notify_settlement(self, notice: SettlementNotice) -> bool:
        with session_scope(self.database_url) as session:
            contact = self._contact(session, notice.partner_id)
        verb = {"released": "released", "forfeited": "forfeited", "clawed_back": "clawed back"}.get(notice.kind, notice.kind)
        return self._send_once(
            Mail(
                key=f"{notice.deal_id}:settlement:{notice.kind}",
                deal_id=notice.deal_id,
                partner_id=notice.partner_id,
                to=contact,
                cc=None if notice.kind == "released" else self.settings.ops_email,
                subject=f"Takeback deal {notice.deal_id}: incentive {verb} ({notice.amount})",
                body=(
                    f"The incentive of {notice.amount} on takeback deal {notice.deal_id} was {verb}: "
                    f"{notice.received_units} units received, {notice.required_units} required by the deadline "
                    f"{notice.deadline.isoformat()}."
                ),
            )
        )

    # --- read model and closing -------------------------------------------------------------

    @activity.defn
    def project_deal(self, view: DealView) -> None:
        with session_scope(self.database_url) as session:
            store.project_deal(session, view)

    @activity.defn
    def close_deal(self, view: DealView) -> str:
        with session_scope(self.database_url) as session:
            digest = store.close_deal(session, view, heartbeat=activity.heartbeat, catalog=self.catalog)
        if view.status == "cancelled":
            # Its pickups not yet collected are cancelled with the provider (marked first, so the
            # tracking poll finishes any the provider refuses now; the close never waits for it).
            self.carrier.cancel_open_pickups(view.id, heartbeat=activity.heartbeat)
        return digest


def _unprocessed(session, batch_id: str) -> bool:
    row = session.execute(select(ReceiptBatch.processed_at, ReceiptBatch.refused_at).where(ReceiptBatch.id == batch_id)).first()
    return row is not None and row.processed_at is None and row.refused_at is None


def format_duration_seconds(seconds: float) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds))
