"""Dependencies in one place: settings, the Temporal client, the caller's identity and role."""

import asyncio
import logging
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError

from api.limits import bearer_key
from api.problems import Problem, not_found
from settings import Settings
from temporal_client import call_timed_out
from store.api_keys import LAST_USED_EVERY, KeyIdentity, hash_key, identify, identify_by_id, touch, well_formed
from store.db import get_engine, session_scope
from store.tables import Deal, utcnow

log = logging.getLogger("takeback.api")

TEMPORAL_TIMEOUT = 4.5  # seconds: an unreachable engine answers 503 before a client gives up
PROBE_TIMEOUT = 0.5  # seconds of a call's budget kept to ask a silent engine whether it is there at all
RETRY_AFTER = {"Retry-After": "5"}

# The request's Temporal client, set by `get_client`, so that `temporal()` can tell a hung call on a
# reachable engine from an unreachable engine in routes that do not pass the client themselves.
_request_client: ContextVar[Client | None] = ContextVar("takeback_request_client", default=None)


# async: a plain `def` dependency costs every request a hop to the thread pool and back.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def engine_unavailable(detail: str) -> Problem:
    """The engine cannot be reached: nothing was handed to it."""
    return Problem(503, detail, "temporal-unavailable", headers=dict(RETRY_AFTER))


async def get_client(request: Request) -> Client:
    client = request.app.state.temporal
    if client is None:
        raise engine_unavailable("the workflow engine is unreachable")
    _request_client.set(client)  # async dependency: same task and context as the route
    return client


ClientDep = Annotated[Client, Depends(get_client)]


def engine_unreachable(error: BaseException) -> bool:
    from temporalio.service import RPCError, RPCStatusCode

    if isinstance(error, RPCError):
        return error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
    return isinstance(error, ConnectionError) or (isinstance(error, RuntimeError) and "client connect" in str(error).lower())


async def engine_answers(client: Client | None, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the engine answers a health check within `timeout` seconds."""
    if client is None:
        return False
    try:
        await asyncio.wait_for(client.service_client.check_health(timeout=timedelta(seconds=timeout)), timeout)
        return True
    except Exception:
        return False


def update_not_accepted(timeout: float) -> Problem:
    """An update whose call ended before the workflow's answer: it may have been accepted, and run."""
    return Problem(
        503,
        f"the workflow did not answer the update within {timeout:g} s: it may still be applied. "
        "Retrying with the same Idempotency-Key is safe: it is the same update and is applied at most once.",
        "update-not-accepted",
        headers=dict(RETRY_AFTER),
        applied="unknown",
    )


async def temporal(call, timeout: float | None = None, client: Client | None = None):
    """Await a Temporal call with a deadline: a down engine or a hung workflow is a 503, never a hang.

    The 503s say which: `temporal-unavailable` (the engine cannot be reached), `workflow-busy`
    (the engine answers, the workflow did not in time, its task is failing, or the engine pushed
    back), `worker-unavailable` (no worker polls) and `update-not-accepted` (an update's call
    ended before the workflow answered: it may still be applied, `"applied": "unknown"`).
    With a client (passed, or the request's), half a second of `timeout` is kept to ask a silent
    engine whether it is there, so the caller still has its answer within `timeout`."""
    timeout = TEMPORAL_TIMEOUT if timeout is None else timeout
    if client is None:
        client = _request_client.get()
    probe = min(PROBE_TIMEOUT, timeout / 4) if client is not None else 0.0
    try:
        return await asyncio.wait_for(call, timeout - probe)
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # Also what wait_for's cancellation of an update becomes: the SDK turns it into this error.
        raise update_not_accepted(timeout) from None
    except TimeoutError:
        raise await _silence(client, probe, timeout) from None
    except Exception as error:
        if call_timed_out(error) or _deadline_exceeded(error):
            raise await _silence(client, probe, timeout) from None
        if engine_unreachable(error):
            raise engine_unavailable("the workflow engine is unreachable; retry shortly") from None
        problem = _engine_refusal(error)
        if problem is not None:
            raise problem from None
        raise


def _engine_refusal(error: BaseException) -> Problem | None:
    """The 503 of a call the engine refused for now (no worker, a workflow task failing, a restart,
    back-pressure), or None: anything else is the route's to answer (or a bug, a 500)."""
    if _no_worker(error):
        return Problem(
            503,
            "no worker is taking this deal's tasks right now (one is restarting); it answers again once a worker is back: retry shortly",
            "worker-unavailable",
            headers=dict(RETRY_AFTER),
        )
    if _workflow_task_failing(error):
        return Problem(
            503,
            "the workflow cannot answer right now: its current task keeps failing on the workers (a deploy whose code does "
            "not replay it, or a bug; the worker's log names it) and the engine retries it: retry shortly",
            "workflow-busy",
            headers=dict(RETRY_AFTER),
        )
    if _update_not_taken_in(error):
        return Problem(
            503,
            "the workflow did not take this request in (a worker was restarting); nothing was applied: retry shortly",
            "workflow-busy",
            headers=dict(RETRY_AFTER),
            applied="no",
        )
    if _call_cut_off(error):
        return Problem(
            503,
            "the call to the workflow engine was cut off (the engine or a worker restarting, or too many reads of one deal "
            "at once); a write may still take effect: retry shortly, with the same Idempotency-Key where the route takes one",
            "workflow-busy",
            headers=dict(RETRY_AFTER),
            applied="unknown",
        )
    return None


def _workflow_task_failing(error: BaseException) -> bool:
    """A query to a workflow whose workflow task is failing (workflow code raising, or a worker whose
    code does not replay the history): the engine refuses it with FAILED_PRECONDITION "Workflow Task
    in failed state." and a WorkflowNotReadyFailure in the status's details. The engine retries the
    task; the workflow answers again once a worker completes it. It was a 500."""
    from temporalio.api.errordetails.v1 import WorkflowNotReadyFailure
    from temporalio.service import RPCError, RPCStatusCode

    if not isinstance(error, RPCError) or error.status != RPCStatusCode.FAILED_PRECONDITION:
        return False
    if "workflow task in failed state" in error.message.lower():
        return True
    try:
        return any(detail.Is(WorkflowNotReadyFailure.DESCRIPTOR) for detail in error.grpc_status.details)
    except Exception:  # details that do not parse: not this refusal
        return False


def _deadline_exceeded(error: BaseException) -> bool:
    """A call that ran out of time inside the engine but came back under another status (a query
    relayed to a worker: UNKNOWN or INTERNAL "context deadline exceeded")."""
    from temporalio.service import RPCError

    return isinstance(error, RPCError) and "deadline exceeded" in str(error).lower()


def _call_cut_off(error: BaseException) -> bool:
    """Transport faults and back-pressure of a call in flight, seen while the server or a worker
    restarts: 'transport error' (UNKNOWN), 'h2 protocol error' / 'context canceled' (CANCELLED), a
    deal's query buffer full while its worker is gone (RESOURCE_EXHAUSTED), ABORTED. None is a bug
    of the request: the caller retries."""
    from temporalio.service import RPCError, RPCStatusCode

    if not isinstance(error, RPCError):
        return False
    if error.status in (RPCStatusCode.CANCELLED, RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.ABORTED):
        return True
    return error.status == RPCStatusCode.UNKNOWN and any(word in str(error).lower() for word in ("transport", "connection", "h2 protocol", "broken pipe", "reset"))


def _update_not_taken_in(error: BaseException) -> bool:
    """An update the engine rejected because the workflow task it was sent in completed without it
    (UnprocessedUpdate: seen by the chaos run while workers restarted; it was a 500). The engine says
    nothing was applied, so a retry is safe."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError

    return isinstance(error, WorkflowUpdateFailedError) and isinstance(error.cause, ApplicationError) and error.cause.type == "UnprocessedUpdate"


def _no_worker(error: BaseException) -> bool:
    """A query while no worker polls the deal's task queue (every worker killed or restarting):
    the server refuses it at once with FAILED_PRECONDITION. Seen by the chaos run: it was a 500."""
    from temporalio.service import RPCError, RPCStatusCode

    return isinstance(error, RPCError) and error.status == RPCStatusCode.FAILED_PRECONDITION and "no poller" in str(error).lower()


async def _silence(client: Client | None, probe: float, timeout: float) -> Problem:
    """No answer in time: a busy or hung workflow if the engine itself answers, else an unreachable engine."""
    if await engine_answers(client, probe):
        return Problem(
            503,
            f"the workflow engine is reachable but the workflow did not answer within {timeout:g} s; "
            "a write may still take effect: retry shortly (with the same Idempotency-Key where the route takes one)",
            "workflow-busy",
            headers=dict(RETRY_AFTER),
        )
    return engine_unavailable(f"the workflow engine did not answer within {timeout:g} s")


@dataclass(frozen=True)
class Caller:
    key_id: int
    role: str
    partner_id: str | None
    account: str = ""  # whose key: "partner:<id>" or "ops:<owner>"; scopes idempotency keys and the audit

    @property
    def is_ops(self) -> bool:
        return self.role == "ops"

    def may_see_partner(self, partner_id: str) -> bool:
        return self.is_ops or self.partner_id == partner_id


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="takeback"'})


def store_unavailable() -> Problem:
    return Problem(503, "the store cannot be reached; retry shortly", "store-unavailable", headers=dict(RETRY_AFTER))


# A valid key is looked up on every request: one query on the unique index of its hash, so a key
# revoked (or expired, or rotated past its overlap) stops at once in every API process.
# Unknown keys are remembered, by hash, in a bounded cache for a short while, so a client repeating
# bad tokens costs no database read; a token that is not even in our keys' format costs none at all.
STORE_TIMEOUT = 5.0  # seconds the key lookup may take before the answer is a 503
UNKNOWN_KEY_SECONDS = 30.0
UNKNOWN_KEY_LIMIT = 10_000
_unknown_keys: OrderedDict[str, float] = OrderedDict()  # sha256 of the key -> monotonic time it is forgotten
_touched: dict[int, float] = {}  # key id -> when this process last wrote its last_used_at (monotonic)
_touches: set[asyncio.Future] = set()
_clock = time.monotonic


def _remember_unknown(digest: str, now: float) -> None:
    _unknown_keys[digest] = now + UNKNOWN_KEY_SECONDS
    _unknown_keys.move_to_end(digest)
    while len(_unknown_keys) > UNKNOWN_KEY_LIMIT:
        _unknown_keys.popitem(last=False)


def _known_unknown(digest: str, now: float) -> bool:
    until = _unknown_keys.get(digest)
    if until is None:
        return False
    if until > now:
        return True
    _unknown_keys.pop(digest, None)
    return False


def _touch_later(url: str, identity: KeyIdentity, now: float) -> None:
    """Record the key's use, at most about once a minute per key, beside the request (never in its way)."""
    if identity.last_used_at is not None and identity.last_used_at > utcnow() - LAST_USED_EVERY:
        return
    if _touched.get(identity.key_id, float("-inf")) + LAST_USED_EVERY.total_seconds() > now:
        return
    _touched[identity.key_id] = now

    def write() -> None:
        with session_scope(url) as session:
            touch(session, identity.key_id)

    future = asyncio.get_running_loop().run_in_executor(None, write)
    _touches.add(future)
    future.add_done_callback(_touch_done)


def _touch_done(future: asyncio.Future) -> None:
    _touches.discard(future)
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not record an API key's last use: %s", type(future.exception()).__name__)


async def get_caller(request: Request, settings: SettingsDep) -> Caller:
    key = bearer_key(request.headers.get("authorization", ""))
    if key is None:
        raise _unauthorized("send an API key: Authorization: Bearer <key>")
    return await caller_for_key(settings, key)


async def caller_for_key(settings: Settings, key: str) -> Caller:
    """Who a key is, if it works now (else 401; 503 if the store cannot say): the API's bearer keys
    and the console's sign-in are checked alike."""
    if not well_formed(key):
        raise _unauthorized("unknown or revoked API key")
    digest, now = hash_key(key), _clock()
    if _known_unknown(digest, now):
        raise _unauthorized("unknown or revoked API key")
    url = settings.effective_database_url

    def lookup() -> KeyIdentity | None:
        with get_engine(url).connect() as connection:  # a bare connection: a tenth of a millisecond under a session
            return identify(connection, digest)

    try:
        identity = await asyncio.wait_for(asyncio.to_thread(lookup), STORE_TIMEOUT)
    except (SQLAlchemyError, OSError, TimeoutError):
        raise store_unavailable() from None
    if identity is None:
        _remember_unknown(digest, now)
        raise _unauthorized("unknown, expired or revoked API key")
    _touch_later(url, identity, now)
    return Caller(key_id=identity.key_id, role=identity.role, partner_id=identity.partner_id, account=identity.account)


async def caller_for_key_id(settings: Settings, key_id: int) -> Caller | None:
    """The caller of a console session (which holds a key id, never a key), if that key still works:
    revoked, expired or rotated past its overlap, the session ends with it. 503 if the store cannot say."""
    url = settings.effective_database_url

    def lookup() -> KeyIdentity | None:
        with get_engine(url).connect() as connection:
            return identify_by_id(connection, key_id)

    try:
        identity = await asyncio.wait_for(asyncio.to_thread(lookup), STORE_TIMEOUT)
    except (SQLAlchemyError, OSError, TimeoutError):
        raise store_unavailable() from None
    if identity is None:
        return None
    _touch_later(url, identity, _clock())
    return Caller(key_id=identity.key_id, role=identity.role, partner_id=identity.partner_id, account=identity.account)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_ops(caller: Caller, what: str = "this action") -> None:
    if not caller.is_ops:
        raise Problem(403, f"{what} needs an ops key", "forbidden")


def require_partner_access(caller: Caller, partner_id: str) -> None:
    """A partner sees only itself: anything else does not exist for it."""
    if not caller.may_see_partner(partner_id):
        raise not_found(f"partner {partner_id}")


async def owned_deal(settings: Settings, caller: Caller, deal_id: str) -> Deal:
    """The deal's store row if the caller may see it, else 404 (also for other partners' deals)."""

    def load():
        with session_scope(settings.effective_database_url) as session:
            return session.get(Deal, deal_id)

    deal = await asyncio.to_thread(load)
    if deal is None or not caller.may_see_partner(deal.partner_id):
        raise not_found(f"deal {deal_id}")
    return deal
