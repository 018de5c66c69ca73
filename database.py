"""Database: the engine, the request's session, and table creation.

Patterns shown:
- One engine per app (`create_db_engine`), kept on `app.state` by `main.create_app`.
- A yield dependency (`get_session`) and its `Annotated` alias `SessionDep`, with fewer
  sessions at once than the pool has connections (`max_concurrency`).
- SQLite tuned for a web server on every new connection (WAL, foreign keys, busy
  timeout, durable commits), each pragma with its reason.
- Alembic migrations applied at start-up, safe when several workers start at once.

Imports: config (through alembic/env.py, which also imports models).
"""

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, cast

from alembic import command
from alembic.config import Config
from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlmodel import Session, create_engine

SQLITE_BUSY_TIMEOUT_MS = 5000
ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
INITIAL_REVISION = "0001"
MIGRATION_LOCK_KEY = 7_310_442  # any constant: the PostgreSQL advisory lock of our migrations


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """Readers never block the writer and the writer never blocks readers.

    WAL is kept in the file, so only the first connection to a new database switches it.
    That switch needs an exclusive lock, and when two connections switch at once (workers
    starting on a fresh file) SQLite tells one "database is locked" at once, without
    waiting for the busy timeout: it waits a little and tries again.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A writer waits for the lock instead of failing with "database is locked".
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    # Off by default in SQLite: without it ON DELETE CASCADE does nothing.
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk before the client hears 201, even across power loss.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_db_engine(database_url: str) -> Engine:
    """Build the engine for `database_url`: SQLite tuned as above, others pre-pinged.

    SQLAlchemy's default pool: up to 15 connections (5 kept, 10 overflow). `hide_parameters`:
    no log or error message ever shows a password hash.
    """
    if database_url.startswith("sqlite"):
        # check_same_thread: a session opened in one worker thread is used in others.
        engine = create_engine(database_url, connect_args={"check_same_thread": False}, hide_parameters=True)
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    # pre_ping: a restarted database server costs a reconnect, not failed requests.
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True)


@contextmanager
def migration_transaction(connection: Connection) -> Iterator[None]:
    """One transaction for a whole migration run, which workers starting together take in
    turns: `BEGIN IMMEDIATE` on SQLite (its DDL is transactional), an advisory lock on
    PostgreSQL. Used by start-up and by the `alembic` command (alembic/env.py).

    SQLite: a revision that rebuilds a table (Alembic's batch mode) drops the old one, and
    with foreign keys on, that drop first deletes every row that refers to it (ON DELETE
    CASCADE). So, as SQLite's own procedure for schema changes says, keys are off for the
    run (the pragma does nothing inside a transaction, hence first) and checked at the end.
    """
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    try:
        yield
        if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
            raise RuntimeError("The migration left rows whose foreign keys point nowhere; nothing was changed")
        connection.commit()
    finally:
        connection.rollback()  # a no-op after the commit
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def migrate_database(engine: Engine) -> None:
    """Bring the database to the latest Alembic revision; start-up calls this.

    A database created by `create_all` before this project had migrations is stamped with
    the initial revision, data kept.
    """
    alembic_config = Config(str(ALEMBIC_INI))
    with engine.connect() as connection, migration_transaction(connection):
        alembic_config.attributes["connection"] = connection
        tables = inspect(connection).get_table_names()
        if "user" in tables and "alembic_version" not in tables:
            command.stamp(alembic_config, INITIAL_REVISION)
        command.upgrade(alembic_config, "head")


async def get_engine(request: Request) -> Engine:
    """The engine of the app serving this request (`async`: no I/O, no threadpool trip)."""
    return cast(Engine, request.app.state.engine)


EngineDep = Annotated[Engine, Depends(get_engine)]


async def get_session(engine: EngineDep) -> AsyncIterator[Session]:
    """One session per request, closed when the response is ready.

    `async`, yet it never blocks the event loop: creating a session does no I/O (it
    connects at its first query), and closing one that still holds a connection (a
    rollback, I/O) happens in a worker thread. As a `def` generator it would cost two
    threadpool trips per request, a third of the trips of `GET /users/me`.

    `expire_on_commit=False` keeps loaded objects readable after a commit, so returning
    them needs no extra SELECT and a commit can hand the connection back to the pool early.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():
            # Its own limiter, as FastAPI does for `def` dependencies' exits: a close that
            # queued for a busy thread while those threads wait for its connection would
            # deadlock.
            await to_thread.run_sync(session.close, limiter=CapacityLimiter(1))
        else:
            session.close()


# At most this many request sessions at once per process, fewer than the pool's 15
# connections. A `def` endpoint's response is validated on one more worker-thread trip,
# and a session that has read still holds its connection then: unlimited, enough requests
# hold every connection while waiting for threads that all wait for a connection (a 30 s
# pool_timeout stall, then 500s). Waiting for a slot takes no thread; the spare
# connections serve background tasks.
MAX_REQUEST_SESSIONS = 10

# scope="function": close the session (and free its connection) as soon as the endpoint
# has returned and its response is built, not after the client has read it.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_REQUEST_SESSIONS)]
