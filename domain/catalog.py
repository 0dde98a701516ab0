"""The product catalog: unit weight and whether a product carries data (catalog.csv)."""

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CATALOG_CSV = Path(__file__).with_name("catalog.csv")
DEFAULT_UNIT_WEIGHT_KG = 5.0


@dataclass(frozen=True)
class Product:
    product_id: str
    description: str
    unit_weight_kg: float
    data_bearing: bool


class Catalog:
    def __init__(self, products: dict[str, Product], default_weight_kg: float = DEFAULT_UNIT_WEIGHT_KG):
        self.products = products
        self.default_weight_kg = default_weight_kg

    @classmethod
    def from_csv(cls, path: Path) -> "Catalog":
        with path.open(newline="") as handle:
            rows = csv.DictReader(handle)
            products = {
                row["product_id"]: Product(
                    product_id=row["product_id"],
                    description=row["description"],
                    unit_weight_kg=float(row["unit_weight_kg"]),
                    data_bearing=row["data_bearing"].strip().lower() in ("1", "true", "yes"),
                )
                for row in rows
            }
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


@lru_cache
def default_catalog() -> Catalog:
    return Catalog.from_csv(CATALOG_CSV)
