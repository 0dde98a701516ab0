"""API keys: random tokens shown once, stored as SHA-256 hashes (high-entropy keys need no slow hash)."""

import hashlib
import secrets

from sqlalchemy import select
from sqlmodel import Session

from store.tables import ApiKey, Partner

ROLES = ("ops", "partner")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, role: str, partner_id: str | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "partner":
        if not partner_id:
            raise ValueError("a partner key needs --partner-id")
        if session.get(Partner, partner_id) is None:
            raise ValueError(f"no partner {partner_id!r}: create it first (POST /v1/partners)")
    elif partner_id:
        raise ValueError("an ops key belongs to no partner")
    prefix = "tbk_ops" if role == "ops" else "tbk_ptn"
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(key_hash=hash_key(key), prefix=key[:12], role=role, partner_id=partner_id))
    session.commit()
    return key


def find_api_key(session: Session, key: str) -> ApiKey | None:
    row = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).scalars().first()
    if row is None or row.revoked_at is not None:
        return None
    return row
