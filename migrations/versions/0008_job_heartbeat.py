"""job heartbeat: the time of a running job's latest progress write

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 01:00:00

A job whose worker process died stays "running". Measuring staleness from the
last progress write instead of the start lets a long job (a ZIP export of a
large batch) run as long as it needs while a dead one is noticed within
JOB_STALE_SECONDS.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('job') as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('job') as batch_op:
        batch_op.drop_column('heartbeat_at')
