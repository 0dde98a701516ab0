"""api keys: account, expiry, rotation, last use, role check; one idempotency layer; audit trail

apikey: `account` (whose key: "partner:<id>" or "ops:key-<id>" for keys made before owners
existed) scopes idempotency keys and the audit, and a rotation keeps it; `expires_at` (optional
expiry, and the end of a rotated key's overlap), `last_used_at`, `replaced_by_id`. A CHECK
constraint makes a partner key without a partner impossible (and an ops key with one): ops keys
that named a partner lose it (they acted as ops already), partner keys without a partner, which
no code makes and which would have seen every partner's deals, are deleted.

idempotencyrecord is rebuilt for the layer every POST goes through: scoped by account, method,
path and key (their hash is unique), with the request's fingerprint, the id the route derived,
a lease while a request runs it and an expiry (24 h). Bookings' records carry over (their deal id
and answer: a retry still books the one deal); extend and cancel records, whose keys were stored
hashed, do not: a retry of one sent before the upgrade is applied again.

auditevent: one row per mutating call (acting key, account, action, deal or partner, reason).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:12:33
"""

import hashlib
from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ROLE_CHECK = "(role = 'ops' AND partner_id IS NULL) OR (role = 'partner' AND partner_id IS NOT NULL AND partner_id <> '')"
RECORD_TTL = timedelta(hours=24)


def _aware(value):
    if value is None or isinstance(value, datetime):
        moment = value
    else:  # SQLite hands back text on a plain connection
        moment = datetime.fromisoformat(str(value))
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def upgrade() -> None:
    op.create_table('auditevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('partner_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('detail_json', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('auditevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auditevent_api_key_id'), ['api_key_id'], unique=False)
        batch_op.create_index('ix_auditevent_deal_id_id', ['deal_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auditevent_partner_id'), ['partner_id'], unique=False)

    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('replaced_by_id', sa.Integer(), nullable=True))

    op.execute("UPDATE apikey SET partner_id = NULL WHERE role = 'ops' AND partner_id IS NOT NULL")
    op.execute("DELETE FROM apikey WHERE NOT (" + ROLE_CHECK + ")")
    op.execute("UPDATE apikey SET account = 'partner:' || partner_id WHERE role = 'partner'")
    op.execute("UPDATE apikey SET account = 'ops:key-' || CAST(id AS VARCHAR(20)) WHERE role = 'ops'")
    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.create_check_constraint('ck_apikey_role_partner', ROLE_CHECK)

    bind = op.get_bind()
    now = datetime.now(timezone.utc)
    bookings = []
    for row in bind.execute(sa.text(
        "SELECT r.key, r.request_hash, r.deal_id, r.status_code, r.response_json, r.created_at, r.api_key_id, k.account "
        "FROM idempotencyrecord r JOIN apikey k ON k.id = r.api_key_id"
    )).mappings():
        created = _aware(row["created_at"]) or now
        if row["key"].startswith(("extend:", "cancel:")) or created + RECORD_TTL <= now:
            continue
        scope = hashlib.sha256("\n".join((row["account"], "POST", "/v1/deals", row["key"])).encode()).hexdigest()
        bookings.append({
            "scope": scope, "account": row["account"], "method": "POST", "path": "/v1/deals", "key": row["key"], "api_key_id": row["api_key_id"],
            "fingerprint": row["request_hash"], "derived_id": row["deal_id"], "locked_until": None, "status_code": row["status_code"],
            "response_json": row["response_json"], "created_at": created, "expires_at": created + RECORD_TTL,
        })

    with op.batch_alter_table('idempotencyrecord', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotencyrecord_api_key_id'))
    op.drop_table('idempotencyrecord')
    record = op.create_table('idempotencyrecord',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('derived_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('locked_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_json', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope')
    )
    with op.batch_alter_table('idempotencyrecord', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotencyrecord_expires_at'), ['expires_at'], unique=False)
    if bookings:
        op.bulk_insert(record, bookings)


def downgrade() -> None:
    with op.batch_alter_table('idempotencyrecord', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotencyrecord_expires_at'))
    op.drop_table('idempotencyrecord')
    op.create_table('idempotencyrecord',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_json', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('api_key_id', 'key')
    )
    with op.batch_alter_table('idempotencyrecord', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotencyrecord_api_key_id'), ['api_key_id'], unique=False)

    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.drop_constraint('ck_apikey_role_partner', type_='check')
        batch_op.drop_column('replaced_by_id')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('account')

    with op.batch_alter_table('auditevent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auditevent_partner_id'))
        batch_op.drop_index('ix_auditevent_deal_id_id')
        batch_op.drop_index(batch_op.f('ix_auditevent_api_key_id'))

    op.drop_table('auditevent')
