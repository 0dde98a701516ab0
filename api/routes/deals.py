import asyncio
import base64
import hashlib
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import and_, or_, select

from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal, require_ops, require_partner_access, temporal
from api.idempotency import Action, audit_values, once
from api.metrics import DEALS_BOOKED
from api.problems import Problem, not_found
from domain import rules
from api.certificates import actor_of, certificate_answer
from domain.models import BookingRequest, CancelRequest, DealId, DealStatus, DealView, ExtendRequest
from observability.logs import bind
from service import deals as service
from service.partners import PartnerNotCertified
from store import audit as audit_store
from store import deals as store
from store import mail as mail_store
from store.db import session_scope
from store.tables import Deal

router = APIRouter(prefix="/v1/deals", tags=["deals"])


class DealPage(BaseModel):
    items: list[DealView]
    next_cursor: str | None


class EmailState(BaseModel):
    key: str
    to: str
    cc: str | None
    subject: str
    state: str  # queued | sending | sent | failed
    attempts: int
    last_error: str | None  # the provider's reason, for a failed message or the last failed attempt
    created_at: datetime
    sent_at: datetime | None


def booking_deal_id(key_id: int, idempotency_key: str) -> str:
    """The deal a keyed booking books: every retry books this one deal (the key's record keeps it)."""
    return "D" + hashlib.sha256(f"{key_id}:{idempotency_key}".encode()).hexdigest()[:16].upper()


@router.post("", status_code=201, response_model=DealView, summary="Book a takeback deal (ops, or a partner for itself)")
async def book_deal(
    body: BookingRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    require_partner_access(caller, body.partner_id)
    action = Action("booking", partner_id=body.partner_id, detail={
        "units": sum(line.quantity for line in body.equipment), "new_products_value": str(body.new_products_value), "incentive_rate": str(body.incentive_rate),
    })

    async def run(deal_id: str | None) -> DealView:
        audit = audit_values(caller, request, action, 201, idempotency_key)  # written with the booking, as if it succeeds
        try:
            view = await temporal(service.book_deal(client, settings, body, deal_id=deal_id, by_partner=not caller.is_ops, actor=actor_of(caller), audit=audit), timeout=20)
        except rules.RuleViolation as error:
            raise Problem(422, str(error), "rule-violation") from None
        except PartnerNotCertified as error:
            raise Problem(409, str(error), "partner-not-certified") from None
        except store.UnknownPartner:
            raise not_found(f"partner {body.partner_id}") from None
        except store.SerialConflict as error:
            raise Problem(409, str(error), "serial-committed-elsewhere", conflicting_serials=error.count) from None
        finally:
            action.recorded_id = audit.get("id")
        action.deal_id = view.id
        bind(deal_id=view.id, partner_id=body.partner_id)  # the request's log lines name the deal it booked
        DEALS_BOOKED.inc()
        return view

    return await once(
        request, caller, settings, key=idempotency_key, body=body, status_code=201, action=action, run=run,
        derive=lambda: booking_deal_id(caller.key_id, idempotency_key),
    )


def _encode_cursor(deal) -> str:
    return base64.urlsafe_b64encode(json.dumps([deal.created_at.isoformat(), deal.id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, deal_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(deal_id)
    except Exception:
        raise Problem(422, "cursor is not one this API issued", "invalid-cursor") from None


@router.get("", response_model=DealPage, summary="List deals, newest first, with cursor pagination")
async def list_deals(
    caller: CallerDep, settings: SettingsDep,
    status: DealStatus | None = None,
    partner_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DealPage:
    if not caller.is_ops:
        if partner_id not in (None, caller.partner_id):
            return DealPage(items=[], next_cursor=None)
        partner_id = caller.partner_id
    after = _decode_cursor(cursor) if cursor else None

    def page():
        query = select(Deal.id, Deal.created_at, Deal.view_json).where(Deal.view_json.is_not(None))
        if status:
            query = query.where(Deal.status == status.value)
        if partner_id:
            query = query.where(Deal.partner_id == partner_id)
        if after:
            created, deal_id = after
            query = query.where(or_(Deal.created_at < created, and_(Deal.created_at == created, Deal.id < deal_id)))
        with session_scope(settings.effective_database_url) as session:
            rows = session.execute(query.order_by(Deal.created_at.desc(), Deal.id.desc()).limit(limit + 1)).all()
            return rows, store.pickup_statuses(session, [row.id for row in rows[:limit]])

    rows, statuses = await asyncio.to_thread(page)
    more = len(rows) > limit
    rows = rows[:limit]
    # The stored views are the answer's JSON already: only a deal whose pickups moved since its
    # last projection is parsed, to show the carrier's status.
    items = [
        row.view_json if row.id not in statuses else store.with_pickup_statuses(DealView.model_validate_json(row.view_json), statuses).model_dump_json()
        for row in rows
    ]
    next_cursor = _encode_cursor(rows[-1]) if more and rows else None
    return Response('{"items":[' + ",".join(items) + '],"next_cursor":' + json.dumps(next_cursor) + "}", media_type="application/json")


@router.get("/{deal_id}", response_model=DealView, summary="A deal, live from its workflow (the store's copy once closed)")
async def get_deal(deal_id: DealId, caller: CallerDep, settings: SettingsDep, client: ClientDep):
    # One store read checks ownership and serves a closed deal; the answer is JSON already (no re-validation).
    answer = await temporal(service.get_deal_json(client, settings, deal_id, visible=caller.may_see_partner))
    if answer is None:
        raise not_found(f"deal {deal_id}")
    return Response(answer, media_type="application/json")


async def _deal_update(call):
    try:
        return await temporal(call, timeout=30)
    except service.ReceiptNotCounted as error:
        raise Problem(409, f"{error}; nothing of it counts and no serial of it is kept", "deal-not-open", counted=False) from None
    except service.DealNotOpen as error:
        raise Problem(409, str(error), "deal-not-open") from None
    except service.DealNotFound as error:
        raise not_found(f"deal {error}") from None
    except service.PickupBookingFailed as error:
        raise Problem(502, f"{error}; ops see the carrier's reason on the pickup", "carrier-refused") from None
    except service.ReceiptCountedDealNotTold as error:
        raise Problem(
            503, f"{error}: its deal's decision counts it; retry with the same request to see its result", "write-staged",
            headers={"Retry-After": "2"}, staged=True, counted=True,
        ) from None


async def _deal_action(request, settings, caller, deal, action: str, idempotency_key: str | None, body: BaseModel, run, detail: dict | None = None):
    """An ops action on a deal through the idempotency layer: a retry with the key is the same
    workflow update (its id is derived once, from the key that first sent it)."""
    deal_id = deal.id

    async def update(request_id: str | None) -> DealView:
        return await _deal_update(run(request_id))

    return await once(
        request, caller, settings, key=idempotency_key, body=body, status_code=200,
        action=Action(action, deal_id=deal_id, partner_id=deal.partner_id, reason=getattr(body, "reason", None), detail=detail or {}), run=update,
        derive=lambda: f"{action}-" + hashlib.sha256(f"{caller.key_id}:{deal_id}:{idempotency_key}".encode()).hexdigest()[:32],
    )


@router.post("/{deal_id}/extend", response_model=DealView, summary="Extend the return window, with a reason (ops)")
async def extend(
    deal_id: DealId, body: ExtendRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    deal = await owned_deal(settings, caller, deal_id)
    require_ops(caller, "extending a deal")
    try:
        extend_by = service.parse_extension(body.extend_by)
    except ValueError as error:
        raise Problem(422, str(error), "invalid-duration") from None
    return await _deal_action(
        request, settings, caller, deal, "extend", idempotency_key, body,
        lambda request_id: service.extend_deal(client, deal_id, extend_by, body.reason, request_id=request_id, reason_code=body.reason_code.value, settings=settings, actor=actor_of(caller)),
        detail={"extend_by": body.extend_by},  # its reason code is kept beside the deal (reasonrecord), counted by GET /v1/reports/reasons
    )


@router.post("/{deal_id}/cancel", response_model=DealView, summary="Cancel a deal: nothing is paid (ops)")
async def cancel(
    deal_id: DealId, body: CancelRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    deal = await owned_deal(settings, caller, deal_id)
    require_ops(caller, "cancelling a deal")
    return await _deal_action(
        request, settings, caller, deal, "cancel", idempotency_key, body,
        lambda request_id: service.cancel_deal(client, deal_id, body.reason, request_id=request_id, reason_code=body.reason_code.value, settings=settings, actor=actor_of(caller)),
    )


class AuditEntry(BaseModel):
    id: int
    at: datetime
    action: str  # booking | pickup | receipts | extend | cancel
    status: int  # the answer the call got
    key_id: int  # the acting API key ...
    key_prefix: str | None  # ... and the first characters of it, as `takeback apikey list` shows them
    role: str
    account: str
    reason: str | None
    detail: dict | None
    idempotency_key: str | None
    method: str
    path: str


@router.get("/{deal_id}/audit", response_model=list[AuditEntry], summary="Who did what to the deal, and why, oldest first (ops)")
async def audit(
    deal_id: DealId, caller: CallerDep, settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="only entries after this id (the last id of the previous page)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[AuditEntry]:
    await owned_deal(settings, caller, deal_id)
    require_ops(caller, "reading a deal's audit trail")

    def load():
        with session_scope(settings.effective_database_url) as session:
            return audit_store.deal_trail(session, deal_id, after=after, limit=limit)

    return [
        AuditEntry(
            id=event.id, at=event.at, action=event.action, status=event.status_code, key_id=event.api_key_id, key_prefix=prefix, role=event.role,
            account=event.account, reason=event.reason, detail=json.loads(event.detail_json) if event.detail_json else None,
            idempotency_key=event.idempotency_key, method=event.method, path=event.path,
        )
        for event, prefix in await asyncio.to_thread(load)
    ]


@router.get("/{deal_id}/emails", response_model=list[EmailState], summary="The deal's e-mails and their delivery state (ops)")
async def emails(deal_id: DealId, caller: CallerDep, settings: SettingsDep) -> list[EmailState]:
    await owned_deal(settings, caller, deal_id)
    require_ops(caller, "reading a deal's e-mail")

    def load():
        with session_scope(settings.effective_database_url) as session:
            return [EmailState.model_validate(row, from_attributes=True) for row in mail_store.messages(session, deal_id=deal_id)]

    return await asyncio.to_thread(load)


@router.get("/{deal_id}/certificate", responses={200: {"content": {"application/json": {}, "text/html": {}, "application/pdf": {}}, "description": "the certificate"}}, summary="The certificate of recycling: JSON, HTML (?format=html) or PDF (?format=pdf)")
async def certificate(deal_id: DealId, caller: CallerDep, settings: SettingsDep, request: Request, format: Annotated[str, Query(pattern="^(json|html|pdf)$")] = "json"):
    """Provisional while a received data-bearing unit awaits its verified sanitization (`status`,
    the certificate's `sanitization` summary and each item's `sanitization_status` say which), final
    once none does. Streamed from the store, a window at a time: a deal of 100,000 serials is tens of MB."""
    await owned_deal(settings, caller, deal_id)
    return await certificate_answer(settings, request, deal_id, format)
