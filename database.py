"""Database: the engine, the request's session, and table creation.

Patterns shown:
- One engine per app (`create_db_engine`), kept on `app.state` by `main.create_app`.
- A yield dependency (`get_session`) and its `Annotated` alias `SessionDep`.
- SQLite tuned for a web server on every new connection (WAL, foreign keys, busy
  timeout, durable commits), each pragma with its reason.
- Start-up that is safe when several workers run it at once.

Imports: config, models.
"""

import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, SQLModel, create_engine

import models  # noqa: F401  (registers every table on SQLModel.metadata)

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Readers never block the writer and the writer never blocks readers.
    cursor.execute("PRAGMA journal_mode=WAL")
    # Off by default in SQLite: without it ON DELETE CASCADE does nothing.
    cursor.execute("PRAGMA foreign_keys=ON")
    # A writer waits for the lock instead of failing with "database is locked".
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # FULL: a commit is on disk before the client hears 201, even across power loss.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_db_engine(database_url: str) -> Engine:
    """Build the engine for `database_url`: SQLite tuned as above, others pre-pinged."""
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url,
            # A session opened in one worker thread is used and closed in others.
            connect_args={"check_same_thread": False},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    # hide_parameters: a DEBUG log or an error message never shows a password hash.
    # pre_ping: a restarted database server costs a reconnect, not failed requests.
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True)


def create_db_and_tables(engine: Engine, attempts: int = 5) -> None:
    """Create missing tables; retried because workers starting together may race."""
    for attempt in range(1, attempts + 1):
        try:
            SQLModel.metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another worker created a table between our check and our CREATE.
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)


async def get_engine(request: Request) -> Engine:
    """The engine of the app serving this request (`async`: no I/O, no threadpool trip)."""
    return cast(Engine, request.app.state.engine)


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_session(engine: EngineDep) -> Iterator[Session]:
    """One session per request, closed when the response is ready.

    `expire_on_commit=False` keeps loaded objects readable after a commit, so returning
    them needs no extra SELECT and a commit can hand the connection back to the pool early.
    """
    with Session(engine, expire_on_commit=False) as session:
        yield session


# scope="function": close the session (and free its connection) as soon as the endpoint
# has returned and its response is built, not after the client has read it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
