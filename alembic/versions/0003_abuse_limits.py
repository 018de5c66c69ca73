"""Abuse limits: failed logins, and the kind of each notification for the hourly caps.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('loginfailure',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('login_key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('loginfailure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loginfailure_failed_at'), ['failed_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_loginfailure_login_key'), ['login_key'], unique=False)

    # Existing rows are all messages as far as the caps go: a server default fills them in.
    op.add_column('notification', sa.Column(
        'kind', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='message', nullable=False
    ))


def downgrade() -> None:
    # On SQLite this copies the table: keep its AUTOINCREMENT (revision 0002), which
    # reflection does not see, and skip reflecting the user table it refers to (whose
    # lower(username) index reflection cannot read).
    with op.batch_alter_table(
        'notification', table_kwargs={'sqlite_autoincrement': True}, reflect_kwargs={'resolve_fks': False}
    ) as batch_op:
        batch_op.drop_column('kind')

    with op.batch_alter_table('loginfailure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loginfailure_login_key'))
        batch_op.drop_index(batch_op.f('ix_loginfailure_failed_at'))

    op.drop_table('loginfailure')
