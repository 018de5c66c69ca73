"""Test fixtures shared by every `test_*.py`: a fresh app and database per test.

Patterns shown:
- The environment cleaned before the project is imported (no `.env`, no exported setting),
  and an autouse fixture that strips settings again for each test: the suite passes the
  same on any machine, and writes nothing into the checkout.
- Each test gets a fresh database, opened by the production engine function (WAL and
  foreign keys really on): the test process's SQLite file, deleted first, or, when
  `TEST_DATABASE_URL` names a PostgreSQL server, that database emptied first.
- The app comes from `create_app(settings)` with test settings (`BCRYPT_ROUNDS=4` keeps
  the suite fast), built once per test process (`app`, session-scoped) and entered per
  test with `with TestClient(app)`, so start-up and shutdown run for every test. A test
  that needs other settings builds its own app with `make_settings(...)`.
- `undocumented_status_fails_the_test`: every response a TestClient sees is checked against its
  operation's documented status codes (autouse).
- `bcrypt_checks`: the bcrypt checks a request spent, counted where bcrypt is called.
- Small helpers (`signup`, `login`) return what tests need next; they take any client,
  a `TestClient` or an `httpx2.Client` on a live server (`base_url` its root).
  `engine_of`, `security_stamp`, `newest_session_id` and `count_notifications` look behind
  the API, into the database of a test client's app.
- `json_body_fields`: every field of every JSON request body, from the OpenAPI schema, for
  tests that must cover each one (strict types, NUL bytes).
- `run_at_once`: calls released together by a barrier, for races (workers starting).
- `paused_before`: a request held just before one SQL statement while the test runs what
  races it, so a race is played the same way every time, not left to luck and sleeps.
- `settings_environ`: the test settings as environment variables, for `make_settings`
  and for live servers.

Imports: config, models, database, main.
"""

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import httpx2
import pytest
from dotenv import dotenv_values
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlmodel import Session, col, func, select

TEST_SECRET_KEY = "test-secret-key-long-enough-for-hs512-which-wants-64-bytes-of-key"

# Importing `config` reads the environment and `.env`, and `import main` builds an app on
# them: so first, neither a developer's `.env` (ENVIRONMENT=production, say) nor a setting
# they exported may reach the tests, and no development key is written into the checkout.
os.environ["PYTHON_DOTENV_DISABLED"] = "1"  # python-dotenv's own switch
for setting in dotenv_values(Path(__file__).with_name(".env.example")):  # lists every setting
    os.environ.pop(setting, None)
os.environ["SECRET_KEY"] = TEST_SECRET_KEY

import main  # noqa: E402
from config import Settings, load_settings  # noqa: E402 (after the environment is cleaned)
from database import create_db_engine  # noqa: E402
from main import create_app  # noqa: E402
from models import LoginSession, Notification, User  # noqa: E402

DEFAULT_PASSWORD = "correct horse battery"
SUPERUSER_EMAIL = "root@example.com"
SUPERUSER_PASSWORD = "superuser password"

# Chosen by CI to run the whole suite again on PostgreSQL; read before the autouse
# fixture below removes it from the environment.
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
MakeSettings = Callable[..., Settings]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every setting from the environment: tests state what they need."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)


def postgres_database_url() -> str:
    """TEST_DATABASE_URL, or under pytest-xdist a database of this worker's own beside it
    (created once), so that workers running tests at the same time never share one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return TEST_DATABASE_URL
    url = make_url(TEST_DATABASE_URL)
    name = f"{url.database}_{worker}"
    server = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        if connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first() is None:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    server.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


# Building an app's OpenAPI schema takes ~90 ms, and many tests build an app of their own (other
# settings, a throwaway route): the schema's paths are kept per prefix and route count.
_documented_paths: dict[tuple[str, int], dict[str, Any]] = {}


def documented_status_codes(app: Any, method: str, path: str) -> set[str] | None:
    """The status codes the operation `method path` documents in `app`'s OpenAPI schema, or
    None when no operation is there (an unknown path, the docs pages)."""
    key = (app.openapi_url, len(app.routes))
    if key not in _documented_paths:
        _documented_paths[key] = app.openapi()["paths"]
    paths = _documented_paths[key]
    templates = [
        template
        for template, operations in paths.items()
        if method.lower() in operations and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path)
    ]
    if not templates:
        return None
    template = min(templates, key=lambda template: template.count("{"))  # /users/me before /users/{user_id}
    return set(paths[template][method.lower()]["responses"])


@pytest.fixture(autouse=True)
def undocumented_status_fails_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every response a `TestClient` gets from an operation must carry a status code that the
    operation documents (SPEC 4), so a route that forgets `errors(...)` fails the suite here,
    not in CI's contract run. 500 aside: an unhandled error is never documented."""
    send = TestClient.send

    def checked_send(self: TestClient, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        response = send(self, request, **kwargs)
        if response.status_code != 500 and hasattr(self.app, "openapi"):
            documented = documented_status_codes(self.app, request.method, request.url.path)
            assert documented is None or str(response.status_code) in documented, (
                f"{request.method} {request.url.path} answered {response.status_code},"
                f" which its OpenAPI schema does not document ({', '.join(sorted(documented))})"
            )
        return response

    monkeypatch.setattr(TestClient, "send", checked_send)


def worker_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database every test of this pytest process uses in turn: one SQLite file in the
    run's temporary folder (each xdist worker has its own), or the PostgreSQL database."""
    if TEST_DATABASE_URL:
        return postgres_database_url()
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'test.db'}"


@pytest.fixture(name="database_url")
def database_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database for this test (the worker's one, emptied first)."""
    database_url = worker_database_url(tmp_path_factory)
    if database_url.startswith("sqlite"):
        path = Path(make_url(database_url).database or "")
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        return database_url
    engine = create_db_engine(database_url)
    with engine.begin() as connection:  # tables, Alembic's version table, indexes: all of it
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return database_url


@pytest.fixture(name="migrated_sqlite_template", scope="session")
def migrated_sqlite_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file as an app on the test settings leaves it at start-up (migrated, with its
    first superuser), made once per run: `client` copies it instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    with TestClient(create_app(load_settings(settings_environ(f"sqlite:///{path}")))):
        pass  # the lifespan migrates and creates the first superuser; leaving it closes the file
    return path


def settings_environ(database_url: str, **overrides: str) -> dict[str, str]:
    """The test settings as environment variables, for `load_settings` or a live server's
    environment; keyword arguments override single variables."""
    environ = {
        "SECRET_KEY": TEST_SECRET_KEY,
        "BCRYPT_ROUNDS": "4",
        "DATABASE_URL": database_url,
        "FIRST_SUPERUSER_EMAIL": SUPERUSER_EMAIL,
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER_PASSWORD,
    }
    return environ | overrides


@pytest.fixture(name="make_settings")
def make_settings_fixture(database_url: str) -> MakeSettings:
    """Build test settings; keyword arguments override single variables."""

    def make_settings(**overrides: str) -> Settings:
        return load_settings(settings_environ(database_url, **overrides))

    return make_settings


@pytest.fixture(name="settings")
def settings_fixture(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture(name="app", scope="session")
def app_fixture(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """One app on the test settings for the whole run, on the worker's database: building an
    app costs ~40 ms (most of it FastAPI preparing every route at the first request), and
    FastAPI's caches keep each app built alive. Every test still gets a fresh database and
    its own start-up and shutdown (`client`)."""
    return create_app(load_settings(settings_environ(worker_database_url(tmp_path_factory))))


@pytest.fixture(name="client")
def client_fixture(app: FastAPI, database_url: str, migrated_sqlite_template: Path) -> Iterator[TestClient]:
    """A client of the test app on a fresh database, lifespan included. On SQLite the database
    starts as a copy of the migrated template (two thirds of a test's time went into migrating
    a new file); start-up then finds it at the latest revision."""
    if database_url.startswith("sqlite"):
        shutil.copyfile(migrated_sqlite_template, make_url(database_url).database or "")
    with TestClient(app) as client:
        yield client


def json_body_fields() -> list[tuple[str, str, dict[str, Any], str, set[str]]]:
    """(method, path under the prefix, body, field, its JSON types) for every field of every
    JSON request body, read from the OpenAPI schema of `main.app`: a test that goes through
    every field stays complete when one is added. `body` holds the operation's required
    fields, each with its documented example."""
    schema = main.app.openapi()  # the module-level app of `uvicorn main:app`, never started here
    fields = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            model = schema["components"]["schemas"][content["application/json"]["schema"]["$ref"].split("/")[-1]]
            properties = model["properties"]
            body = {name: properties[name].get("examples", ["x"])[0] for name in model.get("required", [])}
            for name, field in properties.items():
                types = {option.get("type") for option in field.get("anyOf", [field])} - {"null", None}
                fields.append((method.upper(), path.removeprefix("/api/v1"), body, name, types))
    return fields


def engine_of(client: TestClient) -> Engine:
    """The engine of the app `client` talks to: its database, for a look behind the API."""
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def security_stamp(client: TestClient, user_id: int, name: str = "security_stamp") -> str:
    """The user's current `security_stamp` (or `recovery_stamp`): what a valid token of theirs carries."""
    with Session(engine_of(client)) as session:
        user = session.get(User, user_id)
        assert user is not None
        stamp: str = getattr(user, name)
        return stamp


def count_notifications(client: TestClient, kind: str | None = None) -> int:
    """Notifications in the database (of `kind`, or all), whoever owns them."""
    query = select(func.count()).select_from(Notification)
    if kind is not None:
        query = query.where(col(Notification.kind) == kind)
    with Session(engine_of(client)) as session:
        count: int = session.exec(query).one()
        return count


def newest_session_id(client: TestClient, user_id: int) -> int:
    """The id of the user's newest session (their last login): what their tokens name."""
    with Session(engine_of(client)) as session:
        newest = session.exec(
            select(LoginSession.id).where(LoginSession.user_id == user_id).order_by(col(LoginSession.id).desc())
        ).first()
    assert newest is not None, "the user has no session: log in first"
    return newest


def signup(client: httpx2.Client, username: str = "ada", **fields: Any) -> dict[str, Any]:
    """Sign `username` up (email `<username>@example.com`) and return the user's JSON."""
    body = {"email": f"{username}@example.com", "username": username, "password": DEFAULT_PASSWORD} | fields
    response = client.post("/api/v1/users/", json=body)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def login(client: httpx2.Client, username: str, password: str = DEFAULT_PASSWORD) -> dict[str, str]:
    """Log in and return the `Authorization` header to send."""
    response = client.post("/api/v1/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def promote(client: TestClient, superuser_headers: dict[str, str], username: str) -> tuple[int, dict[str, str]]:
    """Sign `username` up as a second superuser; their id and headers."""
    user = signup(client, username)
    response = client.patch(f"/api/v1/users/{user['id']}", headers=superuser_headers, json={"is_superuser": True})
    assert response.status_code == 200, response.text
    return user["id"], login(client, username)


@pytest.fixture(name="user_headers")
def user_headers_fixture(client: TestClient) -> dict[str, str]:
    """Headers of a freshly signed-up ordinary user, `ada`."""
    signup(client, "ada")
    return login(client, "ada")


@pytest.fixture(name="superuser_headers")
def superuser_headers_fixture(client: TestClient) -> dict[str, str]:
    """Headers of the first superuser, created at start-up from the settings."""
    return login(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)


@pytest.fixture(name="bcrypt_checks")
def bcrypt_checks_fixture(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The cost prefix (`b"$2b$04$"`) of every bcrypt check from here on, in order."""
    checks: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed_password: bytes) -> bool:
        checks.append(hashed_password[:7])
        return checkpw(password, hashed_password)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    return checks


Result = TypeVar("Result")


def run_at_once(calls: list[Callable[[], Result]]) -> list[Result]:
    """Run each call in its own thread, all released at the same moment; their results in order.

    The first exception any call raised is raised here, with its traceback.
    """
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Result]) -> Result:
        barrier.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


class Pause:
    """A request held before a statement: `reached` is set once it is there; `release` lets it go."""

    def __init__(self) -> None:
        self.reached, self.release = threading.Event(), threading.Event()


@contextmanager
def paused_before(engine: Engine, pattern: str) -> Iterator[Pause]:
    """Hold the first SQL statement of `engine` that matches the regex `pattern` until
    `release` (at the latest when the block ends): the request running it is paused right
    there, and the block does what should race it. Release, and wait for the paused request,
    before leaving the block: the hook is removed then.

    The hook runs before the driver sends the statement: on SQLite (where the driver begins a
    transaction only at the first write) a request paused before its first write holds no lock.
    """
    pause, lock = Pause(), threading.Lock()

    def hold(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        with lock:
            first = not pause.reached.is_set() and re.search(pattern, statement) is not None
            if first:
                pause.reached.set()
        if first:
            pause.release.wait(timeout=10)

    event.listen(engine, "before_cursor_execute", hold)
    try:
        yield pause
    finally:
        pause.release.set()
        event.remove(engine, "before_cursor_execute", hold)
