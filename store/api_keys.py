"""API keys: random tokens shown once, stored as SHA-256 hashes (high-entropy keys need no slow hash).

A key works while it is neither revoked nor expired. Rotation makes a new key for the same account
and gives the old one an expiry (the overlap) after which it stops; revocation stops a key at once.
Both are rows in the database, which every API process reads on every request: no process keeps
trusting a key the database no longer does.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, or_, select, update
from sqlmodel import Session

from store.tables import ApiKey, Partner, utcnow

ROLES = ("ops", "partner")
PREFIXES = {"ops": "tbk_ops", "partner": "tbk_ptn"}
# What create_api_key makes: a role prefix and 32 random bytes, URL-safe base64 (43 characters).
KEY_FORMAT = re.compile(r"tbk_(ops|ptn)_[A-Za-z0-9_-]{43}")
LAST_USED_EVERY = timedelta(seconds=60)  # last_used_at is written at most about this often per key


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown key, already revoked, ...)."""


@dataclass(frozen=True)
class KeyIdentity:
    """What a request learns from its key: enough to authorize it and to scope and audit its writes."""

    key_id: int
    role: str
    partner_id: str | None
    account: str
    last_used_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Whether `key` could be one of ours at all: anything else is refused without a database read."""
    return KEY_FORMAT.fullmatch(key) is not None


def default_account(role: str, partner_id: str | None, key_id: int) -> str:
    return f"partner:{partner_id}" if role == "partner" else f"ops:key-{key_id}"


def _valid_owner(role: str, partner_id: str | None) -> bool:
    return (role == "ops" and partner_id is None) or (role == "partner" and bool(partner_id))


def create_api_key(session: Session, role: str, partner_id: str | None = None, owner: str | None = None, expires_in: timedelta | None = None) -> str:
    """A new key (returned once; only its hash is kept). `owner` names whose ops key it is (its
    idempotency and audit scope); without one, the key is an account of its own."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "partner":
        if not partner_id:
            raise ValueError("a partner key needs --partner-id")
        if owner:
            raise ValueError("a partner key belongs to its partner: --owner is for ops keys")
        if session.get(Partner, partner_id) is None:
            raise ValueError(f"no partner {partner_id!r}: create it first (POST /v1/partners)")
    elif partner_id:
        raise ValueError("an ops key belongs to no partner")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("--expires-in must be positive")
    key, row = _new_row(role, partner_id, f"partner:{partner_id}" if role == "partner" else (f"ops:{owner}" if owner else ""))
    row.expires_at = utcnow() + expires_in if expires_in is not None else None
    session.add(row)
    session.flush()
    if not row.account:
        row.account = default_account(role, partner_id, row.id)
    session.commit()
    return key


def _new_row(role: str, partner_id: str | None, account: str) -> tuple[str, ApiKey]:
    key = f"{PREFIXES[role]}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(key_hash=hash_key(key), prefix=key[:12], role=role, partner_id=partner_id, account=account)


def identify(session: Session | Connection, key_hash: str, now: datetime | None = None) -> KeyIdentity | None:
    """The key with this hash if it works now: one query on the unique index of `key_hash`.

    A row that breaks the role rule (a partner key without a partner; the CHECK constraint forbids
    it, but a database restored from before it may hold one) is refused, never trusted."""
    return _identity(session, (_BY_HASH, key_hash), now)


def identify_by_id(session: Session | Connection, key_id: int, now: datetime | None = None) -> KeyIdentity | None:
    """The key with this id if it works now, by the same rules as `identify`: a console session holds
    the key's id, never the key, and is checked again on every request."""
    return _identity(session, (_BY_ID, key_id), now)


def _working_key(which):
    """The select of a key that works at `now` (a bind parameter), built once: every request asks it."""
    keys = ApiKey.__table__.c
    return select(keys.id, keys.role, keys.partner_id, keys.account, keys.last_used_at).where(
        which, keys.revoked_at.is_(None), or_(keys.expires_at.is_(None), keys.expires_at > bindparam("now", type_=keys.expires_at.type))
    )


_BY_HASH = _working_key(ApiKey.__table__.c.key_hash == bindparam("which"))
_BY_ID = _working_key(ApiKey.__table__.c.id == bindparam("which"))


def _identity(session: Session | Connection, which, now: datetime | None) -> KeyIdentity | None:
    statement, value = which
    connection = session.connection() if isinstance(session, Session) else session
    row = connection.execute(statement, {"which": value, "now": now or utcnow()}).first()
    if row is None or not _valid_owner(row.role, row.partner_id):
        return None
    return KeyIdentity(key_id=row.id, role=row.role, partner_id=row.partner_id, account=row.account or default_account(row.role, row.partner_id, row.id), last_used_at=row.last_used_at)


def find_api_key(session: Session, key: str) -> ApiKey | None:
    """The row of a key that works now, or None."""
    identity = identify(session, hash_key(key))
    return session.get(ApiKey, identity.key_id) if identity else None


def touch(session: Session, key_id: int, now: datetime | None = None) -> bool:
    """Record that the key was used, unless another process did within the last minute."""
    now = now or utcnow()
    changed = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_EVERY)).values(last_used_at=now)
    ).rowcount
    session.commit()
    return changed == 1


def list_api_keys(session: Session, include_inactive: bool = False) -> list[ApiKey]:
    now = utcnow()
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_inactive:
        query = query.where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    return list(session.execute(query).scalars())


def state(row: ApiKey, now: datetime | None = None) -> str:
    now = now or utcnow()
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    if row.replaced_by_id is not None:
        return f"rotating (replaced by {row.replaced_by_id})"
    return "active"


def _working(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id, with_for_update=True)
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id}")
    if row.revoked_at is not None:
        raise ApiKeyError(f"key {key_id} is revoked already")
    return row


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    """Stop a key now: the next request with it, in any API process, is a 401."""
    row = _working(session, key_id)
    row.revoked_at = utcnow()
    session.add(row)
    session.commit()
    return row


def rotate_api_key(session: Session, key_id: int, overlap: timedelta, expires_in: timedelta | None = None) -> tuple[str, ApiKey]:
    """A new key for the same role, partner and account; the old one keeps working for `overlap`
    (never longer than it would have anyway), then stops. Returns the new key and its row."""
    if overlap < timedelta(0):
        raise ApiKeyError("--overlap cannot be negative")
    old = _working(session, key_id)
    now = utcnow()
    if old.expires_at is not None and old.expires_at <= now:
        raise ApiKeyError(f"key {key_id} has expired: create a new key instead")
    if old.replaced_by_id is not None:
        raise ApiKeyError(f"key {key_id} was rotated already (into key {old.replaced_by_id}): rotate that one")
    if not _valid_owner(old.role, old.partner_id):
        raise ApiKeyError(f"key {key_id} has role {old.role!r} and partner {old.partner_id!r}, which no key may have: revoke it")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ApiKeyError("--expires-in must be positive")
    key, new = _new_row(old.role, old.partner_id, old.account or default_account(old.role, old.partner_id, old.id))
    new.expires_at = now + expires_in if expires_in is not None else None
    session.add(new)
    session.flush()
    ends = now + overlap
    old.expires_at = min(old.expires_at, ends) if old.expires_at is not None else ends
    old.replaced_by_id = new.id
    session.add(old)
    session.commit()
    return key, new
