"""security gaps: encrypt upload previews (batch_row.record, cells, changes, reason; import_batch.report_csv), TOTP last step

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 00:00:00

These columns quote whole ID numbers (the parsed record, the raw cells of a
rejected row, the stored and new values of a changed row, and reasons such as
"性别与证件号码「…」不符"). They become text holding one AES-256-GCM ciphertext
each, made with the running app's ID_NUMBER_KEY (app/id_numbers.py), so
`flask db upgrade` needs the key configured when batch_row is not empty.

audit_entry and certificate_version are not rewritten: audit before/after
values have held masked ID numbers since the table was created (migration
0004), and certificate_version keeps its ID number in an encrypted column of
its own. The audit table also refuses UPDATE through its triggers.

staff_user.totp_last_step records the time step of the last accepted TOTP
code, so the same code cannot log in twice (app/services/accounts.py).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# (table, column, was JSON, associated data); the associated data matches the model's column type.
COLUMNS = [
    ('batch_row', 'record', True, b'batch_row.record'),
    ('batch_row', 'cells', True, b'batch_row.cells'),
    ('batch_row', 'changes', True, b'batch_row.changes'),
    ('batch_row', 'reason', False, b'batch_row.reason'),
    ('import_batch', 'report_csv', False, b'import_batch.report_csv'),
]
CHUNK = 1000


def upgrade():
    with op.batch_alter_table('staff_user') as batch_op:
        batch_op.add_column(sa.Column('totp_last_step', sa.Integer(), nullable=True))
    with op.batch_alter_table('batch_row') as batch_op:
        for name in ('record', 'cells', 'changes'):
            batch_op.alter_column(name, existing_type=sa.JSON(), type_=sa.Text(), postgresql_using=f'{name}::text')
    for table_name in ('batch_row', 'import_batch'):
        _rewrite(table_name, encrypt=True)


def downgrade():
    for table_name in ('batch_row', 'import_batch'):
        _rewrite(table_name, encrypt=False)
    with op.batch_alter_table('batch_row') as batch_op:
        for name in ('record', 'cells', 'changes'):
            batch_op.alter_column(name, existing_type=sa.Text(), type_=sa.JSON(), postgresql_using=f'{name}::json')
    with op.batch_alter_table('staff_user') as batch_op:
        batch_op.drop_column('totp_last_step')


def _rewrite(table_name, *, encrypt):
    """Encrypt (or, for the downgrade, decrypt) the listed columns of `table_name`, CHUNK rows at a time.

    A value that already has the form asked for is left alone, so a run that
    stopped midway can be repeated.
    """
    from app.id_numbers import keyring

    columns = [(name, was_json, data) for table, name, was_json, data in COLUMNS if table == table_name]
    table = sa.table(table_name, sa.column('id', sa.Integer), *(sa.column(name, sa.Text) for name, _, _ in columns))
    statement = (
        table.update()
        .where(table.c.id == sa.bindparam('row_id'))
        .values({name: sa.bindparam(f'new_{name}') for name, _, _ in columns})
    )
    connection = op.get_bind()
    last_id = 0
    ring = None
    while True:
        rows = connection.execute(
            sa.select(table).where(table.c.id > last_id).order_by(table.c.id).limit(CHUNK)
        ).mappings().all()
        if not rows:
            return
        last_id = rows[-1]['id']
        ring = ring or keyring()
        updates = []
        for row in rows:
            values = {f'new_{name}': _convert(ring, row[name], was_json, data, encrypt) for name, was_json, data in columns}
            if any(values[f'new_{name}'] != row[name] for name, _, _ in columns):
                updates.append({'row_id': row['id'], **values})
        if updates:
            connection.execute(statement, updates)


def _convert(ring, value, was_json, associated_data, encrypt):
    if value is None or value == '':
        return value
    encrypted = value.startswith(('v1:', 'v2:'))
    if encrypt:
        if encrypted:
            return value
        if was_json and value == 'null':  # SQLAlchemy's JSON type stores None as JSON null
            return None
        return ring.encrypt(value, associated_data)
    return ring.decrypt(value, associated_data) if encrypted else value
