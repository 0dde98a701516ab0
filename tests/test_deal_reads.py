"""Reads fail loudly: an open deal is read from its workflow, never from a stale store copy."""

import pytest

from api.deps import temporal
from api.problems import Problem
from service import deals
from tests.conftest import add_partner, booking, make_settings
from tests.deal_helpers import items
from tests.test_deal_races import uncached_worker


async def test_an_open_deal_whose_workflow_cannot_answer_is_a_503_not_a_stale_copy(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.record_receipt(env.client, settings, view.id, items("L", 3))
        live = await deals.get_deal(env.client, settings, view.id)
    assert live.received_units == 3  # from the workflow
    # No worker answers the query now. The store holds the deal's last projection, but an open
    # deal may have moved since: the caller is told to come back, not shown that copy.
    with pytest.raises(Problem) as failure:
        await temporal(deals.get_deal_json(env.client, settings, view.id), timeout=10)
    assert failure.value.status == 503


async def test_a_closed_deal_is_read_from_the_store_without_a_worker(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(4))
        await deals.record_receipt(env.client, settings, view.id, items("C", 4))
        final = await deals.deal_handle(env.client, view.id).result()
    assert await deals.get_deal(env.client, settings, view.id) == final
