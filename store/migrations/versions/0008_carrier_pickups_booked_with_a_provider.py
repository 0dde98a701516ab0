"""carrier pickups booked with a shipping provider (TAKEBACK_CARRIER=easypost, issue 16)

carrierpickup: one row per pickup booked with the provider, holding each provider object (address,
shipment, tracker, label, provider pickup) as soon as it exists, so a retried booking resumes and
never books twice; its state (booking, booked, cancel_requested, cancelled), attempts and last
error (an outage shows on the deal), the parcel or pallet estimate and the pickup window.
(state, deal_id): the tracking poll reads the booked and cancel-requested rows, a cancelled deal its own.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 18:00:20
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('carrierpickup',
    sa.Column('pickup_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_attempt_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('parcel_kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('weight_kg', sa.Float(), nullable=False),
    sa.Column('window_start', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('window_end', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('address_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('shipment_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('tracker_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('tracking_code', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('carrier', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('service', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('label_url', sa.Text(), nullable=True),
    sa.Column('label_format', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('provider_pickup_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('confirmation', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('booked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('cancelled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('pickup_id')
    )
    with op.batch_alter_table('carrierpickup', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_carrierpickup_deal_id'), ['deal_id'], unique=False)
        batch_op.create_index('ix_carrierpickup_state_deal_id', ['state', 'deal_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('carrierpickup', schema=None) as batch_op:
        batch_op.drop_index('ix_carrierpickup_state_deal_id')
        batch_op.drop_index(batch_op.f('ix_carrierpickup_deal_id'))

    op.drop_table('carrierpickup')
