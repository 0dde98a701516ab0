"""The deals table (and its CSV), a deal's page with its timeline, and the ops actions on a deal.

The actions go through the API's own route functions (`api.routes.deals.extend` / `cancel`): the same
ownership and role checks, the same service call, idempotency and audit row, the same refusals.
"""

import asyncio
import io
import json
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError

from api.console.pages import ConsoleRoute, is_htmx, render, validation_words
from api.console.session import check_csrf, read_form, signed_in_caller
from api.deps import Caller, ClientDep, SettingsDep, owned_deal, require_ops
from api import spreadsheet
from api.problems import Problem
from api.routes import deals as deal_routes
from domain.durations import parse_duration
from domain.models import OPEN_DEAL_STATUSES, CancelRequest, DealId, DealView, ExtendRequest
from store import console as queries
from store.db import session_scope
from store import deals as deal_store
from store.tables import Deal
from workflows.ids import deal_workflow_id

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
DEFAULT_RISK_DAYS = 30
MAX_DAYS = 3650
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
POLL_SECONDS = 3  # how often an open deal's page asks for its news


@dataclass(frozen=True)
class TableQuery:
    """The table's filters, sort and page, read from the URL (so a link shows the same table)."""

    status: str = ""
    partner: str = ""
    at_risk: bool = False
    risk_days: int = DEFAULT_RISK_DAYS
    deadline_days: int | None = None
    q: str = ""
    sort: str = "booked"
    order: str = "desc"
    page: int = 1
    scope: str = ""  # the partner a partner key sees, whatever the URL says (not part of the URL)

    @property
    def deal_filter(self) -> queries.DealFilter:
        return queries.DealFilter(
            status=self.status or None, partner_id=self.scope or self.partner or None, at_risk_days=self.risk_days if self.at_risk else None,
            deadline_days=self.deadline_days, search=self.q or None,
        )

    def params(self, **changes) -> str:
        """This table's query string, with `changes` (page 1 unless a page is given)."""
        query = replace(self, **{"page": 1, **changes})
        values = {
            "status": query.status, "partner": query.partner, "at_risk": "1" if query.at_risk else "",
            "risk_days": str(query.risk_days) if query.at_risk and query.risk_days != DEFAULT_RISK_DAYS else "",
            "deadline_days": "" if query.deadline_days is None else str(query.deadline_days), "q": query.q,
            "sort": "" if query.sort == "booked" else query.sort, "order": "" if query.order == "desc" else query.order,
            "page": "" if query.page == 1 else str(query.page),
        }
        return urlencode({name: value for name, value in values.items() if value})

    def flags_at_risk(self, row: queries.DealRow, now: datetime) -> bool:
        """What the at-risk filter selects, for the row's flag (with this table's number of days)."""
        return row.is_open and row.below_threshold and row.return_deadline is not None and row.return_deadline < now + timedelta(days=self.risk_days)

    def sorted_by(self, column: str) -> str:
        """The link of a column header: sort by it, or flip the order if it sorts already."""
        order = ("asc" if self.order == "desc" else "desc") if self.sort == column else ("asc" if column in ("deadline", "partner", "id") else "desc")
        return self.params(sort=column, order=order)


def _days(value: str, name: str, default: int | None) -> int | None:
    if not value.strip():
        return default
    if not value.strip().isdigit() or int(value) > MAX_DAYS:
        raise Problem(422, f"{name} is a number of days from 0 to {MAX_DAYS}", "invalid-filter")
    return int(value)


def table_query(request: Request, caller: Caller) -> TableQuery:
    params = request.query_params
    status = params.get("status", "").strip()
    if status and status not in queries.STATUSES:
        raise Problem(422, f"status is one of {', '.join(queries.STATUSES)}", "invalid-filter")
    partner = params.get("partner", "").strip()
    if partner and not ID.fullmatch(partner):
        raise Problem(422, "partner is a partner id", "invalid-filter")
    sort = params.get("sort", "booked")
    if sort not in queries.SORTS:
        raise Problem(422, f"sort is one of {', '.join(queries.SORTS)}", "invalid-filter")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise Problem(422, "order is asc or desc", "invalid-filter")
    page = params.get("page", "1")
    if not page.isdigit() or not 1 <= int(page) <= 100_000:
        raise Problem(422, "page is a number from 1", "invalid-filter")
    search = params.get("q", "").strip()
    if len(search) > 100:
        raise Problem(422, "search for a deal id or serial of at most 100 characters", "invalid-filter")
    return TableQuery(
        status=status, partner=partner or "", at_risk=params.get("at_risk", "") in ("1", "on", "true"),
        risk_days=_days(params.get("risk_days", ""), "risk_days", DEFAULT_RISK_DAYS), deadline_days=_days(params.get("deadline_days", ""), "deadline_days", None),
        q=search, sort=sort, order=order, page=int(page), scope="" if caller.is_ops else caller.partner_id,  # a partner's table holds its own deals
    )


@router.get("")
@router.get("/")
async def home(request: Request, settings: SettingsDep):
    await signed_in_caller(request, settings)
    return RedirectResponse("/console/deals", status_code=303)


@router.get("/deals")
async def deals_table(request: Request, settings: SettingsDep):
    caller, _ = await signed_in_caller(request, settings)
    query = table_query(request, caller)
    if request.url.query != query.params(page=query.page):
        # The filter form sends every field, empty ones too: the short form of the same table is the link to share.
        return RedirectResponse(f"/console/deals?{query.params(page=query.page)}".rstrip("?"), status_code=303)
    now = datetime.now(timezone.utc)

    def load():
        with session_scope(settings.effective_database_url) as session:
            counts = queries.status_counts(session, query.deal_filter, now)
            rows = queries.deals_page(session, query.deal_filter, now, query.sort, query.order == "desc", (query.page - 1) * PAGE_SIZE, PAGE_SIZE)
            partners = queries.partner_ids(session) if caller.is_ops else []
            return counts, rows, partners

    counts, rows, partners = await asyncio.to_thread(load)
    total = counts.get(query.status, 0) if query.status else sum(counts.values())
    return render(
        request, "deals.html", query=query, counts=counts, rows=rows, total=total, partners=partners, page_size=PAGE_SIZE,
        pages=max(1, -(-total // PAGE_SIZE)), now=now, statuses=queries.STATUSES, sorts=queries.SORTS,
    )


CSV_COLUMNS = (
    "deal_id", "partner_id", "customer", "status", "booked_at", "return_deadline", "committed_units", "required_units", "received_units",
    "rejected_units", "new_products_value", "incentive_mode", "incentive_rate", "incentive_amount", "incentive_status",
)


@router.get("/deals.csv")
async def deals_csv(request: Request, settings: SettingsDep):
    caller, _ = await signed_in_caller(request, settings)
    query = table_query(request, caller)
    now = datetime.now(timezone.utc)

    def lines():
        buffer = io.StringIO()
        writer = spreadsheet.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        with session_scope(settings.effective_database_url) as session:
            for row in queries.all_deals(session, query.deal_filter, now, query.sort, query.order == "desc"):
                writer.writerow((
                    row.id, row.partner_id, row.customer_name, row.status, row.booked_at, row.return_deadline, row.committed_units, row.required_units,
                    row.received_units, row.rejected_units, row.new_products_value, row.incentive_mode, row.incentive_rate, row.incentive_amount, row.incentive_status,
                ))
                if buffer.tell() > 32 * 1024:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    name = f"deals-{now:%Y%m%d-%H%M%S}.csv"
    # A sync generator: Starlette runs each step in its thread pool, so the store is never read on the event loop.
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{quote(name)}"'})


# --- a deal --------------------------------------------------------------------------------------


async def _deal_view(settings, client, caller: Caller, deal_id: str) -> tuple[DealView, bool]:
    """The deal as GET /v1/deals/{id} answers it (live from its workflow while open), and whether that
    failed and the store's copy stands in (the workflow engine down: the page says so)."""
    try:
        answer = await deal_routes.get_deal(deal_id=deal_id, caller=caller, settings=settings, client=client)
        return DealView.model_validate_json(answer.body), False
    except Problem as problem:
        if problem.status != 503:
            raise
    view = await _stored_view(settings, deal_id)  # what the poll shows: the carrier's latest pickup statuses too
    if view is None:
        raise Problem(503, "the workflow engine did not answer and the store has no copy of this deal yet; retry shortly", "temporal-unavailable")
    return view, True


async def _stored_view(settings, deal_id: str) -> DealView | None:
    """The store's copy of the deal (its projection, written on every change, with the carrier's latest
    pickup statuses), as the polls read it."""

    def stored():
        with session_scope(settings.effective_database_url) as session:
            return deal_store.stored_deal(session, deal_id)

    row, statuses = await asyncio.to_thread(stored)
    if row is None or row.view_json is None:
        return None
    return deal_store.with_pickup_statuses(DealView.model_validate_json(row.view_json), statuses)


async def deal_context(settings, client, caller: Caller, deal_id: str, *, poll: bool = False) -> dict:
    """`poll`: the page's poll, every POLL_SECONDS while it is open, reads the store's copy: a query of
    the workflow is a billable Temporal Cloud Action, 1,200 an hour for each open page (bench/RESULTS.md,
    what a deal costs). The page itself, and every answer to an action, ask the workflow."""
    row = await owned_deal(settings, caller, deal_id)  # 404 for a deal that is not the caller's, as the API
    stored = await _stored_view(settings, deal_id) if poll else None
    view, stale = (stored, False) if stored is not None else await _deal_view(settings, client, caller, deal_id)

    def load():
        with session_scope(settings.effective_database_url) as session:
            deal = session.get(Deal, deal_id)  # read again: the store may have caught up since `row`
            return queries.deal_timeline(session, deal, status=view.status.value, closed_reason=view.closed_reason), deal.status

    timeline, stored_status = await asyncio.to_thread(load)
    ui = settings.temporal_ui_url.rstrip("/")
    is_open = view.status in OPEN_DEAL_STATUSES
    return {
        "deal": view, "row": row, "stale": stale, "timeline": timeline, "is_open": is_open,
        # Polled while open, and after it closed until the store's copy says so too (its projection lags the workflow).
        "polling": is_open or stored_status != view.status.value,
        "now": datetime.now(timezone.utc), "poll_seconds": POLL_SECONDS,
        "workflow_url": f"{ui}/namespaces/{quote(settings.temporal_namespace, safe='')}/workflows/{quote(deal_workflow_id(deal_id), safe='')}",
    }


@router.get("/deals/{deal_id}")
async def deal_page(deal_id: DealId, request: Request, settings: SettingsDep, client: ClientDep):
    caller, _ = await signed_in_caller(request, settings)
    context = await deal_context(settings, client, caller, deal_id)
    return render(request, "deal.html", **context, action=None)


@router.get("/deals/{deal_id}/live")
async def deal_live(deal_id: DealId, request: Request, settings: SettingsDep, client: ClientDep):
    """The part of a deal's page that changes (header and timeline): an open deal's page polls it."""
    caller, _ = await signed_in_caller(request, settings)
    return render(request, "_deal_live.html", **await deal_context(settings, client, caller, deal_id, poll=True))


@router.get("/deals/{deal_id}/certificate")
async def deal_certificate(deal_id: DealId, request: Request, settings: SettingsDep):
    """The certificate's HTML, as GET /v1/deals/{id}/certificate?format=html answers it."""
    caller, _ = await signed_in_caller(request, settings)
    return await deal_routes.certificate(deal_id=deal_id, caller=caller, settings=settings, request=request, format="html")


# --- actions (ops) -------------------------------------------------------------------------------


@dataclass
class ActionState:
    """What the actions panel shows: a form (with what was typed and the refusal, if any), a
    confirmation to give, or the outcome."""

    name: str  # extend | cancel
    step: str = "form"  # form | review | done
    extend_by: str = ""
    reason: str = ""
    error: str | None = None
    idempotency_key: str = ""
    new_deadline: datetime | None = None
    result: DealView | None = None


async def _action(request: Request, settings, client, deal_id: str, name: str):
    caller, session = await signed_in_caller(request, settings)
    form = await read_form(request)
    check_csrf(session, form)
    deal = await owned_deal(settings, caller, deal_id)
    require_ops(caller, "extending a deal" if name == "extend" else "cancelling a deal")
    state = ActionState(name=name, extend_by=form.get("extend_by", "").strip(), reason=form.get("reason", "").strip())
    step = form.get("step", "review")
    status_code = 200
    try:
        body = ExtendRequest(extend_by=state.extend_by, reason=state.reason) if name == "extend" else CancelRequest(reason=state.reason)
    except ValidationError as error:
        body, state.error, status_code, step = None, validation_words(error), 422, "form"
    if step == "review" and body is not None:
        state.step, state.idempotency_key = "review", secrets.token_urlsafe(16)  # one key per confirmation: a resent form is the same action
        if name == "extend" and deal.return_deadline is not None:
            state.new_deadline = deal.return_deadline + parse_duration(state.extend_by)
    elif step == "confirm" and body is not None:
        key = form.get("idempotency_key", "")[:200] or None
        route = deal_routes.extend if name == "extend" else deal_routes.cancel
        try:
            answer = await route(deal_id=deal_id, body=body, caller=caller, settings=settings, client=client, request=request, idempotency_key=key)
            state.step, state.result = "done", DealView.model_validate(json.loads(answer.body))
        except Problem as problem:
            state.error, status_code = problem.detail, problem.status
    headers = {"HX-Trigger": "deal-changed"} if state.step == "done" else {}
    if is_htmx(request):
        return render(request, "_actions.html", status_code=status_code, headers=headers, deal_id=deal_id, action=state, is_open=state.result is None or state.result.status in OPEN_DEAL_STATUSES)
    context = await deal_context(settings, client, caller, deal_id)
    return render(request, "deal.html", status_code=status_code, **context, action=state)


@router.post("/deals/{deal_id}/extend")
async def extend(deal_id: DealId, request: Request, settings: SettingsDep, client: ClientDep):
    return await _action(request, settings, client, deal_id, "extend")


@router.post("/deals/{deal_id}/cancel")
async def cancel(deal_id: DealId, request: Request, settings: SettingsDep, client: ClientDep):
    return await _action(request, settings, client, deal_id, "cancel")

