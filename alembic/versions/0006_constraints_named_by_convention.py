"""Every constraint named by models.py's naming convention, on databases made before it.

A database created before the convention carries the names its engine chose: PostgreSQL's
`item_pkey`, `item_owner_id_fkey`, `user_email_key`; on SQLite, none at all. A database
created since gets the convention's (`pk_item`, `fk_item_owner_id_user`, `uq_user_email`),
and revisions refer to constraints by those names. So this revision renames what differs:
PostgreSQL renames in place; SQLite rebuilds each table whose foreign key or unique
constraint has no name (a batch copy, rows kept, AUTOINCREMENT kept by fieldtypes.py). The names come
from the convention itself, which Alembic also applies to every table a revision creates.
On a database that already has the convention's names it changes nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("user", "item", "notification", "loginsession", "loginfailure")


def renames(inspector: sa.Inspector, table: str, convention: dict[str, str]) -> list[tuple[str | None, str]]:
    """(name now, the convention's name) of each constraint of `table` whose name differs."""
    found = []
    if primary_key := inspector.get_pk_constraint(table)["name"]:  # SQLite keeps none for AUTOINCREMENT
        found.append((primary_key, convention["pk"] % {"table_name": table}))
    for key in inspector.get_foreign_keys(table):
        names = {"table_name": table, "column_0_name": key["constrained_columns"][0]}
        found.append((key["name"], convention["fk"] % (names | {"referred_table_name": key["referred_table"]})))
    for unique in inspector.get_unique_constraints(table):
        found.append(
            (unique["name"], convention["uq"] % {"table_name": table, "column_0_name": unique["column_names"][0]})
        )
    return [(name, wanted) for name, wanted in found if name != wanted]


def upgrade() -> None:
    connection = op.get_bind()
    # The convention of models.py, which Alembic also applies to every op.create_table.
    convention = op.get_context().opts["target_metadata"].naming_convention
    inspector = sa.inspect(connection)
    for table in TABLES:
        table_renames = renames(inspector, table, convention)
        if connection.dialect.name == "sqlite":
            if table_renames:  # unnamed: the batch copy names them by the convention
                with op.batch_alter_table(table, recreate="always", naming_convention=convention):
                    pass
        else:
            for name, wanted in table_renames:
                op.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{name}" TO "{wanted}"')


def downgrade() -> None:
    # Nothing to undo: a database created at revision 0005 today has these names too.
    pass
