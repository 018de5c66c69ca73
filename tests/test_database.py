"""Tests of what depends on the database engine: SQLite's pragmas, PostgreSQL's pre-ping,
and input that one database stores and the other refuses (a NUL byte).

Every test runs on conftest's `database_url`; the engine-specific ones skip on the other.
"""

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import select

from conftest import SUPERUSER_EMAIL, SUPERUSER_PASSWORD, engine_of, json_body_fields, run_at_once
from database import SQLITE_BUSY_TIMEOUT_MS, create_db_engine, get_session
from models import User

API = "/api/v1"
NUL = "nul\x00byte"
PASSWORD_WITH_NUL = "long enough \x00 password"


def test_sqlite_connections_use_wal_foreign_keys_busy_timeout_and_full_sync(database_url: str) -> None:
    """Every pooled SQLite connection gets the pragmas that make concurrent requests safe."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                pragmas = {
                    name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                }
                assert pragmas == {
                    "journal_mode": "wal",
                    "foreign_keys": 1,
                    "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
                    "synchronous": 2,  # FULL
                }
    finally:
        engine.dispose()


def test_connections_opening_a_new_sqlite_file_at_once_all_switch_it_to_wal(tmp_path: Path) -> None:
    """Workers starting on a fresh file race to switch it to WAL; none gets "database is locked"."""
    for attempt in range(20):
        engines = [create_db_engine(f"sqlite:///{tmp_path}/fresh-{attempt}.db") for _ in range(4)]
        try:
            modes = run_at_once([partial(journal_mode, engine) for engine in engines])
        finally:
            for engine in engines:
                engine.dispose()
        assert modes == ["wal"] * len(engines)


def journal_mode(engine: Engine) -> Any:
    with engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA journal_mode").scalar()


def test_postgresql_pooled_connection_killed_by_the_server_is_replaced(database_url: str) -> None:
    """pool_pre_ping: a connection the server dropped (a restart) costs a reconnect, not an error."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    engine, other = create_db_engine(database_url), create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        # The connection waits in the pool: end its server process from outside the pool.
        with other.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
        other.dispose()


# Fields a route only compares, never stores: a NUL there is a wrong value (tests below).
COMPARED_ONLY = {"current_password", "refresh_token", "token"}


# (method, path, body, field): every stored string field of every JSON body, from the schema.
TEXT_FIELDS = [
    (method, path, body, field)
    for method, path, body, field, types in json_body_fields()
    if "string" in types and field not in COMPARED_ONLY
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"), TEXT_FIELDS, ids=[f"{m} {p} {f}" for m, p, _, f in TEXT_FIELDS]
)
def test_nul_byte_in_any_stored_text_field_gets_422(
    client: TestClient,
    superuser_headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    """PostgreSQL refuses NUL in text: it is a 422 on every database, never a 500 at commit."""
    item = client.post(f"{API}/items/", headers=superuser_headers, json={"title": "mine"}).json()
    me = client.get(f"{API}/users/me", headers=superuser_headers).json()
    value = PASSWORD_WITH_NUL if "password" in field else NUL
    url = API + path.format(item_id=item["id"], user_id=me["id"])
    response = client.request(method, url, headers=superuser_headers, json=body | {field: value})
    assert response.status_code == 422, response.text
    assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]]


@pytest.mark.parametrize("field", ["username", "password"])
def test_nul_byte_in_login_form_gets_401(client: TestClient, field: str) -> None:
    """Login fields are only compared, never stored: a NUL is a wrong credential."""
    form = {"username": SUPERUSER_EMAIL, "password": SUPERUSER_PASSWORD} | {field: NUL}
    response = client.post(f"{API}/auth/login", data=form)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Incorrect username or password"}


def test_nul_byte_in_current_password_gets_400(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """The current password is only compared: a NUL makes it a wrong one."""
    body = {"current_password": PASSWORD_WITH_NUL, "new_password": "a new long passphrase"}
    response = client.patch(f"{API}/users/me/password", headers=superuser_headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Incorrect password"}


def test_nul_byte_in_reset_token_gets_400(client: TestClient) -> None:
    """A token is only decoded, never looked up: a NUL makes it an invalid one."""
    body = {"token": NUL, "new_password": "a new long passphrase"}
    response = client.post(f"{API}/auth/reset-password", json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Invalid or expired token"}


def test_request_session_writes_nothing_before_a_query(client: TestClient) -> None:
    """`autoflush=False`: a change pending in the request's session stays out of the database
    until commit or an explicit flush, so a check written after the change reads the database
    as it is (the issue-20 trap: "update, then check for a duplicate" failed inside the check)."""
    sessions = get_session(engine_of(client))
    session = next(sessions)
    superuser = session.get(User, 1)
    assert superuser is not None
    superuser.username = "renamed"
    assert session.exec(select(User).where(User.username == "renamed")).first() is None
    next(sessions, None)  # the dependency runs to its end: the session closes
