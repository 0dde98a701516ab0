"""console: indexes for its deal filters

deal.return_deadline: the console's "at risk" and "deadline within N days" filters and its sort by
deadline read a range of deadlines instead of every deal. committedserial.serial: its search by
serial (the primary key leads with the deal id, so a serial alone was a full scan).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 17:50:00
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deal_return_deadline'), ['return_deadline'], unique=False)
    with op.batch_alter_table('committedserial', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_committedserial_serial'), ['serial'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('committedserial', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_committedserial_serial'))
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deal_return_deadline'))
