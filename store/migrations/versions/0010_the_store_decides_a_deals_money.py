"""the store decides a deal's money (release 1.0): deal.decided_at closes a deal to later receipts

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 23:50:00
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deal') as batch:
        batch.add_column(sa.Column('decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deal') as batch:
        batch.drop_column('decided_at')
