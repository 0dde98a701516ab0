"""Personal data in the store: every text column of every table, classified, and the purge that erases
what is personal once it outlived the retention (README "Data we keep").

`COLUMNS` names every text column (String, Text, JSON) of every table as `ERASED` (personal: the purge
erases it, and `purge_personal_data` says how), `KEPT` (personal, kept on purpose: the reason says why)
or `NOT_PERSONAL`. tests/security/test_retention_coverage.py compares it with the tables' metadata, so
a column added without a classification fails the suite, and checks that after the purge no trace of
an erased person is left in any column of any table.
"""

import json
import re
from datetime import datetime, timezone
from typing import NamedTuple

from sqlalchemy import delete, func, or_, select, update
from sqlmodel import Session

from store.tables import CarrierPickup, Certificate, CertificateIssue, CertificatePart, CustodyEvent, Deal, Partner, Pickup, ReceiptBatch, ReceiptContext, Sanitization

ERASED = "(erased)"
ERASED_EMAIL_DOMAIN = "erased.invalid"  # `.invalid` never resolves (RFC 2606): nothing can be sent to it
CLOSED_DEAL_STATUSES = ("closed", "expired", "cancelled")

ERASED_KIND, KEPT_KIND, NOT_PERSONAL_KIND = "erased", "kept", "not personal"


class Classification(NamedTuple):
    kind: str  # ERASED_KIND | KEPT_KIND | NOT_PERSONAL_KIND
    why: str


def _classify(kind: str, why: str, *columns: str) -> dict[str, Classification]:
    return {column: Classification(kind, why) for column in columns}


DEAL_CLOSED = "once its deal closed longer than TAKEBACK_PERSONAL_DATA_RETENTION ago"
ACCOUNT = "an API key's account (`ops:<owner>`, `partner:<id>`): who acted, the audit trail's subject, kept with it; name ops keys' owners by role or team"
REASON = "a reason ops gave (the domain keeps an extension's and a cancel's reason); the README asks for no personal data in it"
IDS = "ids, codes, states, amounts, serials and product data of the programme"

COLUMNS: dict[str, Classification] = {
    # --- erased by the purge --------------------------------------------------------------------
    **_classify(ERASED_KIND, f"'(erased)' {DEAL_CLOSED}", "pickup.address", "pickup.contact_name", "pickup.contact_phone"),
    **_classify(ERASED_KIND, f"emptied {DEAL_CLOSED}: the carrier's error can quote the address", "carrierpickup.last_error"),
    **_classify(ERASED_KIND, f"emptied {DEAL_CLOSED}: the label it links to prints the address", "carrierpickup.label_url"),
    **_classify(ERASED_KIND, f"staff names '(erased)', the note emptied, {DEAL_CLOSED}", "sanitization.operator", "sanitization.verified_by", "sanitization.note"),
    **_classify(ERASED_KIND, f"the scanning operator '(erased)' {DEAL_CLOSED}", "receiptcontext.operator"),
    **_classify(ERASED_KIND, f"its operator, verified_by and note dropped {DEAL_CLOSED}", "custodyevent.detail_json"),
    **_classify(ERASED_KIND, f"staff names of its sanitization records '(erased)' {DEAL_CLOSED} (the issued hash stays verifiable)",
                "certificate.content_json", "certificatepart.text"),
    **_classify(ERASED_KIND, "'erased-<id>@erased.invalid' and '(erased)' once the person's last training is that old, or the partner is gone",
                "trainee.person_email", "trainee.person_name", "trainingsession.person_email", "treeplanted.person_email"),
    # --- personal, kept on purpose ------------------------------------------------------------------
    **_classify(KEPT_KIND, "a partner's business contact: reminders and notices go there while it is registered",
                "partner.name", "partner.contact_email", "emailmessage.to"),
    **_classify(KEPT_KIND, "the provider's answer about a message to the partner's contact (it may quote the address)", "emailmessage.last_error"),
    **_classify(KEPT_KIND, "ops' copy of escalations", "emailmessage.cc"),
    **_classify(KEPT_KIND, "the end customer, a business: the deal's own record", "deal.customer_name"),
    **_classify(KEPT_KIND, f"the deal's read model: its extensions' and its cancel's reasons ({REASON})", "deal.view_json"),
    **_classify(KEPT_KIND, ACCOUNT, "apikey.account", "auditevent.account", "idempotencyrecord.account", "custodyevent.actor", "reasonrecord.actor",
                "receiptcontext.actor", "sanitization.recorded_by", "downstreamshipment.recorded_by"),
    **_classify(KEPT_KIND, REASON, "auditevent.reason", "dealextension.reason", "reasonrecord.text", "specializationevent.detail"),
    **_classify(KEPT_KIND, "ops' note on a shipment to a downstream vendor (a business record of no one deal)", "downstreamshipment.note"),
    **_classify(KEPT_KIND, "a request's first answer, replayed to its retries and swept 24 h after (api/idempotency.py)", "idempotencyrecord.response_json"),
    # --- not personal ------------------------------------------------------------------------------
    **_classify(NOT_PERSONAL_KIND, IDS,
                "apikey.key_hash", "apikey.prefix", "apikey.role", "apikey.partner_id",
                "auditevent.role", "auditevent.action", "auditevent.method", "auditevent.path", "auditevent.deal_id", "auditevent.partner_id", "auditevent.idempotency_key",
                "carrierpickup.pickup_id", "carrierpickup.deal_id", "carrierpickup.provider", "carrierpickup.state", "carrierpickup.parcel_kind",
                "carrierpickup.window_start", "carrierpickup.window_end", "carrierpickup.tracking_code", "carrierpickup.carrier", "carrierpickup.service",
                "carrierpickup.label_format", "carrierpickup.confirmation",
                "certificate.deal_id", "certificate.content_hash", "certificate.certificate_id", "certificate.status",
                "certificateissue.certificate_id", "certificateissue.deal_id", "certificateissue.content_hash", "certificateissue.status", "certificatepart.certificate_id",
                "committedline.deal_id", "committedline.product_id", "committedserial.deal_id", "committedserial.serial", "committedserial.product_id",
                "custodyevent.serial", "custodyevent.kind", "custodyevent.source_id", "custodyevent.deal_id", "custodyevent.pickup_id", "custodyevent.value",
                "deal.id", "deal.partner_id", "deal.customer_country", "deal.opportunity", "deal.incentive_mode", "deal.incentive_status", "deal.status",
                "dealextension.deal_id", "downstreammaterial.shipment_id", "downstreammaterial.material",
                "downstreamshipment.id", "downstreamshipment.kind", "downstreamshipment.recycler_name", "downstreamshipment.certification_id", "downstreamshipment.lot",
                "emailmessage.key", "emailmessage.deal_id", "emailmessage.partner_id", "emailmessage.state", "emailmessage.provider_id",
                "idempotencyrecord.scope", "idempotencyrecord.method", "idempotencyrecord.path", "idempotencyrecord.key", "idempotencyrecord.fingerprint", "idempotencyrecord.derived_id",
                "incentiveledger.deal_id", "incentiveledger.partner_id", "incentiveledger.kind", "openserialclaim.serial", "openserialclaim.deal_id",
                "partner.id", "partner.country",
                "pickup.id", "pickup.deal_id", "pickup.carrier", "pickup.tracking_number", "pickup.status", "pickup.ready_on",
                "reasonrecord.deal_id", "reasonrecord.partner_id", "reasonrecord.action", "reasonrecord.code", "reasonrecord.request_id",
                "receiptbatch.id", "receiptbatch.deal_id", "receiptbatch.items_json", "receiptcontext.batch_id", "receiptcontext.facility",
                "receiptcontext.tracking_number", "receiptcontext.pickup_id",
                "receiptrejection.batch_id", "receiptrejection.deal_id", "receiptrejection.serial", "receiptrejection.reason", "receiptrejection.reason_code",
                "remindersent.deal_id", "returneditem.serial", "returneditem.deal_id", "returneditem.batch_id", "returneditem.product_id",
                "returneditem.condition", "returneditem.disposition",
                "sanitization.serial", "sanitization.deal_id", "sanitization.source_id", "sanitization.method", "sanitization.technique", "sanitization.tool",
                "sanitization.tool_version", "sanitization.facility", "sanitization.verification",
                "sanitizationrecord.serial", "sanitizationrecord.deal_id", "sanitizationrecord.method", "sanitizationrecord.standard",
                "settlement.deal_id", "settlement.partner_id", "settlement.outcome", "shipmentevent.event_id", "shipmentevent.tracking_number", "shipmentevent.status",
                "specializationevent.partner_id", "specializationevent.event_key", "specializationevent.kind",
                "specializationprojection.partner_id", "specializationprojection.status", "specializationprojection.view_json",
                "trainee.partner_id", "trainingsession.partner_id", "trainingsession.request_id", "treeplanted.partner_id"),
    **_classify(NOT_PERSONAL_KIND, "an audit entry's summary: units, dates, ids, never an address or a contact (api/idempotency.py, the routes' Action details)", "auditevent.detail_json"),
    **_classify(NOT_PERSONAL_KIND, "a generated message naming deals, pickups and tracking numbers, never an address or a contact", "emailmessage.subject", "emailmessage.body"),
    **_classify(NOT_PERSONAL_KIND, "an object id at EasyPost: what it names is reached with the account's API key only (EasyPost keeps its own copy)",
                "carrierpickup.address_id", "carrierpickup.shipment_id", "carrierpickup.tracker_id", "carrierpickup.provider_pickup_id"),
}


class PurgeCounts(NamedTuple):
    pickups: int  # pickups whose address and contact were erased
    trainees: int  # trainees whose e-mail and name were erased
    carrier_pickups: int = 0  # bookings with a carrier whose last error and label link were emptied
    sanitizations: int = 0  # sanitization records whose staff names and note were erased
    receipts: int = 0  # receipt batches whose scanning operator was erased
    custody_events: int = 0  # custody events whose operator, verifier or note was dropped
    certificates: int = 0  # certificate documents (current or superseded) whose staff names were erased


def erased_email(trainee_id: int) -> str:
    """A trainee's e-mail once erased: unique (the one-tree-per-person constraint holds), nobody's."""
    return f"erased-{trainee_id}@{ERASED_EMAIL_DOMAIN}"


def _closed_deals(before: datetime):
    """Deals closed (closed, expired or cancelled) before `before`: a closed deal's row is never updated
    again, so its last projection (`updated_at`) is its closing."""
    return select(Deal.id).where(Deal.status.in_(CLOSED_DEAL_STATUSES), Deal.updated_at < before)


def _pickups_to_purge(before: datetime):
    return Pickup.deal_id.in_(_closed_deals(before)), (Pickup.address != ERASED) | (Pickup.contact_name != ERASED) | (Pickup.contact_phone != ERASED)


def _carrier_pickups_to_purge(before: datetime):
    return CarrierPickup.deal_id.in_(_closed_deals(before)), CarrierPickup.last_error.is_not(None) | CarrierPickup.label_url.is_not(None)


def _sanitizations_to_purge(before: datetime):
    return Sanitization.deal_id.in_(_closed_deals(before)), (Sanitization.operator != ERASED) | (Sanitization.verified_by != ERASED) | Sanitization.note.is_not(None)


def _receipts_to_purge(before: datetime):
    batches = select(ReceiptBatch.id).where(ReceiptBatch.deal_id.in_(_closed_deals(before)))
    return ReceiptContext.batch_id.in_(batches), ReceiptContext.operator.is_not(None), ReceiptContext.operator != ERASED


# Keys of a custody event's detail that name people: the receiving or sanitizing operator, the verifier,
# and notes (free text). A purged event no longer has them, so a second purge does not read it again.
CUSTODY_PERSONAL_KEYS = ("operator", "verified_by", "note")


def _custody_events_to_purge(before: datetime):
    return CustodyEvent.deal_id.in_(_closed_deals(before)), or_(*(CustodyEvent.detail_json.like(f'%"{key}"%') for key in CUSTODY_PERSONAL_KEYS))


def _trainees_to_purge(before: datetime):
    from store.specialization import Trainee, TrainingSession

    trained_since = (
        select(TrainingSession.id)
        .where(TrainingSession.partner_id == Trainee.partner_id, TrainingSession.person_email == Trainee.person_email, TrainingSession.recorded_at >= before)
        .exists()
    )
    partner_gone = ~select(Partner.id).where(Partner.id == Trainee.partner_id).exists()
    return select(Trainee).where(
        Trainee.person_email.not_like(f"erased-%@{ERASED_EMAIL_DOMAIN}"),
        ((Trainee.first_trained_at < before) & ~trained_since) | partner_gone,
    ).order_by(Trainee.id)


def _count(session: Session, table, where) -> int:
    return session.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def purge_personal_data(session: Session, before: datetime, dry_run: bool = False) -> PurgeCounts:
    """Anonymise the personal data nobody needs any more; run it again and it finds nothing new.

    Of deals that closed (closed, expired or cancelled) before `before`:
    - pickups: address, contact name and phone become "(erased)" (tracking number, carrier, status,
      dates and units stay); their booking with a carrier loses its last error and its label link;
    - sanitization records: operator and verifier become "(erased)", the note goes; receipt batches
      lose their operator; custody events drop the operator, verifier and note of their detail;
    - the certificates (current and superseded) of the deals whose sanitization records were erased:
      the staff names in them become "(erased)". The issued hash stays what verification checks, so a
      copy handed out before still verifies; the stored copy no longer hashes to it.
    Trainees whose last training was before `before`, or whose partner is gone: e-mail and name, also on
    their training sessions and tree. Rows stay, so hours, trainees and trees still add up; a person
    erased who trains again later counts as new (one more tree).
    """
    from store.specialization import TrainingSession, TreePlanted

    before = before.astimezone(timezone.utc)
    steps = {
        "pickups": (Pickup, _pickups_to_purge(before), {"address": ERASED, "contact_name": ERASED, "contact_phone": ERASED}),
        "carrier_pickups": (CarrierPickup, _carrier_pickups_to_purge(before), {"last_error": None, "label_url": None}),
        "sanitizations": (Sanitization, _sanitizations_to_purge(before), {"operator": ERASED, "verified_by": ERASED, "note": None}),
        "receipts": (ReceiptContext, _receipts_to_purge(before), {"operator": ERASED}),
    }
    trainees = session.execute(_trainees_to_purge(before)).scalars().all()
    sanitized_deals = session.execute(select(Sanitization.deal_id).where(*steps["sanitizations"][1]).distinct()).scalars().all()
    certificates = session.execute(select(CertificateIssue.certificate_id).where(CertificateIssue.deal_id.in_(sanitized_deals))).scalars().all() if sanitized_deals else []
    if dry_run:
        counts = {name: _count(session, table, where) for name, (table, where, _) in steps.items()}
        events = _count(session, CustodyEvent, _custody_events_to_purge(before))
        return PurgeCounts(trainees=len(trainees), custody_events=events, certificates=len(certificates), **counts)
    counts = {
        name: session.execute(update(table).where(*where).values(values).execution_options(synchronize_session=False)).rowcount
        for name, (table, where, values) in steps.items()
    }
    events = _drop_custody_personal_keys(session, before)
    for deal_id in sanitized_deals:
        _erase_certificate_staff(session, deal_id)
    for trainee in trainees:
        anonymous = erased_email(trainee.id)
        for table in (TrainingSession, TreePlanted):
            session.execute(
                update(table)
                .where(table.partner_id == trainee.partner_id, table.person_email == trainee.person_email)
                .values(person_email=anonymous)
                .execution_options(synchronize_session=False)
            )
        trainee.person_email, trainee.person_name = anonymous, ERASED
        session.add(trainee)
    session.commit()
    return PurgeCounts(trainees=len(trainees), custody_events=events, certificates=len(certificates), **counts)


def _drop_custody_personal_keys(session: Session, before: datetime) -> int:
    rows = session.execute(select(CustodyEvent.id, CustodyEvent.detail_json).where(*_custody_events_to_purge(before))).all()
    changed = 0
    for event_id, detail_json in rows:
        detail = json.loads(detail_json)
        if not any(key in detail for key in CUSTODY_PERSONAL_KEYS):
            continue  # the key's name was only mentioned in a value
        kept = {key: value for key, value in detail.items() if key not in CUSTODY_PERSONAL_KEYS}
        session.execute(update(CustodyEvent).where(CustodyEvent.id == event_id).values(detail_json=json.dumps(kept, sort_keys=True) if kept else None))
        changed += 1
    return changed


# In a certificate's canonical JSON (no spaces, ASCII) a sanitization record names its operator and
# verifier as `"operator":"..."` and `"verified_by":"..."`; no other object has these keys.
_CERTIFICATE_STAFF = re.compile(r'("(?:operator|verified_by)":)"(?:[^"\\]|\\.)*"')


def _without_staff(certificate_json: str) -> str:
    return _CERTIFICATE_STAFF.sub(rf'\1"{ERASED}"', certificate_json)


def _erase_certificate_staff(session: Session, deal_id: str) -> None:
    """The staff names in the deal's stored certificate documents (the current one, and the slices of
    every one it superseded) become "(erased)". The hashes stay as issued."""
    from store.custody import _add_parts

    current = session.get(Certificate, deal_id)
    if current is not None:
        current.content_json = _without_staff(current.content_json)
        session.add(current)
    for certificate_id in session.execute(select(CertificateIssue.certificate_id).where(CertificateIssue.deal_id == deal_id)).scalars().all():
        parts = session.execute(select(CertificatePart.text).where(CertificatePart.certificate_id == certificate_id).order_by(CertificatePart.seq)).scalars().all()
        if not parts:
            continue  # issued before certificates were kept in parts: only its current copy exists
        session.execute(delete(CertificatePart).where(CertificatePart.certificate_id == certificate_id))
        _add_parts(session, certificate_id, _without_staff("".join(parts)))
