"""The API's 503s say what happened: an unreachable engine (`temporal-unavailable`), a reachable
engine whose workflow did not answer in time (`workflow-busy`), and an update whose call ended
before the workflow answered (`update-not-accepted`, `"applied": "unknown"`: a retry with the same
Idempotency-Key is the same update). Partner writes take an Idempotency-Key; a refused reinstate is
a 409."""

import asyncio
import time
import uuid

import pytest
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from api import deps
from api.problems import Problem
from store.db import session_scope
from store.specialization import SpecializationEvent
from tests.api_helpers import api_client, certified_partner, key
from tests.conftest import make_settings, running_worker
from tests.postgres import _free_port

PROBLEM_BASE = "https://takeback.example/problems/"


async def unreachable_client() -> Client:
    """A lazy client, as the API's, of an address where no engine listens."""
    return await Client.connect(f"127.0.0.1:{_free_port()}", lazy=True)


async def raises(error: BaseException):
    raise error


async def hangs():
    await asyncio.sleep(3600)


async def update_that_hangs():
    """What the SDK's update call does when wait_for cancels it: CancelledError becomes this error."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError as cancelled:
        raise WorkflowUpdateRPCTimeoutOrCancelledError() from cancelled


async def problem_of(call, **options) -> Problem:
    started = time.monotonic()
    with pytest.raises(Problem) as raised:
        await deps.temporal(call, **options)
    assert time.monotonic() - started < options.get("timeout", deps.TEMPORAL_TIMEOUT) + 0.5
    return raised.value


def assert_unavailable(problem: Problem) -> None:
    assert (problem.status, problem.kind) == (503, "temporal-unavailable")
    assert problem.headers == {"Retry-After": "5"} and "applied" not in problem.extra


def assert_update_not_accepted(problem: Problem) -> None:
    assert (problem.status, problem.kind) == (503, "update-not-accepted")
    assert problem.headers == {"Retry-After": "5"}
    assert problem.extra == {"applied": "unknown"}
    assert "may still be applied" in problem.detail and "same Idempotency-Key" in problem.detail


# --- temporal() on its own ------------------------------------------------------------------


async def test_an_update_rpc_timeout_is_update_not_accepted_not_a_500():
    assert_update_not_accepted(await problem_of(raises(WorkflowUpdateRPCTimeoutOrCancelledError())))


async def test_an_update_cut_off_by_the_deadline_is_update_not_accepted():
    problem = await problem_of(update_that_hangs(), timeout=0.5)
    assert_update_not_accepted(problem)
    assert "0.5 s" in problem.detail


async def test_a_hung_call_on_a_reachable_engine_is_workflow_busy(time_skipping_env):
    problem = await problem_of(hangs(), timeout=1, client=time_skipping_env.client)
    assert (problem.status, problem.kind) == (503, "workflow-busy")
    assert problem.headers == {"Retry-After": "5"}
    assert "reachable" in problem.detail


async def test_a_deadline_exceeded_from_a_reachable_engine_is_workflow_busy(time_skipping_env):
    problem = await problem_of(raises(RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b"")), client=time_skipping_env.client)
    assert problem.kind == "workflow-busy"


async def test_a_hung_call_on_an_unreachable_engine_is_temporal_unavailable():
    assert_unavailable(await problem_of(hangs(), timeout=1, client=await unreachable_client()))
    assert_unavailable(await problem_of(hangs(), timeout=1))  # no client to ask: as before, unavailable
    assert_unavailable(await problem_of(raises(RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b"")), client=await unreachable_client()))


async def test_an_unreachable_engine_is_temporal_unavailable_at_once():
    assert_unavailable(await problem_of(raises(RPCError("down", RPCStatusCode.UNAVAILABLE, b""))))
    assert_unavailable(await problem_of(raises(ConnectionRefusedError())))
    client = await unreachable_client()
    started = time.monotonic()
    assert_unavailable(await problem_of(client.get_workflow_handle("nobody").describe(), client=client))
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "error",
    [
        RPCError("transport error", RPCStatusCode.UNKNOWN, b""),  # the server died mid-call
        RPCError("h2 protocol error: http2 error", RPCStatusCode.CANCELLED, b""),  # a connection dropped under a restart
        RPCError("context canceled", RPCStatusCode.CANCELLED, b""),
        RPCError("consistent query buffer is full, cannot accept new consistent queries", RPCStatusCode.RESOURCE_EXHAUSTED, b""),
    ],
    ids=["transport", "h2", "context-canceled", "query-buffer-full"],
)
async def test_a_call_cut_off_by_a_restart_or_back_pressure_is_a_503_not_a_500(error):
    """Seen by the chaos run while the server or a worker restarted: each was a 500."""
    problem = await problem_of(raises(error))
    assert problem.status == 503 and problem.kind == "workflow-busy" and problem.headers["Retry-After"]
    assert problem.extra["applied"] == "unknown"  # a write may still land: retry with the same key


async def test_a_read_while_no_worker_polls_is_a_503_not_a_500():
    """Seen by the chaos run while its only worker was SIGKILLed: a deal's query answered 500."""
    problem = await problem_of(raises(RPCError("no poller seen for task queue recently, worker may be down", RPCStatusCode.FAILED_PRECONDITION, b"")))
    assert problem.status == 503 and problem.kind == "worker-unavailable" and problem.headers["Retry-After"]


async def test_an_update_the_engine_rejected_as_unprocessed_is_a_503_that_says_nothing_was_applied():
    """Seen by the chaos run while workers restarted: the engine rejects an update whose workflow task
    completed without it (UnprocessedUpdate); a receipt answered 500 (and a partner's update would be a 409)."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError

    unprocessed = ApplicationError("Workflow Update is rejected because it wasn't processed by worker.", type="UnprocessedUpdate")
    problem = await problem_of(raises(WorkflowUpdateFailedError(unprocessed)))
    assert problem.status == 503 and problem.kind == "workflow-busy" and problem.headers["Retry-After"]
    assert problem.extra == {"applied": "no"}
    with pytest.raises(WorkflowUpdateFailedError):  # a workflow's own refusal is its route's to answer
        await deps.temporal(raises(WorkflowUpdateFailedError(ApplicationError("deal D1 is closing", type="DealNotOpen"))))


async def test_other_errors_and_answers_pass_through(time_skipping_env):
    async def answer():
        return 42

    assert await deps.temporal(answer(), client=time_skipping_env.client) == 42
    with pytest.raises(RPCError):
        await deps.temporal(raises(RPCError("no such workflow", RPCStatusCode.NOT_FOUND, b"")))
    with pytest.raises(ValueError):
        await deps.temporal(raises(ValueError("a bug")))


# --- through the app ------------------------------------------------------------------------


def assert_problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    assert body["type"] == PROBLEM_BASE + kind, body
    return body


def exam_events(settings, partner_id: str) -> int:
    with session_scope(settings.effective_database_url) as session:
        return session.execute(select(func.count()).select_from(SpecializationEvent).where(SpecializationEvent.partner_id == partner_id, SpecializationEvent.kind == "exam")).scalar_one()


async def test_an_update_no_worker_takes_is_a_503_and_its_retry_with_the_key_applies_it_once(time_skipping_env, tmp_path, monkeypatch):
    from api.routes import partners as partner_routes

    env = time_skipping_env
    monkeypatch.setattr(partner_routes, "UPDATE_TIMEOUT", 2.0)
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    partner = f"NW-{uuid.uuid4().hex[:6]}"
    async with api_client(settings) as http:
        ops = key(settings)
        r = await http.post("/v1/partners", json={"id": partner, "name": "No worker", "contact_email": "nw@p.example", "country": "CA"}, headers=ops)
        assert r.status_code == 201, r.text  # the workflow is started; no worker polls its queue
        headers = {**ops, "Idempotency-Key": "exam-1-try"}
        started = time.monotonic()
        response = await http.post(f"/v1/partners/{partner}/exams", json={"exam": 1, "passed": True}, headers=headers)
        assert time.monotonic() - started < partner_routes.UPDATE_TIMEOUT + 1
        body = assert_problem(response, 503, "update-not-accepted")
        assert response.headers["retry-after"] == "5"
        assert body["applied"] == "unknown" and "same Idempotency-Key" in body["detail"]

        async with running_worker(env.client, settings):  # the worker is back: retry, as the 503 said
            retry = await http.post(f"/v1/partners/{partner}/exams", json={"exam": 1, "passed": True}, headers=headers)
            assert retry.status_code == 201, retry.text
            assert retry.json()["exams_passed"] == [1]
            again = await http.post(f"/v1/partners/{partner}/exams", json={"exam": 1, "passed": True}, headers=headers)
            assert again.status_code == 201, again.text
            assert exam_events(settings, partner) == 1  # one exam recorded for three calls with one key
            other = await http.post(f"/v1/partners/{partner}/exams", json={"exam": 1, "passed": True}, headers={**ops, "Idempotency-Key": "exam-1-again"})
            assert other.status_code == 201, other.text
            assert exam_events(settings, partner) == 2  # another key is another action


async def test_a_query_no_worker_answers_is_workflow_busy_not_temporal_unavailable(time_skipping_env, tmp_path, monkeypatch):
    env = time_skipping_env
    monkeypatch.setattr(deps, "TEMPORAL_TIMEOUT", 1.5)
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    partner = f"NQ-{uuid.uuid4().hex[:6]}"
    async with api_client(settings) as http:
        ops = key(settings)
        r = await http.post("/v1/partners", json={"id": partner, "name": "No worker", "contact_email": "nq@p.example", "country": "CA"}, headers=ops)
        assert r.status_code == 201, r.text
        started = time.monotonic()
        response = await http.get(f"/v1/partners/{partner}", headers=ops)
        assert time.monotonic() - started < 1.5 + 1
        assert_problem(response, 503, "workflow-busy")
        assert response.headers["retry-after"] == "5"


async def test_an_unreachable_engine_stays_temporal_unavailable_through_the_app(tmp_path):
    settings = make_settings(tmp_path, temporal_address=f"127.0.0.1:{_free_port()}")
    async with api_client(settings) as http:
        ops = key(settings)
        started = time.monotonic()
        response = await http.post("/v1/partners", json={"id": "DOWN", "name": "Down", "contact_email": "d@p.example", "country": "CA"}, headers=ops)
        assert time.monotonic() - started < 5
        assert_problem(response, 503, "temporal-unavailable")
        assert response.headers["retry-after"] == "5"
        assert "applied" not in response.json()


async def test_training_retries_with_one_idempotency_key_count_once(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops, other_ops = key(settings), key(settings)
        r = await http.post("/v1/partners", json={"id": "TR", "name": "Trainings", "contact_email": "tr@p.example", "country": "CA"}, headers=ops)
        assert r.status_code == 201, r.text
        body = {"person_email": "ana@p.example", "person_name": "Ana", "hours": 6}
        answers = await asyncio.gather(*(http.post("/v1/partners/TR/trainings", json=body, headers={**ops, "Idempotency-Key": "course-1"}) for _ in range(3)))
        assert [a.status_code for a in answers] == [201] * 3, [a.text for a in answers]
        assert {a.json()["training_hours"] for a in answers} == {6}
        # keys are scoped per API key: the same header from another key is another training
        r = await http.post("/v1/partners/TR/trainings", json=body, headers={**other_ops, "Idempotency-Key": "course-1"})
        assert r.status_code == 201 and r.json()["training_hours"] == 12, r.text
        r = await http.post("/v1/partners/TR/trainings", json=body, headers=ops)  # no key: every call counts
        assert r.status_code == 201 and r.json()["training_hours"] == 18, r.text
        too_long = await http.post("/v1/partners/TR/trainings", json=body, headers={**ops, "Idempotency-Key": "k" * 201})
        assert too_long.status_code == 422


async def test_reinstating_a_partner_that_has_not_lapsed_is_a_409(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        await certified_partner(http, ops, "RE")
        answers = await asyncio.gather(*(http.post("/v1/partners/RE/reinstate", json={"reason": "twice"}, headers=ops) for _ in range(2)))
        for response in answers:
            body = assert_problem(response, 409, "not-lapsed")
            assert "certified, not lapsed" in body["detail"]


async def test_two_reinstates_at_once_restore_a_lapsed_partner_once_and_the_other_is_a_409(time_skipping_env, tmp_path):
    from datetime import timedelta

    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        await certified_partner(http, ops, "TWICE")
        await env.sleep(timedelta(days=366))  # a specialization year without a deal
        for _ in range(100):
            if (await http.get("/v1/partners/TWICE", headers=ops)).json()["specialization"]["status"] == "lapsed":
                break
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(http.post("/v1/partners/TWICE/reinstate", json={"reason": f"approved by {who}"}, headers=ops) for who in ("ana", "bob")))
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 409)
        assert_problem(refused, 409, "not-lapsed")
        restored = next(a for a in answers if a.status_code == 200).json()
        assert restored["status"] == "certified" and restored["year_number"] == 2
