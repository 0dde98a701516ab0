"""carrier events and year deals are read from their sources

Carrier events: the API records a webhook's event in shipmentevent (event id as key) in the
transaction that moves the pickup, so the separate carrierwebhookevent claim table is gone.
Year deals: a partner's specialization year counts its deals in the deal table by booking
time (a new index), so yeardeal, which a signal per booking filled, is gone.

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
    with op.batch_alter_table('yeardeal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_yeardeal_partner_id'))
    op.drop_table('yeardeal')
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.create_index('ix_deal_partner_id_booked_at', ['partner_id', 'booked_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.drop_index('ix_deal_partner_id_booked_at')
    op.create_table('yeardeal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('year_number', sa.Integer(), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('partner_id', 'deal_id')
    )
    with op.batch_alter_table('yeardeal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_yeardeal_partner_id'), ['partner_id'], unique=False)
    op.create_table('carrierwebhookevent',
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('tracking_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('carrierwebhookevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_carrierwebhookevent_tracking_number'), ['tracking_number'], unique=False)
