"""Database: the engine, the request's session, and table creation.

Tier: lesson path, read third.

Patterns shown:
- One engine per app (`create_db_engine`), kept on `app.state` by `main.create_app`.
- A yield dependency (`get_session`) and its `Annotated` alias `SessionDep`, with fewer
  sessions at once than the pool has connections (`max_concurrency`).
- SQLite tuned for a web server on every new connection (WAL, foreign keys, busy
  timeout, durable commits), each pragma with its reason.
- Alembic migrations applied at start-up, safe when several workers start at once.

Imports: races; config (through alembic/env.py, which also imports models).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, cast

from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlmodel import Session, create_engine

import races

SQLITE_BUSY_TIMEOUT_MS = 5000
ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
INITIAL_REVISION = "0001"
MIGRATION_LOCK_KEY = 7_310_442  # any constant: the PostgreSQL advisory lock of our migrations
# At most this many request sessions at once per process (`SessionDep`), fewer than the
# pool's connections. Without it, 128 concurrent clients stalled: requests holding a pooled
# connection waited for a worker thread while every thread waited for a connection (a 30 s
# pool_timeout, then 500s). Waiting for a slot takes no thread; the pool's overflow
# connections serve background tasks.
MAX_REQUEST_SESSIONS = 10


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A writer waits for the lock instead of failing with "database is locked".
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    races.switch_to_wal(cursor, SQLITE_BUSY_TIMEOUT_MS)  # retried: workers on a new file race for it
    # Off by default in SQLite: without it ON DELETE CASCADE does nothing.
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk before the client hears 201, even across power loss.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_db_engine(database_url: str) -> Engine:
    """Build the engine for `database_url`: SQLite tuned as above, others pre-pinged.

    The pool keeps one connection open for each request session allowed at once
    (MAX_REQUEST_SESSIONS), plus SQLAlchemy's 10 overflow connections for background tasks.
    `hide_parameters`: no log or error message ever shows a password hash.
    """
    # SQLAlchemy keeps 5 by default, and the other 5 sessions opened and closed a connection per
    # request: bench/ A/B on SQLite, two runs: GET /users/me 1.30x and 1.10x, GET /items/ 1.21x and
    # 1.04x, POST /items/ 1.14x and 1.26x (on PostgreSQL within noise: 1.00x, 0.96x, 0.97x).
    pool_size = MAX_REQUEST_SESSIONS
    if database_url.startswith("sqlite"):
        # check_same_thread: a session opened in one worker thread is used in others.
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False}, hide_parameters=True, pool_size=pool_size
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    # pre_ping: a restarted database server costs a reconnect, not failed requests.
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True, pool_size=pool_size)


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
    """The engine of the app serving this request, for background tasks (`async`: it only
    reads memory; the async rule is in `config.get_settings`)."""
    return cast(Engine, request.app.state.engine)


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_session(engine: EngineDep) -> Iterator[Session]:
    """One session per request, FastAPI's documented form.

    `expire_on_commit=False`: what an endpoint returns after its commit is serialized as it
    stands, without reloading it (the tutorial's `session.refresh`); bench/, A/B in one run:
    POST /items/ 1.19x.

    `autoflush=False`: a query never writes the changes pending in the session first, so
    "change the row, then check for a duplicate" reads the database as it is instead of
    failing inside the check on the unique index. Changes reach the database at `commit()`,
    or at an explicit `flush()` where the code needs an id or a count first.

    The `except` is FastAPI's "dependencies with yield and except": a write the database
    refuses because another request came first (a duplicate, a row deleted meanwhile)
    becomes a 400, 404 or 401 here, for every route (see races.py).
    """
    with Session(engine, expire_on_commit=False, autoflush=False) as session:
        try:
            yield session
        except races.WRITE_REFUSED_ERRORS as error:
            raise races.answer_write_refused(session, error) from None


# scope="function": the session (and its connection) goes as soon as the endpoint returns,
# not after the client has read the response.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_REQUEST_SESSIONS)]
