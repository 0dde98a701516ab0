"""api keys: account, expiry, rotation, last use, role check

apikey: `account` (whose key: "partner:<id>" or "ops:key-<id>" for keys made before owners
existed) will scope idempotency keys and the audit, and a rotation keeps it; `expires_at` (optional
expiry, and the end of a rotated key's overlap), `last_used_at`, `replaced_by_id`. A CHECK
constraint makes a partner key without a partner impossible (and an ops key with one): ops keys
that named a partner lose it (they acted as ops already), partner keys without a partner, which
no code makes and which would have seen every partner's deals, are deleted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:12:33
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ROLE_CHECK = "(role = 'ops' AND partner_id IS NULL) OR (role = 'partner' AND partner_id IS NOT NULL AND partner_id <> '')"


def upgrade() -> None:
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


def downgrade() -> None:
    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.drop_constraint('ck_apikey_role_partner', type_='check')
        batch_op.drop_column('replaced_by_id')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('account')
