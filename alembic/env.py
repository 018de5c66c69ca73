"""Alembic environment: migrations run against the project's models and settings.

Patterns shown:
- `target_metadata` is SQLModel's metadata, so `alembic revision --autogenerate`
  compares the database with models.py.
- The URL comes from `config.settings` (DATABASE_URL), never from alembic.ini; the app's
  start-up passes its own open connection in `config.attributes["connection"]`.
- `render_as_batch`: SQLite cannot ALTER most things, so changes are written as
  "copy the table" batches that work on SQLite and PostgreSQL alike (constraints are named
  by the metadata's naming convention, and `fieldtypes.py` keeps AUTOINCREMENT on the copy).
- `sequential_revision_ids`: revisions are numbered 0001, 0002, ...
"""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
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
    head = ScriptDirectory.from_config(context.config).get_current_head()
    directives[0].rev_id = f"{int(head or 0) + 1:04d}"


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


if context.is_offline_mode():
    context.configure(url=settings.DATABASE_URL, target_metadata=SQLModel.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (app_connection := context.config.attributes.get("connection")) is not None:
    run_migrations(app_connection)
else:
    with create_db_engine(settings.DATABASE_URL).connect() as cli_connection, migration_transaction(cli_connection):
        run_migrations(cli_connection)
