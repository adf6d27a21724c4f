"""security: second factor, session versions, login throttling, password reset codes, encrypted ID numbers

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('staff_user') as batch_op:
        batch_op.add_column(sa.Column('totp_secret', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('session_version', sa.Integer(), server_default='1', nullable=False))
    with op.batch_alter_table('holder') as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), server_default='1', nullable=False))

    op.create_table(
        'login_throttle',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('window_started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_login_throttle')),
        sa.UniqueConstraint('key', name=op.f('uq_login_throttle_key')),
    )
    op.create_table(
        'password_reset_code',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('holder_id', sa.Integer(), nullable=False),
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['holder_id'], ['holder.id'], name=op.f('fk_password_reset_code_holder_id_holder'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_password_reset_code')),
    )
    with op.batch_alter_table('password_reset_code') as batch_op:
        batch_op.create_index(batch_op.f('ix_password_reset_code_holder_id'), ['holder_id'], unique=False)


    _encrypt_id_numbers()


def _encrypt_id_numbers():
    """Widen id_number for ciphertext, add the lookup hash, re-write every row, and key the holder constraint on the hash.

    Rows are re-written with the running app's ID_NUMBER_KEY and ID_HASH_KEY,
    so `flask db upgrade` needs them configured when the tables are not empty.
    """
    with op.batch_alter_table('holder') as batch_op:
        batch_op.add_column(sa.Column('id_number_hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('id_number', existing_type=sa.String(length=32), type_=sa.String(length=128))
    with op.batch_alter_table('certificate') as batch_op:
        batch_op.add_column(sa.Column('id_number_hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('id_number', existing_type=sa.String(length=32), type_=sa.String(length=128))

    _rewrite('holder', encrypt=True)
    _rewrite('certificate', encrypt=True)

    with op.batch_alter_table('holder') as batch_op:
        batch_op.alter_column('id_number_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_constraint('uq_holder_id_type', type_='unique')
        batch_op.create_unique_constraint('uq_holder_id_type', ['id_type', 'id_number_hash'])
        batch_op.create_index('ix_holder_id_number_hash', ['id_number_hash'], unique=False)
    with op.batch_alter_table('certificate') as batch_op:
        batch_op.alter_column('id_number_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index('ix_certificate_holder')
        batch_op.create_index('ix_certificate_holder', ['id_number_hash', 'name'], unique=False)


def _rewrite(table_name, *, encrypt):
    from app.domain import crypto
    from flask import current_app

    connection = op.get_bind()
    table = sa.table(table_name, sa.column('id', sa.Integer), sa.column('id_number', sa.String), sa.column('id_number_hash', sa.String))
    rows = connection.execute(sa.select(table.c.id, table.c.id_number)).all()
    if not rows:
        return
    number_key = crypto.derive_key(current_app.config['ID_NUMBER_KEY'])
    hash_key = crypto.derive_key(current_app.config['ID_HASH_KEY'])
    for row_id, value in rows:
        if encrypt:
            values = {'id_number': crypto.encrypt(number_key, value), 'id_number_hash': crypto.keyed_hash(hash_key, value)}
        else:
            values = {'id_number': crypto.decrypt(number_key, value)}
        connection.execute(table.update().where(table.c.id == row_id).values(**values))


def downgrade():
    with op.batch_alter_table('certificate') as batch_op:
        batch_op.drop_index('ix_certificate_holder')
        batch_op.create_index('ix_certificate_holder', ['id_number', 'name'], unique=False)
    with op.batch_alter_table('holder') as batch_op:
        batch_op.drop_index('ix_holder_id_number_hash')
        batch_op.drop_constraint('uq_holder_id_type', type_='unique')
        batch_op.create_unique_constraint('uq_holder_id_type', ['id_type', 'id_number'])
    _rewrite('holder', encrypt=False)
    _rewrite('certificate', encrypt=False)
    for table_name in ('certificate', 'holder'):
        with op.batch_alter_table(table_name) as batch_op:
            batch_op.drop_column('id_number_hash')
            batch_op.alter_column('id_number', existing_type=sa.String(length=128), type_=sa.String(length=32))

    with op.batch_alter_table('password_reset_code') as batch_op:
        batch_op.drop_index(batch_op.f('ix_password_reset_code_holder_id'))
    op.drop_table('password_reset_code')
    op.drop_table('login_throttle')
    with op.batch_alter_table('holder') as batch_op:
        batch_op.drop_column('session_version')
    with op.batch_alter_table('staff_user') as batch_op:
        batch_op.drop_column('session_version')
        batch_op.drop_column('totp_secret')
