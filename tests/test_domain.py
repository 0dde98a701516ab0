"""Pure business rules: money, required units, rate bounds, durations, disposition, catalog."""

from datetime import timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from domain import rules
from domain.catalog import default_catalog
from domain.durations import format_duration, parse_duration, parse_duration_list
from domain.models import Condition, Disposition, SanitizationMethod
from tests.conftest import booking, make_settings

# --- incentive ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rate", "expected"),
    [
        ("100000.00", "0.05", "5000.00"),
        ("100000.00", "0.07", "7000.00"),
        ("12345.67", "0.07", "864.20"),  # 864.1969 -> cents
        ("1.50", "0.07", "0.11"),  # 0.105: half-up, not banker's rounding (0.10)
        ("0.10", "0.0001", "0.00"),
        ("999999999999.99", "0.07", "70000000000.00"),  # no float drift on big values
    ],
)
def test_incentive_is_decimal_rounded_half_up_to_cents(value, rate, expected):
    amount = rules.incentive_amount(Decimal(value), Decimal(rate))
    assert isinstance(amount, Decimal)
    assert amount == Decimal(expected)
    assert amount.as_tuple().exponent == -2  # always two decimals, as the ledger stores it


@pytest.mark.parametrize("rate", ["0", "-0.01", "0.0701", "0.08", "1"])
def test_rates_outside_0_to_7_percent_are_refused(rate):
    with pytest.raises(rules.RuleViolation):
        rules.validate_incentive_rate(Decimal(rate))
    with pytest.raises(rules.RuleViolation):
        rules.incentive_amount(Decimal("1000"), Decimal(rate))


@pytest.mark.parametrize("rate", ["0.0001", "0.05", "0.07", "0.0700"])
def test_rates_up_to_and_including_7_percent_are_accepted(rate):
    assert rules.validate_incentive_rate(Decimal(rate)) == Decimal(rate)


def test_a_negative_products_value_is_refused():
    with pytest.raises(rules.RuleViolation):
        rules.incentive_amount(Decimal("-1"), Decimal("0.05"))


# --- required units -----------------------------------------------------------------------


@pytest.mark.parametrize(("committed", "required"), [(1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (9, 8), (10, 8), (11, 9), (15, 12), (100, 80), (101, 81), (50_000, 40_000)])
def test_required_units_is_ceil_of_80_percent(committed, required):
    assert rules.required_units(committed, 0.8) == required


def test_required_units_never_suffers_float_error():
    # The float product 0.8 x n can land just above an integer; the rule must not round it up.
    for committed in range(1, 5_001):
        required = rules.required_units(committed, 0.8)
        # the smallest k with k >= 0.8 n, in exact integers: 5k >= 4n
        assert 5 * required >= 4 * committed and 5 * (required - 1) < 4 * committed, committed


@pytest.mark.parametrize(("committed", "threshold", "required"), [(10, 1.0, 10), (10, 0.5, 5), (7, 0.7, 5), (3, 0.1, 1)])
def test_required_units_follows_the_configured_threshold(committed, threshold, required):
    assert rules.required_units(committed, threshold) == required


@pytest.mark.parametrize(("committed", "threshold"), [(0, 0.8), (-1, 0.8), (10, 0), (10, 1.01)])
def test_required_units_refuses_empty_deals_and_bad_thresholds(committed, threshold):
    with pytest.raises(rules.RuleViolation):
        rules.required_units(committed, threshold)


def test_committed_units_sum_the_booking_lines():
    request = booking(3)
    request.equipment.append(request.equipment[0].model_copy(update={"product_id": "ASA5516-X", "quantity": 4}))
    assert request.committed_units == 7


def test_a_booking_needs_equipment_and_at_most_four_decimals_of_rate():
    payload = booking(1).model_dump()
    with pytest.raises(ValidationError):
        type(booking(1)).model_validate({**payload, "equipment": []})
    with pytest.raises(ValidationError):
        type(booking(1)).model_validate({**payload, "incentive_rate": Decimal("0.05001")})


# --- disposition and sanitization ---------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "age", "expected"),
    [
        (Condition.working, 0, Disposition.refresh),
        (Condition.working, 5, Disposition.refresh),  # the limit itself is still young enough
        (Condition.working, 5.01, Disposition.recycle),
        (Condition.damaged, 1, Disposition.recycle),
        (Condition.dead, 0, Disposition.recycle),
    ],
)
def test_disposition_by_age_and_condition(condition, age, expected):
    assert rules.disposition_for(condition, age, refresh_max_age_years=5) == expected


def test_resold_media_are_purged_and_recycled_media_destroyed():
    assert rules.sanitization_for(Disposition.refresh) == SanitizationMethod.purge
    assert rules.sanitization_for(Disposition.recycle) == SanitizationMethod.destroy


def test_catalog_knows_which_products_carry_data():
    catalog = default_catalog()
    assert catalog.is_data_bearing("ISR4331/K9") and catalog.is_data_bearing("UCSC-C220-M5SX")
    # network gear keeps configurations, credentials and keys in NVRAM and flash: data-bearing (issue 14)
    assert catalog.is_data_bearing("C9300-48P") and catalog.is_data_bearing("AIR-AP2802I-E-K9")
    assert not catalog.is_data_bearing("SFP-10G-SR") and not catalog.is_data_bearing("PWR-C1-715WAC")
    assert catalog.is_data_bearing("NEVER-HEARD-OF-IT")  # unknown: sanitize to be safe
    assert catalog.unit_weight_kg("C9300-48P") == 7.9


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("365d", timedelta(days=365)), ("90s", timedelta(seconds=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)), (" 7d ", timedelta(days=7)), ("1.5h", timedelta(minutes=90))],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7w", "-1d", "0s", "0d", "1 year", "7d,30d"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_list_is_longest_first_and_may_be_empty():
    assert parse_duration_list("7d,90d,30d") == [timedelta(days=90), timedelta(days=30), timedelta(days=7)]
    assert parse_duration_list("") == []
    with pytest.raises(ValueError):
        parse_duration_list("90d,soon")


@pytest.mark.parametrize("text", ["365d", "90d", "7d", "12h", "30m", "90s", "1s", "25h"])
def test_format_duration_round_trips(text):
    assert format_duration(parse_duration(text)) == text


def test_settings_parse_their_durations(tmp_path):
    settings = make_settings(tmp_path, return_window="15s", reminder_offsets="2s,5s", sim_carrier_step="0.3s")
    assert settings.return_window_seconds == 15
    assert settings.reminder_offsets_seconds == [5, 2]
    assert settings.sim_carrier_step_seconds == pytest.approx(0.3)
    assert make_settings(tmp_path).sim_carrier_step_seconds == 0
    with pytest.raises(ValidationError):
        make_settings(tmp_path, return_window="a year")
