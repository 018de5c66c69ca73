"""Alembic environment: migrations run against the project's models and settings.

Patterns shown:
- `target_metadata` is SQLModel's metadata, so `alembic revision --autogenerate`
  compares the database with models.py.
- The URL comes from `config.settings` (DATABASE_URL), never from alembic.ini; the app's
  start-up passes its own open connection in `config.attributes["connection"]`.
- `render_as_batch`: SQLite cannot ALTER most things, so changes are written as
  "copy the table" batches that work on SQLite and PostgreSQL alike (constraints are named
  by the metadata's naming convention, `fieldtypes.py` keeps AUTOINCREMENT on the copy, and
  an expression index, which SQLite cannot reflect, is created again at head).
- `sequential_revision_ids`: revisions are numbered 0001, 0002, ...
"""

import warnings
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex
from sqlmodel import SQLModel

import fieldtypes
import models  # noqa: F401 (registers the tables on SQLModel.metadata)
from config import settings
from database import create_db_engine, migration_transaction


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write UTCDateTime as the plain column type it is, so revisions never import models.py."""
    if type_ == "type" and isinstance(obj, fieldtypes.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def sequential_revision_ids(migration: MigrationContext, revision: Any, directives: list[Any]) -> None:
    """`alembic revision` numbers revisions 0001, 0002, ...: readable, in the order they run."""
    head = context.script.get_current_head()
    directives[0].rev_id = f"{int(head or 0) + 1:04d}"


# A batch copy on SQLite reflects its table and warns that it skips `lower(username)`:
# restore_expression_indexes below creates it again, so the warning would only alarm.
warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index")


def restore_expression_indexes(connection: Connection) -> None:
    """SQLite cannot reflect an expression index (`lower(username)`), so a batch copy of its
    table drops it without a word. At head, create again each one the models declare on a
    table the database has: no revision that rebuilds `user` needs to remember it."""
    if connection.dialect.name != "sqlite":
        return
    if set(context.get_context().get_current_heads()) != set(context.script.get_heads()):
        return  # a downgrade, or an upgrade short of head: the revisions' own schema
    tables = set(inspect(connection).get_table_names())
    for table in SQLModel.metadata.sorted_tables:
        for index in table.indexes:
            expression_index = not all(isinstance(expression, Column) for expression in index.expressions)
            if expression_index and table.name in tables:
                connection.execute(CreateIndex(index, if_not_exists=True))


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
        process_revision_directives=sequential_revision_ids,
    )
    with context.begin_transaction():
        context.run_migrations()
        restore_expression_indexes(connection)


if context.is_offline_mode():
    context.configure(url=settings.DATABASE_URL, target_metadata=SQLModel.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (app_connection := context.config.attributes.get("connection")) is not None:
    run_migrations(app_connection)
else:
    with create_db_engine(settings.DATABASE_URL).connect() as cli_connection, migration_transaction(cli_connection):
        run_migrations(cli_connection)
