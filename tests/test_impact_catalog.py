"""The catalog's environmental columns (issue 14): every product's CO2e figures follow the factors its
notes cite, its WEEE category is one of the directive's six, and network gear is data-bearing."""

from decimal import ROUND_HALF_UP, Decimal

from domain.catalog import CATALOG_CSV, WEEE_CATEGORIES, default_catalog

REUSE_PER_KG, RECYCLE_PER_KG = Decimal("25"), Decimal("0.87")  # as the notes at the top of catalog.csv cite them


def test_every_product_has_its_weee_category_and_co2e_by_the_cited_factors():
    catalog = default_catalog()
    notes = CATALOG_CSV.read_text()
    assert "WARM" in notes and "0.79" in notes and "2012/19/EU" in notes  # the sources are cited in the file itself
    assert len(catalog.products) == 20
    for product in catalog.products.values():
        weight = Decimal(str(product.unit_weight_kg))
        assert product.weee_category in WEEE_CATEGORIES, product
        assert product.co2e_reuse_kg == (weight * REUSE_PER_KG).quantize(Decimal("0.001"), ROUND_HALF_UP), product
        assert product.co2e_recycle_kg == (weight * RECYCLE_PER_KG).quantize(Decimal("0.001"), ROUND_HALF_UP), product
        assert product.co2e_reuse_kg > product.co2e_recycle_kg  # reuse avoids making a new unit; recycling recovers its materials
    assert catalog.weee_category("UCSC-C240-M5SX") == 4 and catalog.weee_category("C9300-48P") == 6
    assert catalog.co2e_avoided_kg("C9300-48P", "reuse") == Decimal("197.5") and catalog.co2e_avoided_kg("C9300-48P", "recycle") == Decimal("6.873")
    assert catalog.co2e_avoided_kg("NEVER-HEARD-OF-IT", "reuse") == 0  # nothing claimed for what the catalog does not know


def test_switches_routers_firewalls_controllers_and_servers_are_data_bearing():
    catalog = default_catalog()
    bearing = {p.product_id for p in catalog.products.values() if p.data_bearing}
    assert {"WS-C3850-48P", "C9300-48P", "N9K-C93180YC-FX", "ISR4331/K9", "ASA5516-X", "AIR-CT5520-K9", "UCSC-C220-M5SX"} <= bearing
    assert set(catalog.products) - bearing == {"SFP-10G-SR", "PWR-C1-715WAC"}
