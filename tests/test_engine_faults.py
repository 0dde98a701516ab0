"""Every transient refusal of the engine is a 503 with Retry-After, never a 500 (issue 23, part 7).

The errors are built as the SDK builds them: an RPCError of the status the server answered, with
the gRPC status (and its details) as raw bytes, as `ServiceClient._rpc_call` raises it. The last
test lets a real dev server refuse a query to a workflow whose task fails, through the API."""

import uuid

import pytest
from google.protobuf.any_pb2 import Any as AnyDetail
from temporalio import workflow
from temporalio.api.common.v1 import GrpcStatus
from temporalio.api.errordetails.v1 import WorkflowNotReadyFailure
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from api import deps
from api.problems import Problem
from tests.api_helpers import api_client, key
from tests.conftest import make_settings


def rpc_error(status: RPCStatusCode, message: str, *details) -> RPCError:
    """What the SDK raises for a refused call: the server's status, message and packed details."""
    grpc = GrpcStatus(code=int(status), message=message)
    for detail in details:
        packed = AnyDetail()
        packed.Pack(detail)
        grpc.details.append(packed)
    return RPCError(message, status, grpc.SerializeToString())


async def raises(error: BaseException):
    raise error


async def problem_of(error: BaseException, client=None) -> Problem:
    with pytest.raises(Problem) as raised:
        await deps.temporal(raises(error), timeout=2, client=client)
    problem = raised.value
    assert problem.status == 503 and problem.headers == {"Retry-After": "5"}, (problem.status, problem.headers)
    return problem


WORKFLOW_TASK_FAILED = "Workflow Task in failed state."


async def test_a_workflow_task_in_failed_state_is_a_503():
    """As the server answers a query to a workflow whose task is failing: FAILED_PRECONDITION with a
    WorkflowNotReadyFailure detail. It was a 500."""
    problem = await problem_of(rpc_error(RPCStatusCode.FAILED_PRECONDITION, WORKFLOW_TASK_FAILED, WorkflowNotReadyFailure()))
    assert problem.kind == "workflow-busy" and "keeps failing" in problem.detail


async def test_the_detail_alone_or_the_message_alone_is_enough():
    by_detail = await problem_of(rpc_error(RPCStatusCode.FAILED_PRECONDITION, "workflow not ready", WorkflowNotReadyFailure()))
    by_message = RPCError(WORKFLOW_TASK_FAILED, RPCStatusCode.FAILED_PRECONDITION, b"")  # no details (a proxy stripped them)
    assert by_detail.kind == (await problem_of(by_message)).kind == "workflow-busy"


async def test_a_garbled_status_is_no_reason_for_a_500_and_no_reason_for_a_503():
    """Details that do not parse: not a failing workflow task; the refusal stands as it is."""
    with pytest.raises(RPCError):
        await deps.temporal(raises(RPCError("some precondition", RPCStatusCode.FAILED_PRECONDITION, b"\xff\x00garbage")), timeout=2)


@pytest.mark.parametrize(
    "error, kind",
    [
        (rpc_error(RPCStatusCode.RESOURCE_EXHAUSTED, "namespace rate limit exceeded"), "workflow-busy"),
        (rpc_error(RPCStatusCode.RESOURCE_EXHAUSTED, "consistent query buffer is full, cannot accept new consistent queries"), "workflow-busy"),
        (rpc_error(RPCStatusCode.ABORTED, "shard ownership lost"), "workflow-busy"),
        (rpc_error(RPCStatusCode.UNAVAILABLE, "service unavailable"), "temporal-unavailable"),
        (rpc_error(RPCStatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"), "temporal-unavailable"),  # no client to ask
        (rpc_error(RPCStatusCode.UNKNOWN, "query failed: context deadline exceeded"), "temporal-unavailable"),
        (rpc_error(RPCStatusCode.FAILED_PRECONDITION, "no poller seen for task queue recently, worker may be down"), "worker-unavailable"),
    ],
    ids=["rate-limited", "query-buffer-full", "aborted", "unavailable", "deadline-exceeded", "deadline-under-unknown", "no-poller"],
)
async def test_each_transient_refusal_is_a_503_with_retry_after(error, kind):
    assert (await problem_of(error)).kind == kind


async def test_a_query_deadline_exceeded_on_a_reachable_engine_is_workflow_busy(time_skipping_env):
    """The engine answers: the workflow, not the engine, ran out of time (under UNKNOWN as under DEADLINE_EXCEEDED)."""
    for error in (rpc_error(RPCStatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"), rpc_error(RPCStatusCode.UNKNOWN, "query failed: context deadline exceeded")):
        assert (await problem_of(error, client=time_skipping_env.client)).kind == "workflow-busy"


async def test_refusals_that_are_no_fault_of_the_engine_pass_through():
    for status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.ALREADY_EXISTS, RPCStatusCode.PERMISSION_DENIED):
        with pytest.raises(RPCError):
            await deps.temporal(raises(rpc_error(status, "the caller's own")), timeout=2)
    with pytest.raises(RPCError):  # another precondition, not a failing task
        await deps.temporal(raises(rpc_error(RPCStatusCode.FAILED_PRECONDITION, "namespace is not active")), timeout=2)


# --- a real server: a workflow whose task fails ---------------------------------------------------


@workflow.defn(name="PartnerSpecializationWorkflow", sandboxed=False)
class SpecializationWhoseTaskFails:
    """Registered under the partner workflow's name: every workflow task it gets fails (as a deploy
    whose code does not replay the history would), so the engine keeps the task in failed state."""

    @workflow.run
    async def run(self, *args) -> None:
        raise RuntimeError("a bug in workflow code")

    @workflow.query
    def view(self) -> None:
        return None


async def test_a_query_to_a_workflow_whose_task_fails_is_a_503_through_the_api(dev_server_env, tmp_path, monkeypatch):
    """The dev server refuses the partner's query and update (FAILED_PRECONDITION, WorkflowNotReadyFailure):
    GET /v1/partners/{id} and POST .../exams answer 503 workflow-busy with Retry-After, not 500."""
    import asyncio

    from service import partners

    env = dev_server_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    partner = f"WTF-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(partners, "_projected", lambda *_: None)  # no store copy to fall back on: the engine's answer stands
    async with api_client(settings) as http:
        ops = key(settings)
        r = await http.post("/v1/partners", json={"id": partner, "name": "Failing", "contact_email": "f@p.example", "country": "CA"}, headers=ops)
        assert r.status_code == 201, r.text
        handle = partners.partner_handle(env.client, partner)
        async with Worker(env.client, task_queue=settings.task_queue, workflows=[SpecializationWhoseTaskFails]):
            for _ in range(200):  # until the engine counts the task as failing (it refuses queries from its third attempt)
                task = (await handle.describe()).raw_description.pending_workflow_task
                if task.attempt >= 3:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the workflow task is at attempt {task.attempt}")
            with pytest.raises(RPCError) as refused:  # what the engine says, as the SDK raises it
                await handle.query("view")
            assert refused.value.status == RPCStatusCode.FAILED_PRECONDITION
            read = await http.get(f"/v1/partners/{partner}", headers=ops)
            write = await http.post(f"/v1/partners/{partner}/exams", json={"exam": 1, "passed": True}, headers={**ops, "Idempotency-Key": "exam-on-a-failing-task"})
        for response in (read, write):  # the update is refused too (FAILED_PRECONDITION, "... due to Workflow Task in failed state.")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.json()["type"].endswith("/workflow-busy"), response.text
        await handle.terminate("test over")
