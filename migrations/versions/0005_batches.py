"""import batches: batch_row table and batch timestamps, counts and notices

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('import_batch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('changed_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('applied_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('hidden_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('include_hidden', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('header', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('notices', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('previewed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f('fk_import_batch_job_id_job'), 'job', ['job_id'], ['id'], ondelete='SET NULL'
        )

    op.create_table(
        'batch_row',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('batch_id', sa.Integer(), nullable=False),
        sa.Column('row', sa.Integer(), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('hidden', sa.String(length=10), nullable=False),
        sa.Column('number', sa.String(length=32), nullable=True),
        sa.Column('name', sa.String(length=50), nullable=True),
        sa.Column('record', sa.JSON(), nullable=True),
        sa.Column('cells', sa.JSON(), nullable=True),
        sa.Column('changes', sa.JSON(), nullable=True),
        sa.Column('certificate_id', sa.Integer(), nullable=True),
        sa.Column('applied', sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('imported', 'rejected', 'skipped', 'changed')", name=op.f('ck_batch_row_outcome')
        ),
        sa.ForeignKeyConstraint(
            ['batch_id'], ['import_batch.id'], name=op.f('fk_batch_row_batch_id_import_batch'), ondelete='CASCADE'
        ),
        sa.ForeignKeyConstraint(
            ['certificate_id'], ['certificate.id'], name=op.f('fk_batch_row_certificate_id_certificate'),
            ondelete='SET NULL',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_row')),
        sa.UniqueConstraint('batch_id', 'row', name=op.f('uq_batch_row_batch_id')),
    )
    op.create_index('ix_batch_row_batch_outcome', 'batch_row', ['batch_id', 'outcome', 'row'], unique=False)


def downgrade():
    op.drop_index('ix_batch_row_batch_outcome', table_name='batch_row')
    op.drop_table('batch_row')
    with op.batch_alter_table('import_batch', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_import_batch_job_id_job'), type_='foreignkey')
        batch_op.drop_column('job_id')
        batch_op.drop_column('discarded_at')
        batch_op.drop_column('previewed_at')
        batch_op.drop_column('notices')
        batch_op.drop_column('header')
        batch_op.drop_column('include_hidden')
        batch_op.drop_column('hidden_count')
        batch_op.drop_column('applied_count')
        batch_op.drop_column('changed_count')

