"""The impact report: what came back, where it went, trees planted, money released or forfeited."""

from decimal import Decimal

from sqlalchemy import func, select
from sqlmodel import Session

from domain.catalog import Catalog
from store.specialization import TreePlanted
from store.tables import ReturnedItem, Settlement

def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def impact(session: Session, catalog: Catalog, partner_id: str | None = None) -> dict:
    items = select(ReturnedItem.product_id, ReturnedItem.disposition, func.count()).group_by(ReturnedItem.product_id, ReturnedItem.disposition)
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
        query = select(func.coalesce(func.sum(Settlement.amount), 0)).where(Settlement.outcome.in_(outcomes))
        if partner_id is not None:
            query = query.where(Settlement.partner_id == partner_id)
        return Decimal(session.execute(query).scalar_one()).quantize(Decimal("0.01"))

    trees = select(func.count()).select_from(TreePlanted)
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
