"""Ids never reused on SQLite (AUTOINCREMENT); tokens bound to the account (security_stamp).

SQLite can only add AUTOINCREMENT by rebuilding a table: batch mode copies each table
into a new one, rows and ids kept (start-up runs this with foreign keys off, see
`database.migration_transaction`). PostgreSQL's sequences never reuse an id: there, only
the column changes. Each existing user gets a random stamp, which ends every token issued
before the upgrade: everyone logs in again once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def batch_rebuild(table: str, *, autoincrement: bool) -> Any:
    """A batch for `table` that, on SQLite, copies it into one with (or without) AUTOINCREMENT."""
    if op.get_bind().dialect.name != 'sqlite':
        return op.batch_alter_table(table)
    return op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement})


def rebuild(*, autoincrement: bool, change_user: Callable[[Any], None]) -> None:
    """Rebuild the three tables on SQLite, applying `change_user` to the user table's batch."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:  # batch mode cannot reflect an expression index: drop it, create it again after
        op.drop_index('ix_user_username_lower', table_name='user')
    with batch_rebuild('user', autoincrement=autoincrement) as batch_op:
        change_user(batch_op)
    if sqlite:
        for table in ('item', 'notification'):
            with batch_rebuild(table, autoincrement=autoincrement):
                pass
        op.create_index('ix_user_username_lower', 'user', [sa.text('lower(username)')], unique=True)


def upgrade() -> None:
    op.add_column('user', sa.Column('security_stamp', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
    user = sa.table('user', sa.column('id', sa.BigInteger()), sa.column('security_stamp', sa.String()))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(user.c.id)).all():
        connection.execute(user.update().where(user.c.id == user_id).values(security_stamp=secrets.token_hex(16)))

    def change_user(batch_op: Any) -> None:
        batch_op.alter_column(
            'security_stamp', existing_type=sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False
        )
        batch_op.drop_column('token_version')

    rebuild(autoincrement=True, change_user=change_user)


def downgrade() -> None:
    op.add_column('user', sa.Column('token_version', sa.Integer(), nullable=False, server_default='0'))

    def change_user(batch_op: Any) -> None:
        batch_op.alter_column('token_version', existing_type=sa.Integer(), server_default=None)
        batch_op.drop_column('security_stamp')

    rebuild(autoincrement=False, change_user=change_user)
