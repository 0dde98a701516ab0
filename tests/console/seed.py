"""Deals written straight into a store, and a console session over HTTP, for the console's fast tests."""

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx

from domain.models import DealStatus, DealView, Dispositions, Incentive, IncentiveMode, IncentiveStatus, PickupView
from store.api_keys import create_api_key
from store.db import session_scope
from store.tables import CommittedLine, CommittedSerial, Deal, Partner

NOW = datetime.now(timezone.utc)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def partner(settings, partner_id: str) -> None:
    with session_scope(settings.effective_database_url) as session:
        if session.get(Partner, partner_id) is None:
            session.add(Partner(id=partner_id, name=f"Partner {partner_id}", contact_email=f"{partner_id.lower()}@partner.example", country="CA"))
            session.commit()


def deal(
    settings, deal_id: str, partner_id: str = "P1", *, status: str = "awaiting_returns", committed: int = 10, required: int = 8, received: int = 0,
    deadline: datetime | None = None, booked: datetime | None = None, customer: str = "Northwind", serials: list[str] | None = None,
    incentive_status: str | None = None, pickups: list[PickupView] | None = None, closed_reason: str | None = None,
) -> DealView:
    """A deal as a workflow would have projected it (its row and view), plus its committed line."""
    partner(settings, partner_id)
    booked = booked or NOW - timedelta(days=30)
    deadline = deadline or booked + timedelta(days=365)
    incentive_status = incentive_status or ("held" if status in ("awaiting_returns", "expired") else "released")
    view = DealView(
        id=deal_id, partner_id=partner_id, status=DealStatus(status), booked_at=booked, return_deadline=deadline, committed_units=committed,
        required_units=required, received_units=received, incentive=Incentive(mode=IncentiveMode.rebate, rate=Decimal("0.05"), amount=Decimal("5000.00"), status=IncentiveStatus(incentive_status)),
        pickups=pickups or [], dispositions=Dispositions(refresh=received), closed_reason=closed_reason, revision=1,
    )
    with session_scope(settings.effective_database_url) as session:
        session.add(Deal(
            id=deal_id, partner_id=partner_id, customer_name=customer, customer_country="CA", opportunity="refresh", new_products_value=Decimal("100000.00"),
            incentive_rate=Decimal("0.05"), incentive_mode="rebate", incentive_amount=Decimal("5000.00"), incentive_status=incentive_status, status=status,
            committed_units=committed, required_units=required, received_units=received, refresh_units=received, serials_listed=bool(serials),
            booked_at=booked, return_deadline=deadline, created_at=booked, updated_at=booked, view_json=view.model_dump_json(), revision=1,
        ))
        session.add(CommittedLine(deal_id=deal_id, product_id="C9300-48P", quantity=committed))
        for serial in serials or []:
            session.add(CommittedSerial(deal_id=deal_id, serial=serial, product_id="C9300-48P"))
        session.commit()
    return view


def api_key(settings, role: str = "ops", partner_id: str | None = None) -> str:
    if partner_id:
        partner(settings, partner_id)
    with session_scope(settings.effective_database_url) as session:
        return create_api_key(session, role, partner_id)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """Sign in through the form, as a browser does; the session's CSRF token."""
    form = await http.get("/console/sign-in")
    answer = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key, "next": "/console/deals"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/deals", answer.text
    page = await http.get("/console/deals")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def deal_ids(html: str) -> list[str]:
    """The deals a table page lists, in its order."""
    return re.findall(r'<td><a href="/console/deals/([^"]+)">', html)
