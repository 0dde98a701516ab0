import asyncio
import io
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api import spreadsheet
from api.deps import CallerDep, SettingsDep, require_partner_access
from domain.catalog import default_catalog
from store.db import session_scope
from store.reports import accounting, impact

router = APIRouter(prefix="/v1/reports", tags=["reports"])


@router.get("/impact", responses={200: {"content": {"application/json": {}, "text/csv": {}}, "description": "the report, as JSON or (format=csv) CSV"}}, summary="Units and kg returned, dispositions, trees, incentives, WEEE categories, CO2e and the 99.3% target (a partner sees its own)")
async def impact_report(
    caller: CallerDep, settings: SettingsDep, partner_id: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[date | None, Query(alias="from", description="first day (UTC) of the period")] = None,
    to: Annotated[date | None, Query(description="last day (UTC) of the period, included")] = None,
    year: Annotated[int | None, Query(ge=2000, le=2200)] = None,
    quarter: Annotated[int | None, Query(ge=1, le=4, description="with `year`")] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
):
    """Units count in the period they were received, trees when planted, money when decided and kg by
    material when shipped downstream. A data-bearing unit counts as refurbished or recycled only once
    its sanitization allows it (domain/custody.py); until then it is `awaiting_sanitization`."""
    from api.routes.custody import period

    if not caller.is_ops:
        if partner_id is not None:
            require_partner_access(caller, partner_id)
        partner_id = caller.partner_id
    start, end = period(from_, to, year, quarter)

    def build():
        catalog = default_catalog()
        with session_scope(settings.effective_database_url) as session:
            report = impact(session, catalog, partner_id, start=start, end=end)
            report.update(accounting(session, catalog, partner_id, start=start, end=end))
        report["period"] = {"from": start.isoformat() if start else None, "to": end.isoformat() if end else None}
        return report

    report = await asyncio.to_thread(build)
    if format == "csv":
        return Response(impact_csv(report), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": 'attachment; filename="impact.csv"'})
    return report


def impact_csv(report: dict) -> str:
    """The report as rows of (section, key, value): one figure a row, ready for a spreadsheet."""
    out = io.StringIO()
    writer = spreadsheet.writer(out, lineterminator="\n")  # a product id is the caller's text: no formula
    writer.writerow(["section", "key", "value"])
    period = report["period"]
    writer.writerow(["period", "from", period["from"] or ""])
    writer.writerow(["period", "to", period["to"] or ""])
    writer.writerow(["scope", "partner_id", report["partner_id"] or "all"])
    for key in ("units_returned", "kg_returned", "refresh_share", "recycle_share", "other_share", "trees_planted", "incentives_released", "incentives_forfeited"):
        writer.writerow(["totals", key, report[key]])
    for row in report["kg_by_weee_category"]:
        writer.writerow(["weee_category_kg", f"{row['category']} {row['name']}", row["kg"]])
        writer.writerow(["weee_category_units", f"{row['category']} {row['name']}", row["units"]])
    for key, value in report["units_counted"].items():
        writer.writerow(["units_counted", key, value])
    for key, value in report["co2e_avoided_kg"].items():
        writer.writerow(["co2e_avoided_kg", key, value])
    target = report["reuse_or_recycle_target"]
    writer.writerow(["reuse_or_recycle_target", "target", target["target"]])
    writer.writerow(["reuse_or_recycle_target", "share", "" if target["share"] is None else target["share"]])
    writer.writerow(["reuse_or_recycle_target", "met", "" if target["met"] is None else str(target["met"]).lower()])
    for material, kg in report["kg_by_material"].items():
        writer.writerow(["material_kg", material, kg])
    for unknown in report["unknown_products"]:
        writer.writerow(["unknown_product_units", unknown["product_id"], unknown["units"]])
    return out.getvalue()
