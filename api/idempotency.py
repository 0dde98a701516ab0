"""One `Idempotency-Key` layer for every keyed POST, and the audit row of every mutating call.

A key is scoped by the caller's account (a partner, or an ops key's owner: a rotated key keeps it),
the method, the path and the key itself. The first request with a key claims it, storing the
request's fingerprint and the id its route derives for the action (the deal id of a booking, the
batch id of a receipt, the update id of an extension, ...), so that every retry is the same action
in the workflow, even one sent with the key that replaced the first one. Then:

- the same key with another body: 422 `idempotency-key-reused`;
- a retry while the first request runs waits up to `WAIT_SECONDS` for its answer, then answers
  409 `idempotency-in-progress` (the claim is a lease: a process that died frees it after `LEASE`);
- a 2xx answer is stored, and every later retry gets it as it was;
- a 4xx answer (the action was refused: nothing happened) frees the key again, so a first request
  refused, e.g. for its rate, stores nothing and the corrected request may use the same key;
- a 5xx or an error (the action may have happened) keeps the fingerprint and the derived id but
  frees the claim, so the retry re-drives the same action;
- records expire after `RECORD_TTL` and are swept.

Request validation (422 before the route runs) never reaches this layer: it stores nothing.
"""

import asyncio
import hashlib
import json
import logging
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from api.deps import Caller, store_unavailable
from api.problems import Problem
from settings import Settings
from store import audit as audit_store
from store.db import session_scope
from store.tables import IdempotencyRecord, utcnow

log = logging.getLogger("takeback.api")

RECORD_TTL = timedelta(hours=24)
WAIT_SECONDS = 5.0  # a retry of a running request waits this long for its answer before a 409
LEASE = timedelta(seconds=60)  # longer than any route's own deadline (30 s)
SWEEP_EVERY = 60.0  # seconds between sweeps of expired records, per process
SWEEP_BATCH = 1000
REASON_HEADER = "audit-reason"
MAX_REASON = 1000

_last_sweep = float("-inf")


@dataclass
class Action:
    """What the audit records of a call: the action, its deal or partner, the reason, a summary."""

    name: str
    deal_id: str | None = None
    partner_id: str | None = None
    reason: str | None = None
    detail: dict = field(default_factory=dict)
    # The audit row the action wrote in its own transaction (a booking stages its deal and its audit
    # row in one): then no second write records it, and a failure after it corrects its status.
    recorded_id: int | None = None


@dataclass(frozen=True)
class _Claim:
    outcome: str  # run | replay | reused | busy
    record_id: int | None = None
    derived_id: str | None = None
    fresh: bool = False
    status_code: int | None = None
    answer: str | None = None


def fingerprint(body: BaseModel | None) -> str:
    return hashlib.sha256((body.model_dump_json() if body is not None else "").encode()).hexdigest()


def scope_of(account: str, method: str, path: str, key: str) -> str:
    return hashlib.sha256("\n".join((account, method, path, key)).encode()).hexdigest()


def audit_reason(request: Request, given: str | None) -> str | None:
    """The reason of the body, else the optional `Audit-Reason` header (one line of text)."""
    if given:
        return given
    reason = request.headers.get(REASON_HEADER)
    if reason is None:
        return None
    reason = reason.strip()
    if len(reason) > MAX_REASON or any(unicodedata.category(char)[0] == "C" for char in reason):
        raise Problem(422, f"Audit-Reason is one line of at most {MAX_REASON} printable characters", "invalid-audit-reason")
    return reason or None


async def _store(call, *args):
    try:
        return await asyncio.to_thread(call, *args)
    except SQLAlchemyError:
        log.warning("the store failed under the idempotency layer", exc_info=True)
        raise store_unavailable() from None


def audit_values(caller: Caller, request: Request, action: Action, status_code: int, key: str | None) -> dict:
    """The audit row of a call (store.audit.record's values)."""
    return dict(
        api_key_id=caller.key_id, account=caller.account, role=caller.role, action=action.name, method=request.method, path=request.url.path,
        deal_id=action.deal_id, partner_id=action.partner_id, reason=action.reason,
        detail_json=json.dumps(action.detail, default=str, sort_keys=True) if action.detail else None,
        idempotency_key=key, status_code=status_code,
    )


async def once(
    request: Request, caller: Caller, settings: Settings, *, key: str | None, body: BaseModel | None, status_code: int, action: Action,
    run: Callable[[str | None], Awaitable[BaseModel]], derive: Callable[[], str] | None = None,
) -> Response:
    """Run `run(derived_id)` once per Idempotency-Key (see the module), audit it, answer its JSON.

    `derive` names the action of a keyed request (deal, batch or update id) the first time the key is
    seen; `run` gets that id back on every retry, and None when the request has no key."""
    url = settings.effective_database_url
    action.reason = audit_reason(request, action.reason)
    if not key:
        return await _run(request, caller, url, action, run, None, status_code, None, None)
    scope = scope_of(caller.account or f"key:{caller.key_id}", request.method, request.url.path, key)
    request_print = fingerprint(body)
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.02
    while True:
        claim = await _store(_claim, url, scope, caller, request.method, request.url.path, key, request_print, derive)
        if claim.outcome == "reused":
            raise Problem(422, "this Idempotency-Key was used with another request body", "idempotency-key-reused")
        if claim.outcome == "replay":
            return Response(claim.answer, status_code=claim.status_code, media_type="application/json")
        if claim.outcome == "run":
            return await _run(request, caller, url, action, run, claim, status_code, key, claim.derived_id)
        if time.monotonic() + pause > deadline:
            raise Problem(
                409, "a request with this Idempotency-Key is still running: retry once it has answered", "idempotency-in-progress",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)


async def _run(request, caller, url, action, run, claim: _Claim | None, status_code: int, key, derived_id):
    try:
        model = await run(derived_id)
    except Problem as problem:
        refused = problem.status < 500  # a refusal: nothing was done
        await _store(_failed, url, claim, refused, action, audit_values(caller, request, action, problem.status, key))
        raise
    except asyncio.CancelledError:
        if claim is not None:  # the client went away: free the claim beside, a retry re-drives the action
            asyncio.get_running_loop().run_in_executor(None, _failed, url, claim, False, action, None)
        raise
    except Exception:
        try:
            await _store(_failed, url, claim, False, action, audit_values(caller, request, action, 500, key))
        except Problem:
            pass
        raise
    answer = model.model_dump_json()
    if claim is not None or action.recorded_id is None:  # else nothing is left to write: the answer is not kept, the audit row is
        await _store(_done, url, claim, status_code, answer, None if action.recorded_id else audit_values(caller, request, action, status_code, key))
    return Response(answer, status_code=status_code, media_type="application/json")


def _claim(url: str, scope: str, caller: Caller, method: str, path: str, key: str, request_print: str, derive) -> _Claim:
    now = utcnow()
    _maybe_sweep(url, now)
    with session_scope(url) as session:
        for _ in range(5):
            record = session.execute(select(IdempotencyRecord).where(IdempotencyRecord.scope == scope)).scalar_one_or_none()
            if record is None:
                record = IdempotencyRecord(
                    scope=scope, account=caller.account, method=method, path=path, key=key, api_key_id=caller.key_id, fingerprint=request_print,
                    derived_id=derive() if derive else None, locked_until=now + LEASE, expires_at=now + RECORD_TTL,
                )
                session.add(record)
                try:
                    session.commit()
                except IntegrityError:  # a concurrent first request claimed it: read its record
                    session.rollback()
                    continue
                return _Claim("run", record.id, record.derived_id, fresh=True)
            if record.expires_at <= now:  # an expired key is a new one
                session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id, IdempotencyRecord.expires_at <= now))
                session.commit()
                continue
            if record.fingerprint != request_print:
                return _Claim("reused")
            if record.response_json is not None:
                return _Claim("replay", status_code=record.status_code, answer=record.response_json)
            if record.locked_until is not None and record.locked_until > now:
                return _Claim("busy")
            # Released by a request that failed (or abandoned by a process that died): take it over.
            taken = session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record.id, IdempotencyRecord.response_json.is_(None),
                       or_(IdempotencyRecord.locked_until.is_(None), IdempotencyRecord.locked_until <= now))
                .values(locked_until=now + LEASE)
            ).rowcount
            session.commit()
            if taken == 1:
                return _Claim("run", record.id, record.derived_id)
            session.expire_all()
        return _Claim("busy")


def _done(url: str, claim: _Claim | None, status_code: int, answer: str, audit: dict | None) -> None:
    with session_scope(url) as session:
        if claim is not None:
            session.execute(
                update(IdempotencyRecord).where(IdempotencyRecord.id == claim.record_id).values(status_code=status_code, response_json=answer, locked_until=None)
            )
        if audit is not None:
            audit_store.record(session, audit)  # one transaction: the stored answer and its audit row
        session.commit()


def _failed(url: str, claim: _Claim | None, refused: bool, action: Action, audit: dict | None) -> None:
    with session_scope(url) as session:
        if claim is not None:
            unanswered = (IdempotencyRecord.id == claim.record_id, IdempotencyRecord.response_json.is_(None))
            if refused and claim.fresh:  # nothing happened and no earlier attempt may have: the key is free again
                session.execute(delete(IdempotencyRecord).where(*unanswered))
            else:  # the action may have happened: keep its fingerprint and id for the retry
                session.execute(update(IdempotencyRecord).where(*unanswered).values(locked_until=None))
        if audit is not None and action.recorded_id is not None:  # recorded with the action as if it would succeed
            audit_store.correct_status(session, action.recorded_id, audit["status_code"])
        elif audit is not None:
            audit_store.record(session, audit)
        session.commit()


def sweep(url: str, now: datetime | None = None, batch: int = SWEEP_BATCH) -> int:
    """Delete up to `batch` expired records; how many went."""
    now = now or utcnow()
    with session_scope(url) as session:
        expired = select(IdempotencyRecord.id).where(IdempotencyRecord.expires_at <= now).limit(batch).scalar_subquery()
        gone = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(expired))).rowcount
        session.commit()
        return gone


def _maybe_sweep(url: str, now: datetime) -> None:
    global _last_sweep
    tick = time.monotonic()
    if tick - _last_sweep < SWEEP_EVERY:
        return
    _last_sweep = tick
    try:
        sweep(url, now)
    except SQLAlchemyError:
        log.warning("could not sweep expired idempotency records", exc_info=True)
