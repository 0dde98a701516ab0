"""settlements, mail delivery state, projection revisions, refused receipts

settlement: one terminal money outcome per deal (primary key), filled from the ledger's terminal
rows of deals settled before it. emailmessage: delivery state (queued, sending, sent, failed),
attempts, last error and the claim an attempt takes before it calls the provider; messages sent
before are `sent`. deal.revision: projections never move backwards. receiptbatch.refused_at: a
batch the deal refused is never processed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:27:15.473394
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('settlement',
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('partner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('deal_id')
    )
    with op.batch_alter_table('settlement', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_settlement_partner_id'), ['partner_id'], unique=False)

    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))

    with op.batch_alter_table('emailmessage', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('partner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='queued'))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_emailmessage_deal_id'), ['deal_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_emailmessage_partner_id'), ['partner_id'], unique=False)

    with op.batch_alter_table('receiptbatch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refused_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))

    op.execute("UPDATE emailmessage SET state = 'sent', attempts = 1 WHERE sent_at IS NOT NULL")
    op.execute(
        "INSERT INTO settlement (deal_id, partner_id, outcome, amount, decided_at) "
        "SELECT deal_id, partner_id, kind, amount, recorded_at FROM incentiveledger "
        "WHERE kind IN ('released', 'forfeited', 'clawed_back', 'cancelled') "
        "AND id IN (SELECT MIN(id) FROM incentiveledger WHERE kind IN ('released', 'forfeited', 'clawed_back', 'cancelled') GROUP BY deal_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('receiptbatch', schema=None) as batch_op:
        batch_op.drop_column('refused_at')

    with op.batch_alter_table('emailmessage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_emailmessage_partner_id'))
        batch_op.drop_index(batch_op.f('ix_emailmessage_deal_id'))
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('last_error')
        batch_op.drop_column('attempts')
        batch_op.drop_column('state')
        batch_op.drop_column('partner_id')
        batch_op.drop_column('deal_id')

    with op.batch_alter_table('deal', schema=None) as batch_op:
        batch_op.drop_column('revision')

    with op.batch_alter_table('settlement', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_settlement_partner_id'))

    op.drop_table('settlement')
