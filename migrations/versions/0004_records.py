"""certificate versions, corrections, audit before/after and its append-only guard, lookup and download events

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-04 20:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None

GUARD_MESSAGE = 'audit_entry is append-only: rows may not be updated or deleted'

SQLITE_GUARD = [
    f"""CREATE TRIGGER audit_entry_no_update BEFORE UPDATE ON audit_entry
    BEGIN SELECT RAISE(ABORT, '{GUARD_MESSAGE}'); END""",
    f"""CREATE TRIGGER audit_entry_no_delete BEFORE DELETE ON audit_entry
    BEGIN SELECT RAISE(ABORT, '{GUARD_MESSAGE}'); END""",
]

POSTGRES_GUARD = [
    f"""CREATE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{GUARD_MESSAGE}';
    END;
    $$""",
    """CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry
    FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only()""",
    # TRUNCATE fires no row triggers, so it gets a statement trigger of its own.
    """CREATE TRIGGER audit_entry_no_truncate BEFORE TRUNCATE ON audit_entry
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entry_append_only()""",
]


def upgrade():
    with op.batch_alter_table('certificate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corrected_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('before', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('after', sa.JSON(), nullable=True))

    op.create_table(
        'certificate_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('certificate_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('fields', sa.JSON(), nullable=False),
        # Encrypted with ID_NUMBER_KEY by the model's column type, like certificate.id_number.
        sa.Column('id_number', sa.String(length=128), nullable=False),
        sa.Column('corrected_by', sa.String(length=50), nullable=False),
        sa.Column('corrected_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ['certificate_id'], ['certificate.id'],
            name=op.f('fk_certificate_version_certificate_id_certificate'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_certificate_version')),
        sa.UniqueConstraint('certificate_id', 'version', name=op.f('uq_certificate_version_certificate_id')),
    )
    op.create_index(op.f('ix_certificate_version_certificate_id'), 'certificate_version', ['certificate_id'])

    op.create_table(
        'lookup_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('channel', sa.String(length=10), nullable=False),
        sa.Column('result', sa.String(length=10), nullable=False),
        sa.CheckConstraint("channel IN ('form', 'qr', 'api', 'file')", name=op.f('ck_lookup_event_channel')),
        sa.CheckConstraint("result IN ('valid', 'revoked', 'not_found')", name=op.f('ck_lookup_event_result')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_lookup_event')),
    )
    op.create_index(op.f('ix_lookup_event_at'), 'lookup_event', ['at'])
    op.create_index(op.f('ix_lookup_event_day'), 'lookup_event', ['day'])

    op.create_table(
        'download_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('certificate_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ['certificate_id'], ['certificate.id'],
            name=op.f('fk_download_event_certificate_id_certificate'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_download_event')),
    )
    op.create_index(op.f('ix_download_event_at'), 'download_event', ['at'])
    op.create_index(op.f('ix_download_event_day'), 'download_event', ['day'])
    op.create_index(op.f('ix_download_event_certificate_id'), 'download_event', ['certificate_id'])

    # The database itself refuses to change or remove audit entries, whatever the application does.
    guard = POSTGRES_GUARD if op.get_bind().dialect.name == 'postgresql' else SQLITE_GUARD
    for statement in guard:
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER IF EXISTS audit_entry_no_truncate ON audit_entry')
        op.execute('DROP TRIGGER IF EXISTS audit_entry_append_only ON audit_entry')
        op.execute('DROP FUNCTION IF EXISTS audit_entry_append_only()')
    else:
        op.execute('DROP TRIGGER IF EXISTS audit_entry_no_update')
        op.execute('DROP TRIGGER IF EXISTS audit_entry_no_delete')

    op.drop_table('download_event')
    op.drop_table('lookup_event')
    op.drop_table('certificate_version')
    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.drop_column('after')
        batch_op.drop_column('before')
    with op.batch_alter_table('certificate', schema=None) as batch_op:
        batch_op.drop_column('corrected_at')

