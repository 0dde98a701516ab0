import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, StringConstraints
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from api.deps import CallerDep, ClientDep, SettingsDep, require_ops, require_partner_access, temporal
from api.idempotency import Action, once
from api.problems import Problem, not_found
from domain.models import Country, EmailAddress, FreeText, ShortText
from domain.specialization import ExamResult, ReinstateRequest, SpecializationView, TrainingRecord
from service import partners
from store.db import session_scope
from store.tables import Partner

router = APIRouter(prefix="/v1/partners", tags=["partners"])

PartnerId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class PartnerCreate(BaseModel):
    id: PartnerId
    name: ShortText
    contact_email: EmailAddress
    country: Country


class Reinstatement(ReinstateRequest):
    """The body of a reinstate: its reason is free text like every other reason (no NUL, escape or bidi control)."""

    reason: FreeText


class PartnerOut(BaseModel):
    id: str
    name: str
    contact_email: str
    country: str
    specialization: SpecializationView


async def _partner_row(settings, partner_id: str) -> Partner:
    def load():
        with session_scope(settings.effective_database_url) as session:
            return session.get(Partner, partner_id)

    row = await asyncio.to_thread(load)
    if row is None:
        raise not_found(f"partner {partner_id}")
    return row


async def _out(settings, client, row: Partner, view: SpecializationView | None = None) -> PartnerOut:
    if view is None:
        try:
            view = await temporal(partners.specialization(client, settings, row.id))
        except Problem:
            raise
        except Exception:
            view = SpecializationView()  # workflow not started yet (partner stored moments ago)
    return PartnerOut(id=row.id, name=row.name, contact_email=row.contact_email, country=row.country, specialization=view)


async def _unfinished_retry(settings, client, body: PartnerCreate) -> bool:
    """The same registration again, whose first attempt never started the partner's workflow."""
    from temporalio.service import RPCError, RPCStatusCode

    row = await _partner_row(settings, body.id)
    if (row.name, row.contact_email, row.country) != (body.name, body.contact_email, body.country):
        return False
    try:
        await temporal(partners.partner_handle(client, body.id).describe())
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


IdempotencyKey = Annotated[str | None, Header(max_length=200, description="Retries with the same key are the same action, applied once")]


@router.post("", status_code=201, response_model=PartnerOut, summary="Register a partner (ops)")
async def create_partner(body: PartnerCreate, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request, idempotency_key: IdempotencyKey = None):
    require_ops(caller, "registering a partner")

    async def run(_derived: str | None) -> PartnerOut:
        try:
            await temporal(partners.create_partner(client, settings, body.id, body.name, body.contact_email, body.country))
        except partners.PartnerExists:
            if not await _unfinished_retry(settings, client, body):
                raise Problem(409, f"partner {body.id} exists already", "partner-exists") from None
            # The first attempt stored the row, then lost the engine (503): finish it now.
            await temporal(partners.start_specialization(client, settings, body.id))
        return await _out(settings, client, await _partner_row(settings, body.id), SpecializationView())

    action = Action("partner", partner_id=body.id, detail={"country": body.country})
    return await once(request, caller, settings, key=idempotency_key, body=body, status_code=201, action=action, run=run)


@router.get("/{partner_id}", response_model=PartnerOut, summary="A partner and its specialization")
async def get_partner(partner_id: PartnerId, caller: CallerDep, settings: SettingsDep, client: ClientDep) -> PartnerOut:
    require_partner_access(caller, partner_id)
    return await _out(settings, client, await _partner_row(settings, partner_id))


UPDATE_TIMEOUT = 15.0  # seconds a partner write waits for the workflow's answer before a 503


async def _specialization_update(settings, client, caller, partner_id: str, call) -> SpecializationView:
    require_partner_access(caller, partner_id)
    await _partner_row(settings, partner_id)
    await temporal(partners.start_specialization(client, settings, partner_id), client=client)  # partners stored before the workflow existed
    try:
        return await temporal(call(), timeout=UPDATE_TIMEOUT, client=client)
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == "NotLapsed":
            # e.g. a second, concurrent reinstate: the first one already restored the partner
            raise Problem(409, cause.message, "not-lapsed") from None
        raise Problem(409, str(getattr(cause, "message", error)), "conflict") from None


async def _audited_update(request, settings, client, caller, partner_id: str, name: str, key: str | None, body: BaseModel | None, call, reason=None, detail=None):
    """A partner write through the idempotency layer; `call(request_id)` gets the update id derived
    from the key that first sent it (None without a key, or where the workflow needs none)."""
    return await once(
        request, caller, settings, key=key, body=body, status_code=201 if name != "reinstate" else 200,
        action=Action(name, partner_id=partner_id, reason=reason, detail=detail or {}),
        run=lambda request_id: _specialization_update(settings, client, caller, partner_id, lambda: call(request_id)),
        derive=lambda: partners.idempotent_request_id(caller.key_id, key),
    )


@router.post("/{partner_id}/trainings", status_code=201, response_model=SpecializationView, summary="Record a person's training (ops)")
async def record_training(
    partner_id: PartnerId, body: TrainingRecord, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request, idempotency_key: IdempotencyKey = None,
):
    require_partner_access(caller, partner_id)
    require_ops(caller, "recording training")
    # Hours only: the trainee's name and e-mail stay with the training.
    return await _audited_update(
        request, settings, client, caller, partner_id, "training", idempotency_key, body,
        lambda request_id: partners.record_training(client, partner_id, body, request_id), detail={"hours": body.hours},
    )


@router.post("/{partner_id}/exams", status_code=201, response_model=SpecializationView, summary="Record an exam result (ops)")
async def record_exam(
    partner_id: PartnerId, body: ExamResult, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request, idempotency_key: IdempotencyKey = None,
):
    require_partner_access(caller, partner_id)
    require_ops(caller, "recording exams")
    return await _audited_update(
        request, settings, client, caller, partner_id, "exam", idempotency_key, body,
        lambda request_id: partners.record_exam(client, partner_id, body, request_id), detail={"exam": body.exam, "passed": body.passed},
    )


@router.post("/{partner_id}/pledge", status_code=201, response_model=SpecializationView, summary="Sign the sustainability pledge (ops or the partner)")
async def sign_pledge(partner_id: PartnerId, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request, idempotency_key: IdempotencyKey = None):
    require_partner_access(caller, partner_id)
    return await _audited_update(request, settings, client, caller, partner_id, "pledge", idempotency_key, None, lambda _request_id: partners.sign_pledge(client, partner_id))


@router.post("/{partner_id}/reinstate", response_model=SpecializationView, summary="Restore a lapsed specialization (ops)")
async def reinstate(
    partner_id: PartnerId, body: Reinstatement, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request, idempotency_key: IdempotencyKey = None,
):
    require_partner_access(caller, partner_id)
    require_ops(caller, "reinstating a partner")
    return await _audited_update(
        request, settings, client, caller, partner_id, "reinstate", idempotency_key, body, lambda _request_id: partners.reinstate(client, partner_id, body.reason), reason=body.reason,
    )
