"""custody, sanitization, downstream shipments, verifiable certificates and reason codes (issue 14)

custodyevent: each serial's custody, appended (serial '' for a pickup's own events), unique per
(serial, kind, source) so a retried activity appends nothing twice; receiptcontext: who scanned a
batch, where, from which pickup; sanitization: NIST SP 800-88 records with their verification;
downstreamshipment / downstreammaterial: what went to which recycler, kg by material;
certificateissue: every certificate id and hash ever issued (verification without a key);
certificatepart: a certificate's JSON in 1 MB slices, read one at a time to render it;
certificate gains its id and status (provisional | final), existing ones are final and get their id
here; reasonrecord: coded reasons of cancellations and extensions; receiptrejection.reason_code.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 18:40:00
"""

from alembic import op
import sqlalchemy as sa
import hashlib

import sqlmodel


def certificate_id(deal_id: str, content_hash: str) -> str:
    """As domain.certificate.certificate_id computed it when this migration was written."""
    return "TBC-" + hashlib.sha256(f"takeback-certificate:{deal_id}:{content_hash}".encode()).hexdigest()[:20].upper()


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('certificateissue',
    sa.Column('certificate_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('issued_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('superseded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('certificate_id')
    )
    with op.batch_alter_table('certificateissue', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_certificateissue_deal_id'), ['deal_id'], unique=False)

    op.create_table('certificatepart',
    sa.Column('certificate_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('certificate_id', 'seq')
    )
    op.create_table('custodyevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('source_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('pickup_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('detail_json', sa.Text(), nullable=True),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial', 'kind', 'source_id', name='uq_custodyevent_source')
    )
    with op.batch_alter_table('custodyevent', schema=None) as batch_op:
        batch_op.create_index('ix_custodyevent_deal_id_serial_id', ['deal_id', 'serial', 'id'], unique=False)
        batch_op.create_index('ix_custodyevent_kind_value', ['kind', 'value'], unique=False)
        batch_op.create_index('ix_custodyevent_pickup_id_serial_id', ['pickup_id', 'serial', 'id'], unique=False)
        batch_op.create_index('ix_custodyevent_serial_id', ['serial', 'id'], unique=False)

    op.create_table('downstreammaterial',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('shipment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('material', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('kg', sa.Numeric(precision=14, scale=3), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('shipment_id', 'material')
    )
    with op.batch_alter_table('downstreammaterial', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_downstreammaterial_shipment_id'), ['shipment_id'], unique=False)

    op.create_table('downstreamshipment',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('recycler_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('certification_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('shipped_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('lot', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('serial_count', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('downstreamshipment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_downstreamshipment_shipped_at'), ['shipped_at'], unique=False)

    op.create_table('reasonrecord',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('partner_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('action', 'request_id')
    )
    with op.batch_alter_table('reasonrecord', schema=None) as batch_op:
        batch_op.create_index('ix_reasonrecord_action_recorded_at', ['action', 'recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reasonrecord_deal_id'), ['deal_id'], unique=False)

    op.create_table('receiptcontext',
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('facility', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('operator', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('tracking_number', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('pickup_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('batch_id')
    )
    op.create_table('sanitization',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('deal_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('source_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('technique', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('tool', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('tool_version', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('operator', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('facility', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('performed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('verification', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('verified_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial', 'source_id', name='uq_sanitization_source')
    )
    with op.batch_alter_table('sanitization', schema=None) as batch_op:
        batch_op.create_index('ix_sanitization_deal_id_serial_id', ['deal_id', 'serial', 'id'], unique=False)
        batch_op.create_index('ix_sanitization_serial_id', ['serial', 'id'], unique=False)

    with op.batch_alter_table('certificate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('certificate_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), server_default='final', nullable=False))
        batch_op.create_index('ix_certificate_certificate_id', ['certificate_id'], unique=True)

    # Certificates issued before: final (they were the deal's one certificate), each with its id, verifiable.
    connection = op.get_bind()
    certificate = sa.table('certificate', sa.column('deal_id', sa.String), sa.column('content_hash', sa.String), sa.column('issued_at', sa.DateTime), sa.column('certificate_id', sa.String))
    issue = sa.table('certificateissue', sa.column('certificate_id', sa.String), sa.column('deal_id', sa.String), sa.column('content_hash', sa.String), sa.column('status', sa.String), sa.column('issued_at', sa.DateTime))
    rows = connection.execute(sa.select(certificate.c.deal_id, certificate.c.content_hash, certificate.c.issued_at)).all()
    for deal_id, content_hash, issued_at in rows:
        cid = certificate_id(deal_id, content_hash)
        connection.execute(certificate.update().where(certificate.c.deal_id == deal_id).values(certificate_id=cid))
        connection.execute(issue.insert().values(certificate_id=cid, deal_id=deal_id, content_hash=content_hash, status='final', issued_at=issued_at))

    with op.batch_alter_table('receiptrejection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason_code', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('receiptrejection', schema=None) as batch_op:
        batch_op.drop_column('reason_code')

    with op.batch_alter_table('certificate', schema=None) as batch_op:
        batch_op.drop_index('ix_certificate_certificate_id')
        batch_op.drop_column('status')
        batch_op.drop_column('certificate_id')

    with op.batch_alter_table('sanitization', schema=None) as batch_op:
        batch_op.drop_index('ix_sanitization_serial_id')
        batch_op.drop_index('ix_sanitization_deal_id_serial_id')

    op.drop_table('sanitization')
    op.drop_table('receiptcontext')
    with op.batch_alter_table('reasonrecord', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reasonrecord_deal_id'))
        batch_op.drop_index('ix_reasonrecord_action_recorded_at')

    op.drop_table('reasonrecord')
    with op.batch_alter_table('downstreamshipment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_downstreamshipment_shipped_at'))

    op.drop_table('downstreamshipment')
    with op.batch_alter_table('downstreammaterial', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_downstreammaterial_shipment_id'))

    op.drop_table('downstreammaterial')
    with op.batch_alter_table('custodyevent', schema=None) as batch_op:
        batch_op.drop_index('ix_custodyevent_serial_id')
        batch_op.drop_index('ix_custodyevent_pickup_id_serial_id')
        batch_op.drop_index('ix_custodyevent_kind_value')
        batch_op.drop_index('ix_custodyevent_deal_id_serial_id')

    op.drop_table('custodyevent')
    with op.batch_alter_table('certificateissue', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_certificateissue_deal_id'))

    op.drop_table('certificateissue')
    op.drop_table('certificatepart')
