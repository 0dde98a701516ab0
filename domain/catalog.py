"""The product catalog (catalog.csv): unit weight, whether a product carries data, its WEEE
category and the CO2e its reuse or recycling avoids (the file's notes cite the factors)."""

import csv
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

CATALOG_CSV = Path(__file__).with_name("catalog.csv")
DEFAULT_UNIT_WEIGHT_KG = 5.0
# A product the catalog does not know: reported apart (impact report's unknown_products), in the WEEE
# category of most of the catalog (small IT and telecommunication equipment), avoiding no CO2e we could vouch for.
DEFAULT_WEEE_CATEGORY = 6
WEEE_CATEGORIES = {
    1: "temperature exchange equipment",
    2: "screens and monitors",
    3: "lamps",
    4: "large equipment",
    5: "small equipment",
    6: "small IT and telecommunication equipment",
}


@dataclass(frozen=True)
class Product:
    product_id: str
    description: str
    unit_weight_kg: float
    data_bearing: bool
    weee_category: int = DEFAULT_WEEE_CATEGORY
    co2e_reuse_kg: Decimal = Decimal(0)  # avoided when the unit is reused (Refresh)
    co2e_recycle_kg: Decimal = Decimal(0)  # avoided when the unit is recycled


class Catalog:
    def __init__(self, products: dict[str, Product], default_weight_kg: float = DEFAULT_UNIT_WEIGHT_KG):
        self.products = products
        self.default_weight_kg = default_weight_kg

    @classmethod
    def from_csv(cls, path: Path) -> "Catalog":
        with path.open(newline="") as handle:
            rows = csv.DictReader(line for line in handle if not line.startswith("#"))  # notes: the factors' sources
            products = {
                row["product_id"]: Product(
                    product_id=row["product_id"],
                    description=row["description"],
                    unit_weight_kg=float(row["unit_weight_kg"]),
                    data_bearing=row["data_bearing"].strip().lower() in ("1", "true", "yes"),
                    weee_category=int(row.get("weee_category") or DEFAULT_WEEE_CATEGORY),
                    co2e_reuse_kg=Decimal(row.get("co2e_reuse_kg") or 0),
                    co2e_recycle_kg=Decimal(row.get("co2e_recycle_kg") or 0),
                )
                for row in rows
            }
        for product in products.values():
            if product.weee_category not in WEEE_CATEGORIES:
                raise ValueError(f"{path}: {product.product_id} has WEEE category {product.weee_category}, not one of 1-6")
        return cls(products)

    def is_known(self, product_id: str) -> bool:
        return product_id in self.products

    def is_data_bearing(self, product_id: str) -> bool:
        # Unknown products are treated as data-bearing: sanitizing needlessly costs little,
        # not sanitizing a disk costs a data leak.
        product = self.products.get(product_id)
        return True if product is None else product.data_bearing

    def unit_weight_kg(self, product_id: str) -> float:
        product = self.products.get(product_id)
        return self.default_weight_kg if product is None else product.unit_weight_kg

    def weee_category(self, product_id: str) -> int:
        product = self.products.get(product_id)
        return DEFAULT_WEEE_CATEGORY if product is None else product.weee_category

    def co2e_avoided_kg(self, product_id: str, route: str) -> Decimal:
        """CO2e one unit avoids by `route` ("reuse" or "recycle"); 0 for a product the catalog does not know."""
        product = self.products.get(product_id)
        if product is None:
            return Decimal(0)
        return product.co2e_reuse_kg if route == "reuse" else product.co2e_recycle_kg


@lru_cache
def default_catalog() -> Catalog:
    return Catalog.from_csv(CATALOG_CSV)
