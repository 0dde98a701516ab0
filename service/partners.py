"""Partner operations for callers: the store row, then the specialization workflow."""

import asyncio
import hashlib
import uuid

from sqlmodel import Session
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from domain.specialization import ExamResult, SpecializationStatus, SpecializationView, TrainingRecord
from settings import Settings
from store import specialization as store
from store.deals import UnknownPartner, deals_booked_between
from store.db import session_scope
from workflows import story
from workflows.ids import partner_workflow_id
from workflows.search_attributes import PARTNER_ID
from workflows.specialization import PartnerSpecializationWorkflow, SpecializationInput


class PartnerExists(Exception):
    pass


class PartnerNotCertified(Exception):
    def __init__(self, partner_id: str, status: str):
        super().__init__(f"partner {partner_id} is {status.replace('_', ' ')}: it cannot book takeback incentive deals")
        self.status = status


def partner_handle(client: Client, partner_id: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(PartnerSpecializationWorkflow.run, partner_workflow_id(partner_id))


async def create_partner(client: Client, settings: Settings, partner_id: str, name: str, contact_email: str, country: str) -> None:
    """Store the partner and start its specialization workflow. Raises PartnerExists."""
    from sqlalchemy.exc import IntegrityError

    from store.tables import Partner

    def insert() -> None:
        with session_scope(settings.effective_database_url) as session:
            if session.get(Partner, partner_id) is not None:
                raise PartnerExists(partner_id)
            session.add(Partner(id=partner_id, name=name, contact_email=contact_email, country=country))
            try:
                session.commit()
            except IntegrityError:
                raise PartnerExists(partner_id) from None

    await asyncio.to_thread(insert)
    await start_specialization(client, settings, partner_id)


async def start_specialization(client: Client, settings: Settings, partner_id: str) -> None:
    """Start the partner's long-running workflow; a second start is a no-op."""
    try:
        await client.start_workflow(
            PartnerSpecializationWorkflow.run,
            SpecializationInput(
                partner_id=partner_id,
                year_seconds=settings.specialization_year_seconds,
                reminder_offsets_seconds=settings.specialization_reminder_offsets_seconds,
            ),
            id=partner_workflow_id(partner_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=story.partner_summary(partner_id),  # the Temporal Web UI's line for it
            search_attributes=TypedSearchAttributes([SearchAttributePair(PARTNER_ID, partner_id)]) if settings.search_attributes else None,
        )
    except WorkflowAlreadyStartedError:
        pass


async def specialization(client: Client, settings: Settings, partner_id: str) -> SpecializationView:
    try:
        view = await partner_handle(client, partner_id).query(PartnerSpecializationWorkflow.view)
    except Exception:
        view = await asyncio.to_thread(_projected, settings, partner_id)
        if view is None:
            raise
    return await asyncio.to_thread(_with_deals_counted, settings, partner_id, view)


def _with_deals_counted(settings: Settings, partner_id: str, view: SpecializationView) -> SpecializationView:
    """The year's deal count from the store, where bookings land (the workflow looks only when it decides)."""
    if view.year_start is None or view.year_end is None:
        return view
    with session_scope(settings.effective_database_url) as session:
        return view.model_copy(update={"deals_this_year": deals_booked_between(session, partner_id, view.year_start, view.year_end)})


def _projected(settings: Settings, partner_id: str) -> SpecializationView | None:
    with session_scope(settings.effective_database_url) as session:
        row = store.projection(session, partner_id)
        return SpecializationView.model_validate_json(row.view_json) if row else None


def ensure_may_book(settings: Settings, partner_id: str, session: Session | None = None) -> None:
    """Booking needs a registered (else UnknownPartner), certified, not lapsed partner (read from the
    workflow's projection).
    The booking path passes its own session, so the check costs no second connection."""
    if session is None:
        with session_scope(settings.effective_database_url) as session:
            return ensure_may_book(settings, partner_id, session)
    registered, status = store.booking_status(session, partner_id)
    if not registered:
        raise UnknownPartner(partner_id)
    status = status or SpecializationStatus.not_certified.value
    if status != SpecializationStatus.certified.value:
        raise PartnerNotCertified(partner_id, status)


def idempotent_request_id(key_id: int, idempotency_key: str) -> str:
    """The id of a caller's action named by its `Idempotency-Key`: the same for every retry by the same
    API key, another for another key (keys are scoped per API key). Temporal dedupes updates by id."""
    return hashlib.sha256(f"{key_id}\n{idempotency_key}".encode()).hexdigest()[:32]


async def record_training(client: Client, partner_id: str, training: TrainingRecord, request_id: str | None = None) -> SpecializationView:
    request_id = request_id or uuid.uuid4().hex
    return await partner_handle(client, partner_id).execute_update(
        PartnerSpecializationWorkflow.record_training, args=[request_id, training], id=f"training-{request_id}"
    )


async def record_exam(client: Client, partner_id: str, result: ExamResult, request_id: str | None = None) -> SpecializationView:
    """With a request id, a retry is the same update (recorded once); without, every call is a new one."""
    return await partner_handle(client, partner_id).execute_update(
        PartnerSpecializationWorkflow.record_exam, result, id=f"exam-{request_id or uuid.uuid4().hex}"
    )


async def sign_pledge(client: Client, partner_id: str) -> SpecializationView:
    return await partner_handle(client, partner_id).execute_update(PartnerSpecializationWorkflow.sign_pledge)


async def reinstate(client: Client, partner_id: str, reason: str) -> SpecializationView:
    return await partner_handle(client, partner_id).execute_update(PartnerSpecializationWorkflow.reinstate, reason)
