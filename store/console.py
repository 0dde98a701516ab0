"""What the console reads: the deals table (filters, sort, a page, counts per status, the CSV), a
deal's timeline, and the impact report's monthly series.

Filters are conditions on indexed columns (status, partner, return deadline, created_at; a serial
through the unique index of returned serials or the serial index of committed ones), so a page of
the deals table costs a few index reads however many deals the store holds.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Iterator

from sqlalchemy import String, cast, func, or_, select
from sqlmodel import Session

from domain.durations import format_duration
from domain.models import OPEN_DEAL_STATUSES, DealStatus
from store.tables import (
    ApiKey,
    AuditEvent,
    Certificate,
    CommittedLine,
    CommittedSerial,
    Deal,
    DealExtension,
    EmailMessage,
    IncentiveLedger,
    Pickup,
    ReceiptBatch,
    ReceiptRejection,
    ReminderSent,
    ReturnedItem,
    Settlement,
    ShipmentEvent,
)

OPEN_STATUSES = tuple(status.value for status in OPEN_DEAL_STATUSES)
STATUSES = tuple(status.value for status in DealStatus)
# Sort keys the table offers (each an indexed column but the amount); "booked" is the API's order.
SORTS = {
    "booked": Deal.created_at,
    "deadline": Deal.return_deadline,
    "partner": Deal.partner_id,
    "status": Deal.status,
    "amount": Deal.incentive_amount,
    "id": Deal.id,
}
TIMELINE_ITEMS = 500  # received items listed on a deal's page; the counts cover the rest
TIMELINE_REJECTIONS = 200


@dataclass(frozen=True)
class DealFilter:
    status: str | None = None
    partner_id: str | None = None
    at_risk_days: int | None = None  # open, fewer units received than required, deadline within this many days
    deadline_days: int | None = None  # open, deadline within this many days
    search: str | None = None  # a deal id, or a serial the deal listed or received


@dataclass(frozen=True)
class DealRow:
    id: str
    partner_id: str
    customer_name: str
    status: str
    committed_units: int
    required_units: int
    received_units: int
    rejected_units: int
    new_products_value: Decimal
    incentive_mode: str
    incentive_rate: Decimal
    incentive_amount: Decimal
    incentive_status: str
    booked_at: datetime | None
    return_deadline: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def below_threshold(self) -> bool:
        return self.received_units < self.required_units


ROW_COLUMNS = (
    Deal.id, Deal.partner_id, Deal.customer_name, Deal.status, Deal.committed_units, Deal.required_units, Deal.received_units,
    Deal.rejected_units, Deal.new_products_value, Deal.incentive_mode, Deal.incentive_rate, Deal.incentive_amount, Deal.incentive_status,
    Deal.booked_at, Deal.return_deadline,
)


def _conditions(deal_filter: DealFilter, now: datetime, with_status: bool = True) -> list:
    where = [Deal.view_json.is_not(None)]  # a booking staged whose workflow never started is no deal yet
    if with_status and deal_filter.status:
        where.append(Deal.status == deal_filter.status)
    if deal_filter.partner_id:
        where.append(Deal.partner_id == deal_filter.partner_id)
    if deal_filter.at_risk_days is not None:
        where += [
            Deal.status.in_(OPEN_STATUSES),
            Deal.received_units < Deal.required_units,
            Deal.return_deadline < now + timedelta(days=deal_filter.at_risk_days),
        ]
    if deal_filter.deadline_days is not None:
        where += [Deal.status.in_(OPEN_STATUSES), Deal.return_deadline < now + timedelta(days=deal_filter.deadline_days)]
    if deal_filter.search:
        wanted = deal_filter.search.strip()
        where.append(
            or_(
                Deal.id.in_({wanted, wanted.upper()}),
                Deal.id.in_(select(CommittedSerial.deal_id).where(CommittedSerial.serial == wanted)),
                Deal.id.in_(select(ReturnedItem.deal_id).where(ReturnedItem.serial == wanted)),
            )
        )
    return where


def _ordered(query, sort: str, descending: bool):
    column = SORTS.get(sort, Deal.created_at)
    primary = column.desc() if descending else column.asc()
    tie = Deal.id.desc() if descending else Deal.id.asc()  # a stable order, so pages neither repeat nor skip a deal
    return query.order_by(primary, tie) if column is not Deal.id else query.order_by(primary)


def status_counts(session: Session, deal_filter: DealFilter, now: datetime) -> dict[str, int]:
    """Deals per status under every filter but the status one (what choosing a status would show)."""
    counts = dict.fromkeys(STATUSES, 0)
    query = select(Deal.status, func.count()).where(*_conditions(deal_filter, now, with_status=False)).group_by(Deal.status)
    for status, count in session.execute(query).all():
        counts[status] = count
    return counts


def deals_page(session: Session, deal_filter: DealFilter, now: datetime, sort: str = "booked", descending: bool = True, offset: int = 0, limit: int = 50) -> list[DealRow]:
    query = _ordered(select(*ROW_COLUMNS).where(*_conditions(deal_filter, now)), sort, descending).offset(offset).limit(limit)
    return [DealRow(*row) for row in session.execute(query).all()]


def all_deals(session: Session, deal_filter: DealFilter, now: datetime, sort: str = "booked", descending: bool = True) -> Iterator[DealRow]:
    """Every deal the filter selects, in the table's order, streamed (the CSV download)."""
    query = _ordered(select(*ROW_COLUMNS).where(*_conditions(deal_filter, now)), sort, descending)
    for row in session.execute(query.execution_options(yield_per=1000)):
        yield DealRow(*row)


def partner_ids(session: Session) -> list[str]:
    from store.tables import Partner

    return list(session.execute(select(Partner.id).order_by(Partner.id)).scalars())


def committed_lines(session: Session, deal_id: str) -> list[tuple[str, int]]:
    return [(product, quantity) for product, quantity in session.execute(
        select(CommittedLine.product_id, CommittedLine.quantity).where(CommittedLine.deal_id == deal_id).order_by(CommittedLine.id)
    ).all()]


# --- a deal's timeline ---------------------------------------------------------------------------


@dataclass
class ReceivedItem:
    serial: str
    product_id: str
    condition: str
    age_years: float
    disposition: str


@dataclass
class TimelineEntry:
    """One thing that happened to a deal. `kind` picks how the page shows it."""

    at: datetime
    kind: str  # booking | pickup | carrier | receipt | reminder | email | extension | cancellation | refused | ledger | decision | certificate
    title: str
    lines: list[str] = field(default_factory=list)
    by: str | None = None  # who did it (the audit trail's account and key prefix), where a person did
    state: str | None = None  # an e-mail's delivery state, a carrier event's status
    items: list[ReceivedItem] = field(default_factory=list)
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (serial, reason)
    link: str | None = None


def _who(event: AuditEvent, prefix: str | None) -> str:
    return f"{event.account} ({event.role} key {prefix}…)" if prefix else f"{event.account} ({event.role})"


def _money(amount) -> str:
    return f"{Decimal(amount):,.2f}"


def deal_timeline(session: Session, deal: Deal, status: str | None = None, closed_reason: str | None = None) -> list[TimelineEntry]:
    """Everything the store knows happened to the deal, newest first. Each entry is timed by when it
    was recorded here (a carrier's own time is shown beside its event: carriers send late and out of order).
    `status` is the deal's as its workflow says, which the store's copy follows a moment later."""
    deal_id = deal.id
    status = status or deal.status
    entries: list[TimelineEntry] = []
    audit = session.execute(
        select(AuditEvent, ApiKey.prefix).join(ApiKey, ApiKey.id == AuditEvent.api_key_id, isouter=True).where(AuditEvent.deal_id == deal_id).order_by(AuditEvent.id)
    ).all()
    done = [(event, prefix) for event, prefix in audit if 200 <= event.status_code < 300]

    def take(action: str, reason: str | None = None) -> tuple[AuditEvent, str | None] | None:
        """The first successful audited call of `action` (with this reason, if given) not yet shown."""
        for index, (event, prefix) in enumerate(done):
            if event.action == action and (reason is None or event.reason == reason):
                return done.pop(index)
        return None

    booked = take("booking")
    lines = [f"{deal.customer_name} ({deal.customer_country}), {deal.opportunity}: new products {_money(deal.new_products_value)}"]
    lines += [f"{quantity} × {product}" for product, quantity in committed_lines(session, deal_id)]
    lines.append(f"incentive {_money(deal.incentive_amount)} ({deal.incentive_rate * 100:.2f}%, {deal.incentive_mode}); {deal.required_units} of {deal.committed_units} units required")
    entries.append(TimelineEntry(at=deal.booked_at or deal.created_at, kind="booking", title="Booked", lines=lines, by=_who(*booked) if booked else None))

    pickups = session.execute(select(Pickup).where(Pickup.deal_id == deal_id).order_by(Pickup.created_at)).scalars().all()
    for pickup in pickups:
        entries.append(TimelineEntry(
            at=pickup.created_at, kind="pickup", title=f"Pickup {pickup.id} booked with {pickup.carrier}", state=pickup.status,
            lines=[f"tracking {pickup.tracking_number}, {pickup.expected_units} units expected, ready on {pickup.ready_on}"],
        ))
    tracking = {pickup.tracking_number: pickup.id for pickup in pickups}
    if tracking:
        for event in session.execute(select(ShipmentEvent).where(ShipmentEvent.tracking_number.in_(list(tracking))).order_by(ShipmentEvent.recorded_at)).scalars():
            lines = [f"pickup {tracking[event.tracking_number]}, tracking {event.tracking_number}; the carrier's time {event.occurred_at:%Y-%m-%d %H:%M} UTC"]
            if not event.applied:
                lines.append("not applied: the shipment had already moved past it")
            entries.append(TimelineEntry(at=event.recorded_at, kind="carrier", title=f"Carrier: {event.status.replace('_', ' ')}", state=event.status, lines=lines))

    batches = session.execute(select(ReceiptBatch).where(ReceiptBatch.deal_id == deal_id).order_by(ReceiptBatch.created_at)).scalars().all()
    if batches:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for batch_id, disposition, count in session.execute(
            select(ReturnedItem.batch_id, ReturnedItem.disposition, func.count()).where(ReturnedItem.deal_id == deal_id).group_by(ReturnedItem.batch_id, ReturnedItem.disposition)
        ).all():
            counts[batch_id][disposition] = count
        items: dict[str, list[ReceivedItem]] = defaultdict(list)
        for row in session.execute(
            select(ReturnedItem.batch_id, ReturnedItem.serial, ReturnedItem.product_id, ReturnedItem.condition, ReturnedItem.age_years, ReturnedItem.disposition)
            .where(ReturnedItem.deal_id == deal_id).order_by(ReturnedItem.id).limit(TIMELINE_ITEMS)
        ).all():
            items[row.batch_id].append(ReceivedItem(row.serial, row.product_id, row.condition, row.age_years, row.disposition))
        rejections: dict[str, list[tuple[str, str]]] = defaultdict(list)
        rejected_counts: dict[str, int] = dict(session.execute(
            select(ReceiptRejection.batch_id, func.count()).where(ReceiptRejection.deal_id == deal_id).group_by(ReceiptRejection.batch_id)
        ).all())
        for batch_id, serial, reason in session.execute(
            select(ReceiptRejection.batch_id, ReceiptRejection.serial, ReceiptRejection.reason)
            .where(ReceiptRejection.deal_id == deal_id).order_by(ReceiptRejection.batch_id, ReceiptRejection.position).limit(TIMELINE_REJECTIONS)
        ).all():
            rejections[batch_id].append((serial, reason))
        for batch in batches:
            by_disposition = counts.get(batch.id, {})
            accepted = sum(by_disposition.values())
            if batch.refused_at is not None:  # a batch is counted or refused in the transaction that stores it
                title, state = f"Receipt of {batch.item_count} items refused: the deal had decided, nothing of it counted", "refused"
            else:
                title, state = f"Receipt: {accepted} of {batch.item_count} items accepted", "processed"
            lines = []
            if accepted:
                lines.append(", ".join(f"{by_disposition.get(name, 0)} {name}" for name in ("refresh", "recycle", "other")))
            if rejected_counts.get(batch.id):
                lines.append(f"{rejected_counts[batch.id]} rejected")
            shown = len(items.get(batch.id, []))
            if shown < accepted:
                lines.append(f"{accepted - shown} more items not listed here (the certificate lists every item)")
            entries.append(TimelineEntry(
                at=batch.processed_at or batch.created_at, kind="receipt", title=title, state=state, lines=lines,
                items=items.get(batch.id, []), rejections=rejections.get(batch.id, []),
            ))

    for reminder in session.execute(select(ReminderSent).where(ReminderSent.deal_id == deal_id)).scalars():
        entries.append(TimelineEntry(
            at=reminder.sent_at, kind="reminder", title=f"Reminder: {format_duration(timedelta(seconds=reminder.offset_seconds))} before the deadline",
            lines=[f"deadline then {reminder.deadline:%Y-%m-%d %H:%M} UTC"],
        ))
    for message in session.execute(select(EmailMessage).where(EmailMessage.deal_id == deal_id)).scalars():
        lines = [f"to {message.to}" + (f", copy to {message.cc}" if message.cc else ""), f"{message.attempts} attempt{'s' if message.attempts != 1 else ''}"]
        if message.sent_at:
            lines.append(f"sent {message.sent_at:%Y-%m-%d %H:%M:%S} UTC")
        if message.last_error:
            lines.append(f"last error: {message.last_error}")
        entries.append(TimelineEntry(at=message.created_at, kind="email", title=f"E-mail: {message.subject}", state=message.state, lines=lines))

    for extension in session.execute(select(DealExtension).where(DealExtension.deal_id == deal_id).order_by(DealExtension.sequence)).scalars():
        actor = take("extend", extension.reason)
        entries.append(TimelineEntry(
            at=extension.recorded_at, kind="extension",
            title=f"Window extended by {format_duration(timedelta(seconds=extension.extend_by_seconds))}: deadline {extension.new_deadline:%Y-%m-%d %H:%M} UTC",
            lines=[f"reason: {extension.reason}"], by=_who(*actor) if actor else None,
        ))

    settlement = session.get(Settlement, deal_id)
    if status == DealStatus.cancelled.value:
        actor = take("cancel")
        reason = actor[0].reason if actor and actor[0].reason else closed_reason
        entries.append(TimelineEntry(
            at=actor[0].at if actor else (settlement.decided_at if settlement else deal.updated_at), kind="cancellation", title="Cancelled",
            lines=[f"reason: {reason}"] if reason else [], by=_who(*actor) if actor else None,
        ))

    for event, prefix in audit:
        if event.status_code >= 400 and event.action in ("extend", "cancel", "pickup", "receipts"):
            entries.append(TimelineEntry(
                at=event.at, kind="refused", title=f"{event.action.capitalize()} refused ({event.status_code})",
                lines=[f"reason given: {event.reason}"] if event.reason else [], by=_who(event, prefix),
            ))

    for movement in session.execute(select(IncentiveLedger).where(IncentiveLedger.deal_id == deal_id).order_by(IncentiveLedger.id)).scalars():
        entries.append(TimelineEntry(at=movement.recorded_at, kind="ledger", title=f"Ledger: {movement.kind.replace('_', ' ')} {_money(movement.amount)}", state=movement.kind))
    if settlement is not None:
        entries.append(TimelineEntry(
            at=settlement.decided_at, kind="decision", title=f"Decision: incentive {settlement.outcome.replace('_', ' ')}, {_money(settlement.amount)}", state=settlement.outcome,
            lines=[closed_reason] if closed_reason and status != DealStatus.cancelled.value else [],
        ))
    certificate = session.get(Certificate, deal_id)
    if certificate is not None:
        entries.append(TimelineEntry(
            at=certificate.issued_at, kind="certificate", title="Certificate of recycling issued", lines=[f"sha256 {certificate.content_hash}"],
            link=f"/console/deals/{deal_id}/certificate",
        ))
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries


# --- impact by month -----------------------------------------------------------------------------


def _month(session: Session, column):
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM")
    return func.substr(cast(column, String), 1, 7)  # SQLite keeps ISO text: "2026-11-26 ..."


def units_by_month(session: Session, partner_id: str | None = None) -> list[tuple[str, dict[str, int]]]:
    """(YYYY-MM, {refresh, recycle, other}) for each month an item was received, oldest first."""
    month = _month(session, ReturnedItem.received_at)
    query = select(month, ReturnedItem.disposition, func.count()).group_by(month, ReturnedItem.disposition)
    if partner_id is not None:
        query = query.join(Deal, Deal.id == ReturnedItem.deal_id).where(Deal.partner_id == partner_id)
    months: dict[str, dict[str, int]] = defaultdict(lambda: {"refresh": 0, "recycle": 0, "other": 0})
    for name, disposition, count in session.execute(query).all():
        months[name][disposition if disposition in ("refresh", "recycle") else "other"] += count
    return sorted(months.items())


MONEY_OUTCOMES = ("released", "forfeited", "clawed_back")


def money_by_month(session: Session, partner_id: str | None = None) -> list[tuple[str, dict[str, Decimal]]]:
    """(YYYY-MM, {released, forfeited, clawed_back}) by the month each deal's money was decided."""
    month = _month(session, Settlement.decided_at)
    query = select(month, Settlement.outcome, func.coalesce(func.sum(Settlement.amount), 0)).where(Settlement.outcome.in_(MONEY_OUTCOMES)).group_by(month, Settlement.outcome)
    if partner_id is not None:
        query = query.where(Settlement.partner_id == partner_id)
    months: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(MONEY_OUTCOMES, Decimal("0.00")))
    for name, outcome, amount in session.execute(query).all():
        months[name][outcome] = Decimal(amount).quantize(Decimal("0.01"))
    return sorted(months.items())


# --- partners ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartnerRow:
    id: str
    name: str
    country: str
    status: str | None  # the specialization's, as projected (None: never projected)
    deals: int
    open_deals: int


def partners_overview(session: Session) -> list[PartnerRow]:
    from sqlalchemy import case

    from store.specialization import SpecializationProjection
    from store.tables import Partner

    per_partner = (
        select(Deal.partner_id, func.count().label("deals"), func.sum(case((Deal.status.in_(OPEN_STATUSES), 1), else_=0)).label("open_deals"))
        .where(Deal.view_json.is_not(None)).group_by(Deal.partner_id).subquery()
    )
    query = (
        select(Partner.id, Partner.name, Partner.country, SpecializationProjection.status, per_partner.c.deals, per_partner.c.open_deals)
        .outerjoin(SpecializationProjection, SpecializationProjection.partner_id == Partner.id)
        .outerjoin(per_partner, per_partner.c.partner_id == Partner.id)
        .order_by(Partner.id)
    )
    return [PartnerRow(id, name, country, status, deals or 0, open_deals or 0) for id, name, country, status, deals, open_deals in session.execute(query).all()]
