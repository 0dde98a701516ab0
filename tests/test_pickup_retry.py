"""A retried pickup request whose deal answers slowly: the API says 503 with Retry-After (a query past
its deadline, api/deps.py `temporal()`), a client retries as told, and the pickup is booked once."""

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api import deps
from service import deals
from store.tables import Pickup
from tests.api_helpers import PICKUP, api_client, key
from tests.conftest import booking, make_settings, running_worker
from tests.deal_helpers import count


def queries_past_their_deadline(monkeypatch, name: str, times: int) -> list[str]:
    """The next `times` queries `name` of any deal run past their deadline, as under a loaded machine."""
    query, late = WorkflowHandle.query, []

    async def slow(self, what, *args, **kwargs):
        if getattr(what, "__name__", what) == name and len(late) < times:
            late.append(self.id)
            raise RPCError("query deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")
        return await query(self, what, *args, **kwargs)

    monkeypatch.setattr(WorkflowHandle, "query", slow)
    return late


async def test_a_pickup_whose_query_runs_past_its_deadline_is_a_503_and_its_retry_books_it_once(time_skipping_env, tmp_path, monkeypatch):
    env = time_skipping_env
    monkeypatch.setitem(deps.RETRY_AFTER, "Retry-After", "1")  # the client waits what the API says: 1 s here
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        ops = {**key(settings), "Idempotency-Key": "order-7-pickup"}
        async with api_client(settings) as plain:  # what the API answers, unretried
            late = queries_past_their_deadline(monkeypatch, "pickup_for_request", 2)  # the service asks twice
            refused = await plain.post(f"/v1/deals/{deal.id}/pickups", json=PICKUP, headers=ops)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert refused.json()["type"].endswith("/workflow-busy") and len(late) == 2
        async with api_client(settings, retry_503=True) as http:  # a client that does what the 503 says
            queries_past_their_deadline(monkeypatch, "pickup_for_request", 2)
            first = await http.post(f"/v1/deals/{deal.id}/pickups", json=PICKUP, headers=ops)
            assert first.status_code == 201, first.text
            assert http._transport.retried == ["workflow-busy"]  # noqa: SLF001: it was told to retry once, and did
            again = await http.post(f"/v1/deals/{deal.id}/pickups", json=PICKUP, headers=ops)
        assert again.status_code == 201 and again.json() == first.json()
    assert count(settings, Pickup, deal_id=deal.id) == 1


async def test_a_service_test_asking_as_the_api_does_rides_out_a_query_past_its_deadline(time_skipping_env, tmp_path, monkeypatch):
    """tests/api_helpers.as_the_api_calls, which the retried-pickup tests of the service use: the late query
    is the API's 503 with Retry-After, waited out, and the retry books the same pickup."""
    from tests.api_helpers import as_the_api_calls
    from tests.deal_helpers import PICKUP as PICKUP_REQUEST

    env = time_skipping_env
    monkeypatch.setitem(deps.RETRY_AFTER, "Retry-After", "1")
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        deal = await deals.book_deal(env.client, settings, booking(10))
        late = queries_past_their_deadline(monkeypatch, "pickup_for_request", 2)
        booked = await as_the_api_calls(lambda: deals.request_pickup(env.client, deal.id, PICKUP_REQUEST, request_id="req-late"), env.client)
        again = await as_the_api_calls(lambda: deals.request_pickup(env.client, deal.id, PICKUP_REQUEST, request_id="req-late"), env.client)
    assert len(late) == 2 and again == booked and count(settings, Pickup, deal_id=deal.id) == 1
