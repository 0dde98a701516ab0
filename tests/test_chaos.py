"""The chaos run (tests/chaos.py): deals driven over HTTP against a separate API, worker and Temporal
server while the worker is SIGKILLed and the server restarted; money and mail checked as the
partners, ops and the mail provider see them. The fast form runs on SQLite and on PostgreSQL in
`make test` (about a minute each); the full form (200 deals, 120 s window) in `make test-slow`."""

import asyncio

import pytest

from tests import chaos


def assert_clean(result: dict, form: chaos.Form) -> None:
    print(chaos.report(result))
    counts = result["counts"]
    # The chaos happened and every deal was booked ...
    assert counts["kills"] == form.kills and counts["server restarts"] == 1
    assert counts["deals booked"] == form.deals
    # ... and the run went through what it checks: each outcome, refused receipts, extensions,
    # escalations, a refused address and a provider outage.
    for outcome in ("closed/released", "expired/forfeited", "cancelled/cancelled"):
        assert counts.get(f"outcome {outcome}", 0) > 0, f"no deal ended {outcome}"
    assert counts.get("receipts 409", 0) > 0 and counts.get("extends 200", 0) > 0
    assert counts.get("mail CHAOS-GOOD escalation sent", 0) + counts.get("mail CHAOS-GOOD escalation sending", 0) > 0
    assert counts["mail refused 400"] > 0 and counts["mail refused 503"] > 0
    # Then every check of chaos.verify held: no 5xx but 503, receipts answered 200 counted and 409
    # burnt nothing, money decided by the rule and summed by the report, extensions, pickups, no
    # failed workflow, no message delivered twice, settlement notices delivered once.
    assert not result["violations"], "\n".join(result["violations"]) + f"\nlogs: {result.get('logs')}"


# A stack that cannot make progress (a process that never came up) fails the run, never hangs it.
FAST_LIMIT, FULL_LIMIT = 300, 1200


async def test_chaos_fast_form_sqlite():
    result = await asyncio.wait_for(chaos.run(chaos.FAST), FAST_LIMIT)
    assert_clean(result, chaos.FAST)


# make test keeps the fast form on SQLite, and the money's crash points on PostgreSQL (test_money_arbiter.py):
# the fast form on PostgreSQL (~70 s) runs with the full forms in make test-slow, so make test stays under 12 minutes.
@pytest.mark.slow
async def test_chaos_fast_form_postgresql(postgres_url):
    result = await asyncio.wait_for(chaos.run(chaos.FAST, chaos.new_postgres_database(postgres_url)), FAST_LIMIT)
    assert_clean(result, chaos.FAST)


@pytest.mark.slow
async def test_chaos_full_form_sqlite():
    result = await asyncio.wait_for(chaos.run(chaos.FULL), FULL_LIMIT)
    assert_clean(result, chaos.FULL)


@pytest.mark.slow
async def test_chaos_full_form_postgresql(postgres_url):
    result = await asyncio.wait_for(chaos.run(chaos.FULL, chaos.new_postgres_database(postgres_url)), FULL_LIMIT)
    assert_clean(result, chaos.FULL)
