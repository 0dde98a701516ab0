"""carrier events are recorded once in shipmentevent: drop carrierwebhookevent

The API now records a webhook's event in shipmentevent (event id as key) in the same
transaction that moves the pickup, so the separate claim table is gone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 05:30:00
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('carrierwebhookevent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_carrierwebhookevent_tracking_number'))
    op.drop_table('carrierwebhookevent')


def downgrade() -> None:
    op.create_table('carrierwebhookevent',
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('tracking_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('carrierwebhookevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_carrierwebhookevent_tracking_number'), ['tracking_number'], unique=False)
