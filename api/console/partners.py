"""Partners: the list (ops), a partner's specialization, and reinstating a lapsed one (ops), through
the API's own route functions."""

import asyncio
import json
import secrets
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from api.console.pages import ConsoleRoute, is_htmx, render, validation_words
from api.console.session import check_csrf, read_form, signed_in_caller
from api.deps import Caller, ClientDep, SettingsDep, require_ops, require_partner_access
from api.problems import Problem
from api.routes import partners as partner_routes
from domain.durations import format_duration
from domain.specialization import ReinstateRequest, SpecializationStatus, SpecializationView
from store import console as queries
from store.db import session_scope

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
DEALS_REQUIRED_PER_YEAR = 1  # shared/domain.md: at least one takeback deal in each specialization year


def next_reminder(view: SpecializationView, offsets_seconds: list[float], now: datetime) -> tuple[datetime | None, str]:
    """When the partner is next reminded to book its year's deal, and why (not) in words."""
    if view.status != SpecializationStatus.certified or view.year_end is None:
        return None, "none: reminders go to certified partners"
    if view.deals_this_year >= DEALS_REQUIRED_PER_YEAR:
        return None, "none needed: this year's deal is booked"
    sent = set(view.reminders_sent_this_year)
    upcoming = [view.year_end - timedelta(seconds=offset) for offset in offsets_seconds
                if format_duration(timedelta(seconds=offset)) not in sent and view.year_end - timedelta(seconds=offset) > now]
    if not upcoming:
        return None, "none left this year: the year ends without another reminder"
    at = min(upcoming)
    return at, f"{format_duration(view.year_end - at)} before the year ends"


@router.get("/partners")
async def partners_list(request: Request, settings: SettingsDep):
    caller, _ = await signed_in_caller(request, settings)
    if not caller.is_ops:
        return RedirectResponse(f"/console/partners/{caller.partner_id}", status_code=303)

    def load():
        with session_scope(settings.effective_database_url) as session:
            return queries.partners_overview(session)

    return render(request, "partners.html", partners=await asyncio.to_thread(load))


async def _partner_context(settings, client, caller: Caller, partner_id: str) -> dict:
    partner = await partner_routes.get_partner(partner_id=partner_id, caller=caller, settings=settings, client=client)
    now = datetime.now(timezone.utc)
    reminder_at, reminder_words = next_reminder(partner.specialization, settings.specialization_reminder_offsets_seconds, now)
    return {"partner": partner, "view": partner.specialization, "reminder_at": reminder_at, "reminder_words": reminder_words, "now": now, "required": DEALS_REQUIRED_PER_YEAR}


@router.get("/partners/{partner_id}")
async def partner_page(partner_id: partner_routes.PartnerId, request: Request, settings: SettingsDep, client: ClientDep):
    caller, _ = await signed_in_caller(request, settings)
    require_partner_access(caller, partner_id)  # another partner's page does not exist for a partner
    return render(request, "partner.html", **await _partner_context(settings, client, caller, partner_id), action=None)


@router.post("/partners/{partner_id}/reinstate")
async def reinstate(partner_id: partner_routes.PartnerId, request: Request, settings: SettingsDep, client: ClientDep):
    caller, session = await signed_in_caller(request, settings)
    form = await read_form(request)
    check_csrf(session, form)
    require_partner_access(caller, partner_id)
    require_ops(caller, "reinstating a partner")
    action = {"step": "form", "reason": form.get("reason", "").strip(), "error": None, "idempotency_key": "", "result": None}
    status_code = 200
    try:
        body = ReinstateRequest(reason=action["reason"])
    except ValidationError as error:
        body, action["error"], status_code = None, validation_words(error), 422
    step = form.get("step", "review")
    if body is not None and step == "review":
        action["step"], action["idempotency_key"] = "review", secrets.token_urlsafe(16)
    elif body is not None and step == "confirm":
        try:
            answer = await partner_routes.reinstate(
                partner_id=partner_id, body=body, caller=caller, settings=settings, client=client, request=request,
                idempotency_key=form.get("idempotency_key", "")[:200] or None,
            )
            action["step"], action["result"] = "done", SpecializationView.model_validate(json.loads(answer.body))
        except Problem as problem:
            action["error"], status_code = problem.detail, problem.status
    if is_htmx(request):
        return render(request, "_reinstate.html", status_code=status_code, partner_id=partner_id, action=action)
    return render(request, "partner.html", status_code=status_code, **await _partner_context(settings, client, caller, partner_id), action=action)
