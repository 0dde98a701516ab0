"""Impact: what came back and where it went, trees, money; by month as inline SVG charts."""

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from fastapi import APIRouter, Request

from api.console.pages import ConsoleRoute, render
from api.console.session import signed_in_caller
from api.deps import SettingsDep, require_partner_access
from api.problems import Problem
from domain.catalog import default_catalog
from store import console as queries
from store.db import session_scope
from store.reports import impact

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # a CSS class: its colour
    label: str  # what a screen reader and a tooltip say


@dataclass(frozen=True)
class Chart:
    """A stacked bar chart by month, in SVG user units (the template draws it; CSS colours it)."""

    title: str
    width: int
    height: int
    bars: list[Bar]
    months: list[tuple[float, str]]  # (x of the label, YYYY-MM)
    ticks: list[tuple[float, str]]  # (y, value)
    series: list[tuple[str, str]]  # (css class, legend)
    rows: list[tuple[str, list[str]]]  # the same numbers as a table: (month, values)


WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 240, 64, 28, 12


def _nice_top(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** max(0, len(str(int(value))) - 1)
    for multiple in (1, 2, 2.5, 5, 10):
        if value <= multiple * step:
            return multiple * step
    return 10 * step


def stacked_by_month(title: str, data: list[tuple[str, dict]], series: list[tuple[str, str]], fmt=str) -> Chart:
    """Months along x (the last 24 with data), a bar per month stacked by `series` (key, legend)."""
    data = data[-24:]
    top = _nice_top(max((float(sum(values.get(key, 0) for key, _ in series)) for _, values in data), default=0))
    plot_width, plot_height = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_width / max(1, len(data))
    bars, months = [], []
    for index, (month, values) in enumerate(data):
        x = LEFT + index * slot + slot * 0.15
        y = TOP + plot_height
        for key, legend in series:
            amount = float(values.get(key, 0))
            if amount <= 0:
                continue
            height = plot_height * amount / top
            y -= height
            bars.append(Bar(round(x, 1), round(y, 1), round(slot * 0.7, 1), round(height, 1), key, f"{month}: {fmt(values.get(key, 0))} {legend}"))
        months.append((round(LEFT + index * slot + slot / 2, 1), month))
    ticks = [(round(TOP + plot_height - plot_height * fraction, 1), fmt(_tick(top * fraction))) for fraction in (0, 0.25, 0.5, 0.75, 1)]
    rows = [(month, [fmt(values.get(key, 0)) for key, _ in series]) for month, values in data]
    return Chart(title, WIDTH, HEIGHT, bars, months, ticks, series, rows)


def _tick(value: float):
    return int(value) if float(value).is_integer() else round(value, 2)


def _money(value) -> str:
    return f"{Decimal(str(value)):,.2f}"


@router.get("/impact")
async def impact_page(request: Request, settings: SettingsDep, partner: str | None = None):
    caller, _ = await signed_in_caller(request, settings)
    partner_id = (partner or "").strip() or None
    if partner_id is not None:
        if len(partner_id) > 64:
            raise Problem(422, "partner is a partner id", "invalid-filter")
        require_partner_access(caller, partner_id)
    if not caller.is_ops:
        partner_id = caller.partner_id  # a partner's impact is its own

    def load():
        with session_scope(settings.effective_database_url) as session:
            return (
                impact(session, default_catalog(), partner_id), queries.units_by_month(session, partner_id), queries.money_by_month(session, partner_id),
                queries.partner_ids(session) if caller.is_ops else [],
            )

    report, units, money, partners = await asyncio.to_thread(load)
    charts = [
        stacked_by_month("Units received by month, by disposition", units, [("refresh", "refreshed"), ("recycle", "recycled"), ("other", "other")]),
        stacked_by_month("Incentives decided by month, by outcome", money, [("released", "released"), ("forfeited", "forfeited"), ("clawed_back", "clawed back")], fmt=_money),
    ]
    return render(request, "impact.html", report=report, charts=charts, partners=partners, partner_id=partner_id)
