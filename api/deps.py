"""Dependencies in one place: settings, the Temporal client, the caller's identity and role."""

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from api.problems import Problem, not_found
from settings import Settings
from store.api_keys import find_api_key
from store.db import session_scope
from store.tables import Deal

TEMPORAL_TIMEOUT = 4.5  # seconds: an unreachable engine answers 503 before a client gives up


# async: a plain `def` dependency costs every request a hop to the thread pool and back.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_client(request: Request) -> Client:
    client = request.app.state.temporal
    if client is None:
        raise Problem(503, "the workflow engine is unreachable", "temporal-unavailable", headers={"Retry-After": "5"})
    return client


ClientDep = Annotated[Client, Depends(get_client)]


def engine_unreachable(error: BaseException) -> bool:
    from temporalio.service import RPCError, RPCStatusCode

    if isinstance(error, RPCError):
        return error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
    return isinstance(error, ConnectionError) or (isinstance(error, RuntimeError) and "client connect" in str(error).lower())


async def temporal(call, timeout: float = TEMPORAL_TIMEOUT):
    """Await a Temporal call with a deadline: a down engine is a 503, never a hang."""
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        raise Problem(503, f"the workflow engine did not answer within {timeout:g} s", "temporal-unavailable", headers={"Retry-After": "5"}) from None
    except Exception as error:
        if engine_unreachable(error):
            raise Problem(503, "the workflow engine is unreachable; retry shortly", "temporal-unavailable", headers={"Retry-After": "5"}) from None
        raise


@dataclass(frozen=True)
class Caller:
    key_id: int
    role: str
    partner_id: str | None

    @property
    def is_ops(self) -> bool:
        return self.role == "ops"

    def may_see_partner(self, partner_id: str) -> bool:
        return self.is_ops or self.partner_id == partner_id


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="takeback"'})


# Valid keys seen lately, so a busy client costs no database read per request. Revoking a key
# therefore takes up to this long to bite; unknown keys are never remembered (no growth by guessing).
KEY_CACHE_SECONDS = 10.0
_known_keys: dict[str, tuple[Caller, float]] = {}
_clock = time.monotonic


async def get_caller(request: Request, settings: SettingsDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("send an API key: Authorization: Bearer <key>")
    known = _known_keys.get(key)
    if known is not None and known[1] > _clock():
        return known[0]

    def lookup():
        with session_scope(settings.effective_database_url) as session:
            row = find_api_key(session, key)
            return Caller(key_id=row.id, role=row.role, partner_id=row.partner_id) if row else None

    caller = await asyncio.to_thread(lookup)
    if caller is None:
        _known_keys.pop(key, None)
        raise _unauthorized("unknown or revoked API key")
    _known_keys[key] = (caller, _clock() + KEY_CACHE_SECONDS)
    return caller


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
