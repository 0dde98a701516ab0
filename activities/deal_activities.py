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
from domain.deal_progress import DealProgress, DealTotals, PickupEscalation, adopt_totals, close_on_settlement, deal_view
from domain.durations import format_duration
from domain.models import CarrierEvent, DealTerms, DealView, PickupRequest, PickupView
from domain.rules import RuleViolation
from observability import worker_metrics
from settings import Settings
from store import deals as store
from store import mail as mail_store
from store.db import session_scope
from store import settlement
from store.deals import CarrierEventOutcome
from store.tables import EmailMessage, Pickup, ReminderSent


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


class DealDecision(BaseModel):
    """A deal asking the store to decide it for good (store.settlement.decide), as it holds itself then."""

    terms: DealTerms
    progress: DealProgress
    kind: str  # deadline | cancel | close


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

    # --- money: decided by the store (store.settlement), adopted by the deal ----------------

    @activity.defn
    def decide_and_close(self, decision: DealDecision) -> DealTotals:
        """The deal's decision for good, in one store transaction over the receipts committed before it,
        and, when the store's answer closes the deal, its close (read model and certificate) in the same
        activity. The closed view is computed by the rules the deal applies to itself after this returns
        (domain.deal_progress), so what is written is the view the deal then holds. A retry (an attempt
        lost after the commit) decides nothing anew: the store answers what it decided, and closes the same."""
        with session_scope(self.database_url) as session:
            totals, decided_here = settlement.decide(session, decision.terms.deal_id, decision.kind)
        if decided_here:
            worker_metrics.decided(totals.settlement)
        if totals.closed:
            closed = decision.progress.model_copy(deep=True)
            adopt_totals(closed, totals)
            close_on_settlement(decision.terms, closed)
            self.close_deal(deal_view(decision.terms, closed))
        return totals

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
            offset = format_duration_seconds(reminder.offset_seconds)
            store.show_reminder(session, reminder.deal_id, offset)
            contact = self._contact(session, reminder.partner_id)
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


def format_duration_seconds(seconds: float) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds))
