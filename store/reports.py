"""The impact report: what came back, where it went, trees planted, money released or forfeited."""

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session

from domain.catalog import WEEE_CATEGORIES, Catalog
from domain.custody import REUSE_OR_RECYCLE_TARGET, CurrentSanitization, CustodyKind, counted_as, rejection_code
from store.specialization import TreePlanted
from store.tables import (  # noqa: I001
    CustodyEvent,
    Deal,
    DownstreamMaterial,
    DownstreamShipment,
    ReasonRecord,
    ReceiptBatch,
    ReceiptRejection,
    ReturnedItem,
    Sanitization,
    Settlement,
)

def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def impact(session: Session, catalog: Catalog, partner_id: str | None = None, *, start: datetime | None = None, end: datetime | None = None) -> dict:
    """What came back and where it went; `start`/`end` ([start, end)) narrow it to units received,
    trees planted and money decided in that period."""
    items = select(ReturnedItem.product_id, ReturnedItem.disposition, func.count()).group_by(ReturnedItem.product_id, ReturnedItem.disposition)
    items = _within(items, ReturnedItem.received_at, start, end)
    if partner_id is not None:
        from store.tables import Deal

        items = items.join(Deal, Deal.id == ReturnedItem.deal_id).where(Deal.partner_id == partner_id)
    units = kg = 0
    by_disposition = {"refresh": 0, "recycle": 0, "other": 0}
    unknown: dict[str, int] = {}
    for product_id, disposition, count in session.execute(items).all():
        units += count
        kg += Decimal(str(catalog.unit_weight_kg(product_id))) * count
        by_disposition[disposition if disposition in by_disposition else "other"] += count
        if not catalog.is_known(product_id):
            unknown[product_id] = unknown.get(product_id, 0) + count

    def settled(*outcomes: str) -> Decimal:
        """Money by each deal's one settlement, so the report is the sum of what the deals show."""
        query = _within(select(func.coalesce(func.sum(Settlement.amount), 0)).where(Settlement.outcome.in_(outcomes)), Settlement.decided_at, start, end)
        if partner_id is not None:
            query = query.where(Settlement.partner_id == partner_id)
        return Decimal(session.execute(query).scalar_one()).quantize(Decimal("0.01"))

    trees = _within(select(func.count()).select_from(TreePlanted), TreePlanted.planted_at, start, end)
    if partner_id is not None:
        trees = trees.where(TreePlanted.partner_id == partner_id)
    return {
        "partner_id": partner_id,
        "units_returned": units,
        "kg_returned": float(Decimal(kg).quantize(Decimal("0.01"))),
        "refresh_share": _share(by_disposition["refresh"], units),
        "recycle_share": _share(by_disposition["recycle"], units),
        "other_share": _share(by_disposition["other"], units),
        "trees_planted": session.execute(trees).scalar_one(),
        "incentives_released": str(settled("released")),
        "incentives_forfeited": str(settled("forfeited", "clawed_back")),
        "unknown_products": [{"product_id": p, "units": n, "assumed_unit_weight_kg": catalog.default_weight_kg} for p, n in sorted(unknown.items())],
    }


def _within(query, column, start: datetime | None, end: datetime | None):
    if start is not None:
        query = query.where(column >= start)
    if end is not None:
        query = query.where(column < end)
    return query


KG = Decimal("0.001")


def accounting(session: Session, catalog: Catalog, partner_id: str | None = None, *, start: datetime | None = None, end: datetime | None = None) -> dict:
    """Environmental accounting of the units received in [start, end): kg by WEEE category, how each
    counts (reused, recycled, pending its sanitization, other: domain.custody.counted_as), the CO2e
    that avoided (catalog factors), the 99.3% target, and kg by material shipped downstream."""
    latest_disposition = (
        select(CustodyEvent.value).where(CustodyEvent.serial == ReturnedItem.serial, CustodyEvent.kind == CustodyKind.dispositioned.value)
        .order_by(CustodyEvent.id.desc()).limit(1).scalar_subquery()
    )
    latest_sanitization = select(Sanitization.id).where(Sanitization.serial == ReturnedItem.serial).order_by(Sanitization.id.desc()).limit(1).scalar_subquery()
    record = aliased(Sanitization)
    units = (
        select(ReturnedItem.product_id.label("product_id"), func.coalesce(latest_disposition, ReturnedItem.disposition).label("disposition"),
               record.method.label("method"), record.verification.label("verification"))
        .select_from(ReturnedItem).outerjoin(record, record.id == latest_sanitization)
    )
    units = _within(units, ReturnedItem.received_at, start, end)
    if partner_id is not None:
        units = units.join(Deal, Deal.id == ReturnedItem.deal_id).where(Deal.partner_id == partner_id)
    units = units.subquery()
    grouped = select(units.c.product_id, units.c.disposition, units.c.method, units.c.verification, func.count()).group_by(
        units.c.product_id, units.c.disposition, units.c.method, units.c.verification
    )
    by_category: dict[int, dict] = {}
    counts = {"refresh": 0, "recycle": 0, "pending": 0, "other": 0}
    co2e = {"reuse": Decimal(0), "recycling": Decimal(0)}
    total = 0
    for product_id, disposition, method, verification, n in session.execute(grouped).all():
        total += n
        category = by_category.setdefault(catalog.weee_category(product_id), {"units": 0, "kg": Decimal(0)})
        category["units"] += n
        category["kg"] += Decimal(str(catalog.unit_weight_kg(product_id))) * n
        current = CurrentSanitization(method=method, verification=verification) if method is not None else None
        counts_as = counted_as(catalog.is_data_bearing(product_id), disposition, current)
        counts[counts_as] += n
        if counts_as == "refresh":
            co2e["reuse"] += catalog.co2e_avoided_kg(product_id, "reuse") * n
        elif counts_as == "recycle":
            co2e["recycling"] += catalog.co2e_avoided_kg(product_id, "recycle") * n
    share = round((counts["refresh"] + counts["recycle"]) / total, 4) if total else None
    return {
        "kg_by_weee_category": [
            {"category": c, "name": WEEE_CATEGORIES[c], "units": v["units"], "kg": float(v["kg"].quantize(KG))} for c, v in sorted(by_category.items())
        ],
        "units_counted": {"refurbished": counts["refresh"], "recycled": counts["recycle"], "awaiting_sanitization": counts["pending"], "other": counts["other"]},
        "co2e_avoided_kg": {
            "reuse": float(co2e["reuse"].quantize(KG)), "recycling": float(co2e["recycling"].quantize(KG)),
            "total": float((co2e["reuse"] + co2e["recycling"]).quantize(KG)),
        },
        "reuse_or_recycle_target": {
            "target": REUSE_OR_RECYCLE_TARGET, "share": share, "met": None if share is None else share >= REUSE_OR_RECYCLE_TARGET,
        },
        "kg_by_material": kg_by_material(session, catalog, partner_id, start=start, end=end),
    }


def kg_by_material(session: Session, catalog: Catalog, partner_id: str | None = None, *, start: datetime | None = None, end: datetime | None = None) -> dict[str, float]:
    """Kg by material of the downstream shipments of the period (by shipped_at). A partner's share of a
    shipment is the catalog weight of its serials in it over the weight of all its serials; a shipment
    of a lot without serials counts in the programme's total only."""
    shipments = _within(select(DownstreamShipment.id), DownstreamShipment.shipped_at, start, end)
    materials = session.execute(
        select(DownstreamMaterial.shipment_id, DownstreamMaterial.material, DownstreamMaterial.kg).where(DownstreamMaterial.shipment_id.in_(shipments))
    ).all()
    share: dict[str, Decimal] = {}
    if partner_id is not None:
        weights: dict[str, dict[bool, Decimal]] = defaultdict(lambda: {True: Decimal(0), False: Decimal(0)})
        shipped = (
            select(CustodyEvent.value, Deal.partner_id, ReturnedItem.product_id, func.count())
            .join(ReturnedItem, ReturnedItem.serial == CustodyEvent.serial).join(Deal, Deal.id == ReturnedItem.deal_id)
            .where(CustodyEvent.kind.in_([CustodyKind.shipped_downstream.value, CustodyKind.resold.value]), CustodyEvent.value.in_(shipments))
            .group_by(CustodyEvent.value, Deal.partner_id, ReturnedItem.product_id)
        )
        for shipment_id, owner, product_id, n in session.execute(shipped).all():
            weights[shipment_id][owner == partner_id] += Decimal(str(catalog.unit_weight_kg(product_id))) * n
        share = {sid: w[True] / (w[True] + w[False]) for sid, w in weights.items() if w[True] + w[False] > 0}
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for shipment_id, material, kg in materials:
        totals[material] += Decimal(kg) * (share.get(shipment_id, Decimal(0)) if partner_id is not None else 1)
    return {material: float(kg.quantize(KG)) for material, kg in sorted(totals.items()) if partner_id is None or kg > 0}


def reason_counts(session: Session, start: datetime | None = None, end: datetime | None = None) -> dict:
    """Cancellations, extensions and refused receipt lines counted by reason code, in [start, end)."""
    answer: dict[str, dict[str, int]] = {"cancellation": {}, "extension": {}, "receipt_rejection": {}}
    coded = _within(select(ReasonRecord.action, ReasonRecord.code, func.count()), ReasonRecord.recorded_at, start, end).group_by(ReasonRecord.action, ReasonRecord.code)
    for action, code, n in session.execute(coded).all():
        answer["cancellation" if action == "cancel" else "extension"][code] = n
    rejected = _within(
        select(ReceiptRejection.reason_code, ReceiptRejection.reason, func.count()).join(ReceiptBatch, ReceiptBatch.id == ReceiptRejection.batch_id),
        ReceiptBatch.created_at, start, end,
    ).group_by(ReceiptRejection.reason_code, ReceiptRejection.reason)
    for code, reason, n in session.execute(rejected).all():
        key = code or rejection_code(reason).value
        answer["receipt_rejection"][key] = answer["receipt_rejection"].get(key, 0) + n
    return answer
