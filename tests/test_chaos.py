"""Nothing lost, nothing paid twice while the worker is SIGKILLed and the server restarted."""

import pytest

from tests import chaos


def assert_clean(result: dict) -> None:
    print(f"chaos: {result}")
    assert result["lost"] == 0, result["lost_detail"]
    assert result["duplicates"] == 0
    assert result["ledger_rows"] == result["deals"]  # exactly one money movement per deal


async def test_chaos_fast_form():
    result = await chaos.run(deals_count=20, kill_every=3, max_kills=3, concurrency=4, window="40s", seed=1)
    assert result["kills"] == 3 and result["server_restarts"] == 1
    assert_clean(result)


@pytest.mark.slow
async def test_chaos_full_form():
    result = await chaos.run(deals_count=200, kill_every=4, max_kills=12, concurrency=8, window="120s", seed=7)
    assert result["kills"] == 12 and result["server_restarts"] == 1
    assert_clean(result)
