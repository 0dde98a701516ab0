"""indexes for the business gauges on /metrics (store/gauges.py, issue 13)

deal (status, return_deadline): deals at risk are open deals whose deadline is near, read as a
range of one status; deal (incentive_status, incentive_amount): the money by incentive status is
summed from the index alone; pickup (status, created_at): pickups still under way; emailmessage
(state, created_at): failed messages and the oldest one not yet sent. A scrape reads index ranges,
never every deal.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 18:20:00
"""

from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.create_index('ix_deal_status_return_deadline', ['status', 'return_deadline'], unique=False)
        batch_op.create_index('ix_deal_incentive_status_amount', ['incentive_status', 'incentive_amount'], unique=False)
    with op.batch_alter_table('pickup', schema=None) as batch_op:
        batch_op.create_index('ix_pickup_status_created_at', ['status', 'created_at'], unique=False)
    with op.batch_alter_table('emailmessage', schema=None) as batch_op:
        batch_op.create_index('ix_emailmessage_state_created_at', ['state', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('emailmessage', schema=None) as batch_op:
        batch_op.drop_index('ix_emailmessage_state_created_at')
    with op.batch_alter_table('pickup', schema=None) as batch_op:
        batch_op.drop_index('ix_pickup_status_created_at')
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.drop_index('ix_deal_incentive_status_amount')
        batch_op.drop_index('ix_deal_status_return_deadline')
