"""Operations and hardening: request ids, logs, errors, body limits, CORS, health, start-up.

Patterns shown:
- Log lines captured with `caplog` and checked field by field, at INFO and DEBUG.
- A route that raises, added to an app from `create_app`, served by
  `TestClient(app, raise_server_exceptions=False)` to see the 500 a client sees.
- Pure ASGI calls with a hand-made `receive`, to prove a body is not read whole.
- Start-up run for real in a subprocess (`python -c "import main"`, `uvicorn main:app`)
  from a copy of the app in `tmp_path`, so no `.secret_key` or `app.db` lands in the
  repository; servers (live_server.py) are awaited with a bounded loop and always stopped.

Imports: config, database, main, middleware, conftest, live_server.
"""

import asyncio
import json
import logging
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
from dotenv import dotenv_values
from fastapi.middleware.cors import CORSMiddleware
from fastapi.testclient import TestClient
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import Message

from config import Settings, SettingsError, load_settings, read_or_create_dev_secret_key
from conftest import DEFAULT_PASSWORD, TEST_SECRET_KEY, MakeSettings, login, run_at_once, signup
from database import create_db_engine
from live_server import child_environ, copy_app, free_port, running_server
from main import create_app
from middleware import MAX_BODY_BYTES, BodySizeLimitMiddleware, RequestLogMiddleware

REPOSITORY = Path(__file__).parent.parent
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
LISTED_ORIGIN = "https://app.example.com"
SECRET_KEY_WARNING = "SECRET_KEY is not set"
PROCESS_SECONDS = 30


# --- Fixtures and helpers --------------------------------------------------------------


def import_module(module: str, app_dir: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -c "import <module>"` in `app_dir` with only `environ` set: what start-up prints."""
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=app_dir,
        env=child_environ(**environ),
        capture_output=True,
        text=True,
        timeout=PROCESS_SECONDS,
    )


@pytest.fixture(name="app_dir")
def app_dir_fixture(tmp_path: Path) -> Path:
    """A copy of the application (modules and migrations), to run as a fresh checkout would."""
    return copy_app(tmp_path / "app")


@pytest.fixture(name="cors_client")
def cors_client_fixture(make_settings: MakeSettings) -> Iterator[TestClient]:
    """A client of an app that allows only LISTED_ORIGIN."""
    with TestClient(create_app(make_settings(BACKEND_CORS_ORIGINS=f"{LISTED_ORIGIN}/"))) as client:
        yield client


def preflight(client: TestClient, origin: str) -> httpx2.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    return client.options("/api/v1/items/", headers=headers)


def sign_up_and_log_in(url: str) -> dict[str, str]:
    """Sign `ada` up on a live server and return her `Authorization` header."""
    with httpx2.Client(base_url=url, timeout=10) as http:
        signup(http, "ada")
        return login(http, "ada")


def request_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    """The INFO records that mention `request_id`."""
    return [r for r in caplog.records if r.levelno == logging.INFO and f"request_id={request_id}" in r.getMessage()]


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
    }


# --- Request ids ----------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["a", "req-42", "A.b_c-9", "x" * 128])
def test_request_id_sane_incoming_one_is_echoed(client: TestClient, request_id: str) -> None:
    """A request id of 1-128 letters, digits, '.', '_' or '-' comes back as sent."""
    response = client.get("/health", headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "request_id",
    [b"", b"x" * 129, b"two words", b"a/b", b"<script>", b"id;drop", "café".encode()],
    ids=["empty", "129-chars", "space", "slash", "markup", "semicolon", "non-ascii"],
)
def test_request_id_anything_else_is_replaced(client: TestClient, request_id: bytes) -> None:
    """Any other incoming id is replaced by a fresh, sane one."""
    response = client.get("/health", headers={b"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"].encode() != request_id
    assert REQUEST_ID.fullmatch(response.headers["X-Request-ID"])


def test_request_id_generated_ones_differ(client: TestClient) -> None:
    """Without an incoming id each request gets its own."""
    first, second = client.get("/health"), client.get("/health")
    assert REQUEST_ID.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/nowhere", None, 404),
        ("GET", "/api/v1/users/me", None, 401),
        ("POST", "/api/v1/users/", b"{}", 422),
        ("POST", "/api/v1/users/", b"x" * (MAX_BODY_BYTES + 1), 413),
    ],
)
def test_request_id_on_every_response(
    client: TestClient, method: str, path: str, content: bytes | None, status: int
) -> None:
    """Errors carry the request id too, including those answered by middleware."""
    response = client.request(method, path, content=content, headers={"X-Request-ID": "trace-1"})
    assert response.status_code == status, response.text
    assert response.headers["X-Request-ID"] == "trace-1"


# --- Request log ----------------------------------------------------------------------


def test_request_log_is_one_info_line_with_method_path_status_duration_and_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request logs exactly one INFO line: method, path, status, duration in ms, id."""
    client.get("/health", headers={"X-Request-ID": "log-1"})
    client.get("/api/v1/users/me", headers={"X-Request-ID": "log-2"})
    [health] = request_lines(caplog, "log-1")
    [me] = request_lines(caplog, "log-2")
    assert re.fullmatch(r"GET /health 200 \d+\.\dms request_id=log-1", health.getMessage())
    assert re.fullmatch(r"GET /api/v1/users/me 401 \d+\.\dms request_id=log-2", me.getMessage())


def test_request_log_uses_the_generated_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """The id logged is the one the client got back."""
    response = client.post("/api/v1/users/", json={}, headers={"X-Request-ID": "bad id"})
    request_id = response.headers["X-Request-ID"]
    [line] = request_lines(caplog, request_id)
    assert re.fullmatch(rf"POST /api/v1/users/ 422 \d+\.\dms request_id={request_id}", line.getMessage())


def test_request_log_escapes_control_characters_in_the_path(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A decoded %0A or an ANSI escape in the path cannot start a forged line or color a
    terminal: the logged path shows them escaped."""
    client.get("/x%0A2026-12-04 INFO main: FAKE%1B[31m%E2%80%A8", headers={"X-Request-ID": "forge-1"})
    [line] = request_lines(caplog, "forge-1")
    assert line.getMessage().startswith("GET /x\\n2026-12-04 INFO main: FAKE\\x1b[31m\\u2028 404 ")
    assert "\n" not in line.getMessage() and "\x1b" not in line.getMessage()


def test_422_echoes_at_most_100_characters_of_any_input(client: TestClient, user_headers: dict[str, str]) -> None:
    """A long string is cut to 100 characters; a large list becomes a short preview."""
    long_title = client.post("/api/v1/items/", headers=user_headers, json={"title": "x" * 5000})
    assert long_title.status_code == 422, long_title.text
    assert long_title.json()["detail"][0]["input"] == "x" * 100
    big_list = client.post("/api/v1/items/", headers=user_headers, json=list(range(10_000)))  # under 64 KiB
    assert big_list.status_code == 422, big_list.text
    [error] = big_list.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["input"].startswith("[0, 1, 2,") and len(error["input"]) <= 100


def test_422_echoes_at_most_100_characters_of_an_invalid_email_in_any_field(client: TestClient) -> None:
    """email-validator names the unsafe characters it found: the message and context are
    clipped like the input, so no field of the error repeats more than 100 characters."""
    email = "a" + "".join(chr(code) for code in range(0x2000, 0x2400)) + "@example.com"
    response = client.post("/api/v1/auth/password-recovery", json={"email": email})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert len(error["input"]) <= 100 and len(error["msg"]) <= 100
    assert all(len(value) <= 100 for value in error["ctx"].values())


def test_422_for_nan_or_infinity_is_valid_json(client: TestClient) -> None:
    """Python's json.loads accepts NaN and Infinity; the error body is still strict JSON."""
    body = b'{"email": NaN, "username": Infinity, "password": -Infinity}'
    response = client.post("/api/v1/users/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the error body")

    errors = json.loads(response.text, parse_constant=refuse)["detail"]
    assert [error["input"] for error in errors] == ["nan", "inf", "-inf"]


def test_login_form_in_utf_7_with_a_lone_surrogate_gets_401(client: TestClient) -> None:
    """`+2AA-` is a lone surrogate in UTF-7: it names no account, it is not a 500."""
    form = (
        b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\n+2AA-\r\n'
        b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\nany password\r\n--b--\r\n'
    )
    content_type = "multipart/form-data; boundary=b; charset=utf-7"
    response = client.post("/api/v1/auth/login", content=form, headers={"Content-Type": content_type})
    assert response.status_code == 401, response.text


def test_env_example_documents_every_setting_with_its_default() -> None:
    """`.env.example` names every setting, and its values are exactly the defaults (SPEC 2)."""
    documented = dotenv_values(REPOSITORY / ".env.example")
    assert set(documented) == set(Settings.model_fields)
    key = {"SECRET_KEY": TEST_SECRET_KEY}
    defaults = load_settings(key)
    assert load_settings({**{k: v or "" for k, v in documented.items()}, **key}) == defaults
    assert (defaults.API_V1_STR, defaults.DATABASE_URL, defaults.ALGORITHM) == (
        "/api/v1",
        "sqlite:///./app.db",
        "HS256",
    )
    assert (defaults.ACCESS_TOKEN_EXPIRE_MINUTES, defaults.BCRYPT_ROUNDS) == (30, 12)


def test_log_level_defaults_to_info(make_settings: MakeSettings, caplog: pytest.LogCaptureFixture) -> None:
    """Without LOG_LEVEL the settings say INFO and the app logs at INFO."""
    assert load_settings({"SECRET_KEY": TEST_SECRET_KEY}).LOG_LEVEL == "INFO"
    caplog.set_level(logging.WARNING)  # restored after the test, like the level set below
    create_app(make_settings())
    assert logging.getLogger().level == logging.INFO


def test_log_level_warning_silences_request_lines(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """LOG_LEVEL is obeyed: at WARNING the INFO request line is not emitted."""
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(make_settings(LOG_LEVEL="WARNING"))) as client:
        client.get("/health", headers={"X-Request-ID": "quiet"})
    assert request_lines(caplog, "quiet") == []


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_logs_never_hold_password_token_or_authorization_header(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture, level: str
) -> None:
    """Sign-up, logins, an authenticated call, a refresh and a logout leave no secret in the
    log, even at DEBUG."""
    caplog.set_level(level)
    with TestClient(create_app(make_settings(LOG_LEVEL=level))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        assert client.get("/api/v1/users/me", headers=headers).status_code == 200
        wrong = client.post("/api/v1/auth/login", data={"username": "ada", "password": "wrong password 123"})
        assert wrong.status_code == 401, wrong.text
        bad = client.post("/api/v1/users/", json={"email": "nope", "username": "bo", "password": DEFAULT_PASSWORD})
        assert bad.status_code == 422, bad.text
        pair = client.post("/api/v1/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD}).json()
        refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).json()
        logout = client.post("/api/v1/auth/logout", json={"refresh_token": refreshed["refresh_token"]})
        assert logout.status_code == 204, logout.text
    token = headers["Authorization"].removeprefix("Bearer ")
    text = caplog.text
    assert "GET /api/v1/users/me 200" in text
    secrets = (DEFAULT_PASSWORD, "wrong password 123", token, pair["refresh_token"], refreshed["refresh_token"])
    for secret in (*secrets, token.split(".")[2]):
        assert secret not in text
    assert "authorization" not in text.lower()
    assert "bearer" not in text.lower()


# --- Unhandled errors -----------------------------------------------------------------


def test_unhandled_error_returns_500_without_traceback_and_logs_it_with_request_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A route that raises: a bare 500 for the client, the traceback and id in the log."""
    app = create_app(settings)

    @app.get("/boom", tags=["boom"])
    def boom() -> None:
        raise RuntimeError("kaboom in the handler")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500, response.text
    assert response.json() == {"detail": "Internal Server Error"}
    assert response.headers["X-Request-ID"] == "boom-1"
    assert "kaboom" not in response.text and "Traceback" not in response.text
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "request_id=boom-1" in error.getMessage()
    assert error.exc_info is not None
    assert "Traceback" in caplog.text and "RuntimeError: kaboom in the handler" in caplog.text
    [line] = request_lines(caplog, "boom-1")
    assert re.fullmatch(r"GET /boom 500 \d+\.\dms request_id=boom-1", line.getMessage())


# --- Body size limit ------------------------------------------------------------------


# A JSON endpoint and a form endpoint: both parsers must meet the limit.
BODY_ENDPOINTS = [("/api/v1/users/", "application/json"), ("/api/v1/auth/login", "application/x-www-form-urlencoded")]


@pytest.mark.parametrize(("path", "content_type"), BODY_ENDPOINTS)
def test_body_over_64_kib_with_content_length_gets_413(client: TestClient, path: str, content_type: str) -> None:
    """64 KiB + 1 byte announced in Content-Length is refused."""
    response = client.post(path, content=b"x" * (MAX_BODY_BYTES + 1), headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": "Request body too large"}


@pytest.mark.parametrize(("path", "content_type"), BODY_ENDPOINTS)
def test_body_over_64_kib_chunked_gets_413(client: TestClient, path: str, content_type: str) -> None:
    """64 KiB + 1 byte sent chunked (no Content-Length) is refused too."""

    def chunks() -> Iterator[bytes]:
        yield b"x" * MAX_BODY_BYTES
        yield b"x"

    response = client.post(path, content=chunks(), headers={"Content-Type": content_type})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": "Request body too large"}


def test_limit_is_64_kib_enough_for_the_largest_notification(client: TestClient, user_headers: dict[str, str]) -> None:
    """The largest valid body, a notification with every field at its longest (UTF-8, no
    escapes), is accepted; 1 MiB of small nested arrays, the costliest JSON to parse, is a
    413 before it is parsed (SPEC 5)."""
    assert MAX_BODY_BYTES == 64 * 1024
    longest = {"email": "b" * 64 + "@" + "e" * 60 + ".com", "subject": "é" * 255, "message": "€" * 10_000}
    response = client.post("/api/v1/notifications/", headers=user_headers, json=longest)
    assert response.status_code == 202, response.text
    nested = b"[" + b"[[[]]]," * 150_000 + b"[]]"
    response = client.post("/api/v1/users/", content=nested, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text


def test_body_of_exactly_64_kib_is_accepted(client: TestClient) -> None:
    """The limit is inclusive: 64 KiB reaches the endpoint (and fails as bad JSON)."""
    body = b"x" * MAX_BODY_BYTES
    response = client.post("/api/v1/users/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


def test_body_of_exactly_64_kib_chunked_is_accepted(client: TestClient) -> None:
    """The same 64 KiB sent chunked also reaches the endpoint."""

    def chunks() -> Iterator[bytes]:
        yield b"x" * (MAX_BODY_BYTES - 1)
        yield b"x"

    response = client.post("/api/v1/users/", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 422, response.text


def test_body_limit_stops_reading_a_large_chunked_body_early(settings: Settings) -> None:
    """A 16 MiB chunked body gets 413 once a little over 64 KiB has been read, not after all of it."""
    app = create_app(settings)
    chunk, chunks_in_body = b"x" * (4 * 1024), 4096
    chunks_read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal chunks_read
        chunks_read += 1
        await asyncio.sleep(0)
        return {"type": "http.request", "body": chunk, "more_body": chunks_read < chunks_in_body}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = http_scope("POST", "/api/v1/users/", [(b"content-type", b"application/json")])
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=PROCESS_SECONDS))
    assert sent[0]["status"] == 413
    assert chunks_read == MAX_BODY_BYTES // len(chunk) + 1


def test_middleware_is_pure_asgi(make_settings: MakeSettings) -> None:
    """Request log, CORS and body limit are plain ASGI classes, none a BaseHTTPMiddleware."""
    app = create_app(make_settings(BACKEND_CORS_ORIGINS=LISTED_ORIGIN))
    classes: list[Any] = [middleware.cls for middleware in app.user_middleware]
    assert classes == [RequestLogMiddleware, CORSMiddleware, BodySizeLimitMiddleware]
    assert not any(issubclass(cls, BaseHTTPMiddleware) for cls in classes)


# --- CORS -----------------------------------------------------------------------------


def test_cors_listed_origin_is_allowed_with_credentials(cors_client: TestClient) -> None:
    """A simple request from the listed origin gets it back, with credentials allowed."""
    response = cors_client.get("/health", headers={"Origin": LISTED_ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == LISTED_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


def test_cors_exposes_retry_after_to_browser_clients(cors_client: TestClient) -> None:
    """A page on the listed origin can read when to come back after a 429."""
    response = cors_client.get("/health", headers={"Origin": LISTED_ORIGIN})
    exposed = {name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after"} <= exposed


def test_cors_preflight_from_listed_origin_is_allowed(cors_client: TestClient) -> None:
    """A preflight from the listed origin names that origin."""
    response = preflight(cors_client, LISTED_ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == LISTED_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


UNLISTED_ORIGINS = ["https://evil.example.com", "https://app.example.com.evil.com", "http://app.example.com", "null"]


@pytest.mark.parametrize("origin", UNLISTED_ORIGINS)
def test_cors_unlisted_origin_gets_no_allow_origin(cors_client: TestClient, origin: str) -> None:
    """A simple request from any other origin gets no Access-Control-Allow-Origin."""
    response = cors_client.get("/health", headers={"Origin": origin})
    assert response.status_code == 200, response.text
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origin", UNLISTED_ORIGINS)
def test_cors_preflight_from_unlisted_origin_gets_no_allow_origin(cors_client: TestClient, origin: str) -> None:
    """A preflight from any other origin is refused without Access-Control-Allow-Origin."""
    response = preflight(cors_client, origin)
    assert response.status_code == 400, response.text
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_without_origins_allows_none(client: TestClient) -> None:
    """No BACKEND_CORS_ORIGINS: no origin is allowed, simple request or preflight."""
    assert "Access-Control-Allow-Origin" not in client.get("/health", headers={"Origin": LISTED_ORIGIN}).headers
    assert "Access-Control-Allow-Origin" not in preflight(client, LISTED_ORIGIN).headers


@pytest.mark.parametrize("origins", ["*", f"{LISTED_ORIGIN},*"])
def test_cors_star_is_never_paired_with_credentials(make_settings: MakeSettings, origins: str) -> None:
    """With "*" listed, no response says Access-Control-Allow-Credentials: true."""
    with TestClient(create_app(make_settings(BACKEND_CORS_ORIGINS=origins))) as client:
        responses = [
            client.get("/health", headers={"Origin": LISTED_ORIGIN}),
            client.get("/health", headers={"Origin": LISTED_ORIGIN, "Cookie": "session=1"}),
            preflight(client, LISTED_ORIGIN),
        ]
    for response in responses:
        assert response.headers["Access-Control-Allow-Origin"] in ("*", LISTED_ORIGIN)
        assert response.headers.get("Access-Control-Allow-Credentials") != "true"


# --- Health ---------------------------------------------------------------------------


def test_health_answers_503_when_the_database_is_gone(settings: Settings, tmp_path: Path) -> None:
    """With a database that cannot be opened, /health says so with a 503 and JSON."""
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.engine = create_db_engine(f"sqlite:///{tmp_path / 'missing' / 'app.db'}")
        response = client.get("/health")
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "Database unavailable"}


# --- Settings and start-up ------------------------------------------------------------

BAD_SETTINGS = [
    ({"ALGORITHM": "RS256"}, "ALGORITHM must be one of HS256, HS384, HS512, got 'RS256'"),
    (
        {"ACCESS_TOKEN_EXPIRE_MINUTES": "abc"},
        "ACCESS_TOKEN_EXPIRE_MINUTES must be an integer from 1 to 525600, got 'abc'",
    ),
    ({"BCRYPT_ROUNDS": "3"}, "BCRYPT_ROUNDS must be an integer from 4 to 31, got '3'"),
    ({"BCRYPT_ROUNDS": "32"}, "BCRYPT_ROUNDS must be an integer from 4 to 31, got '32'"),
    ({"SMTP_PORT": "x"}, "SMTP_PORT must be an integer from 1 to 65535, got 'x'"),
    ({"ENVIRONMENT": "staging"}, "ENVIRONMENT must be one of development, production, got 'staging'"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG, got 'LOUD'"),
    ({"DATABASE_URL": "not-a-url"}, "DATABASE_URL is not a valid SQLAlchemy URL"),
    (
        {"ENVIRONMENT": "production"},
        "SECRET_KEY must be set to at least 32 characters when ENVIRONMENT=production",
    ),
    (
        {"ENVIRONMENT": "production", "SECRET_KEY": "k" * 31},
        "SECRET_KEY must be set to at least 32 characters when ENVIRONMENT=production",
    ),
]
BAD_SETTINGS_IDS = [
    "algorithm-rs256",
    "expire-minutes-abc",
    "bcrypt-rounds-3",
    "bcrypt-rounds-32",
    "smtp-port-x",
    "environment-staging",
    "log-level-loud",
    "database-url-not-a-url",
    "production-without-key",
    "production-short-key",
]


# Checked in-process only: the start-up path is the same for every variable.
MORE_BAD_SETTINGS = [
    ({"API_V1_STR": "api/v1"}, "API_V1_STR must start with '/' and not end with one, got 'api/v1'"),
    ({"RESET_TOKEN_EXPIRE_MINUTES": "0"}, "RESET_TOKEN_EXPIRE_MINUTES must be an integer from 1 to 10080, got '0'"),
    ({"BACKEND_CORS_ORIGINS": "ftp://files"}, "BACKEND_CORS_ORIGINS must list http(s) origins, got 'ftp://files'"),
    (
        {"FIRST_SUPERUSER_USERNAME": "a b"},
        "FIRST_SUPERUSER_USERNAME must be 3-50 letters, digits, '_', '.' or '-', got 'a b'",
    ),
    ({"FIRST_SUPERUSER_PASSWORD": "short"}, "FIRST_SUPERUSER_PASSWORD must be 8 to 72 bytes of UTF-8"),
    ({"SMTP_TLS": "maybe"}, "SMTP_TLS must be true or false, got 'maybe'"),
    ({"SMTP_TIMEOUT_SECONDS": "0"}, "SMTP_TIMEOUT_SECONDS must be an integer from 1 to 300, got '0'"),
    (
        {"EMAILS_FROM": "nobody"},
        "EMAILS_FROM must be an email address such as 'App <noreply@example.com>', got 'nobody'",
    ),
    ({"FIRST_SUPERUSER_EMAIL": "not-an-email"}, "FIRST_SUPERUSER_EMAIL must be an email address, got 'not-an-email'"),
    ({"LOGIN_MAX_FAILURES": "0"}, "LOGIN_MAX_FAILURES must be an integer from 1 to 1000, got '0'"),
    ({"REFRESH_TOKEN_EXPIRE_DAYS": "0"}, "REFRESH_TOKEN_EXPIRE_DAYS must be an integer from 1 to 3650, got '0'"),
    ({"LOGIN_LOCKOUT_MINUTES": "soon"}, "LOGIN_LOCKOUT_MINUTES must be an integer from 1 to 10080, got 'soon'"),
    ({"NOTIFICATIONS_PER_HOUR": "-1"}, "NOTIFICATIONS_PER_HOUR must be an integer from 1 to 100000, got '-1'"),
    ({"RECOVERY_EMAILS_PER_HOUR": "1e3"}, "RECOVERY_EMAILS_PER_HOUR must be an integer from 1 to 1000, got '1e3'"),
    # A port that is not a number: the URL (and its password) stays out of the message.
    ({"DATABASE_URL": "postgresql://app:hunter2@db:port/app"}, "DATABASE_URL is not a valid SQLAlchemy URL"),
]


@pytest.mark.parametrize(
    ("environ", "message"),
    BAD_SETTINGS + MORE_BAD_SETTINGS,
    ids=BAD_SETTINGS_IDS + [name.lower().replace("_", "-") for environ, _ in MORE_BAD_SETTINGS for name in environ],
)
def test_load_settings_bad_value_raises_settings_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    """Each bad value raises SettingsError with one line naming the variable."""
    monkeypatch.chdir(tmp_path)  # a development key, if any, lands here
    with pytest.raises(SettingsError) as error:
        load_settings(environ)
    assert str(error.value) == message
    assert not (tmp_path / ".secret_key").exists()


def test_load_settings_production_accepts_a_32_character_key() -> None:
    """The production floor is 32 characters, not more."""
    assert load_settings({"ENVIRONMENT": "production", "SECRET_KEY": "k" * 32}).SECRET_KEY == "k" * 32


@pytest.mark.parametrize(("environ", "message"), BAD_SETTINGS, ids=BAD_SETTINGS_IDS)
def test_start_up_bad_value_exits_with_one_line_naming_it(app_dir: Path, environ: dict[str, str], message: str) -> None:
    """A bad value exits 1 with one stderr line and no traceback. Start-up reads the settings
    when `config` is imported, the first thing `import main` does: importing `config` alone
    takes half the time, and `uvicorn main:app` is checked once below."""
    result = import_module("config", app_dir, environ)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Configuration error: {message}\n"
    assert not (app_dir / ".secret_key").exists()


def test_start_up_bad_value_stops_uvicorn_with_one_line(app_dir: Path) -> None:
    """`uvicorn main:app` stops the same way: exit 1, one line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(free_port())],
        cwd=app_dir,
        env=child_environ(LOG_LEVEL="LOUD"),
        capture_output=True,
        text=True,
        timeout=PROCESS_SECONDS,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "Configuration error: LOG_LEVEL must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG, got 'LOUD'"
    ]


# --- Development secret key -----------------------------------------------------------


def test_dev_secret_key_file_is_git_ignored() -> None:
    """`.secret_key` never gets committed."""
    assert ".secret_key" in (REPOSITORY / ".gitignore").read_text().splitlines()


def test_dev_server_without_secret_key_starts_logs_one_warning_and_logs_to_stderr(app_dir: Path) -> None:
    """No SECRET_KEY in development: the server starts, warns once, and logs requests on stderr."""
    with running_server(app_dir, BCRYPT_ROUNDS="4") as server:
        response = httpx2.get(f"{server.url}/health", headers={"X-Request-ID": "live-1"}, timeout=10)
        assert response.status_code == 200, response.text
    stderr = server.stderr()
    assert stderr.count(SECRET_KEY_WARNING) == 1
    assert re.search(r"GET /health 200 \d+\.\dms request_id=live-1\n", stderr)
    assert "request_id=" not in server.stdout_path.read_text()


@pytest.mark.parametrize(
    ("environ", "warning"),
    [({}, SECRET_KEY_WARNING), ({"ENVIRONMENT": "production", "SECRET_KEY": TEST_SECRET_KEY}, "SMTP_HOST is not set")],
)
def test_start_up_warnings_have_the_log_format_with_level_and_time(
    app_dir: Path, environ: dict[str, str], warning: str
) -> None:
    """Warnings printed while the settings load look like every later line (SPEC 7)."""
    result = import_module("main", app_dir, environ)
    assert result.returncode == 0, result.stderr
    line = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING config: "
    assert re.search(line + re.escape(warning), result.stderr, re.MULTILINE), result.stderr


def test_dev_secret_key_tokens_survive_a_restart(app_dir: Path) -> None:
    """A token issued before a restart without SECRET_KEY still works after it."""
    with running_server(app_dir, BCRYPT_ROUNDS="4") as server:
        headers = sign_up_and_log_in(server.url)
    with running_server(app_dir, BCRYPT_ROUNDS="4") as server:
        response = httpx2.get(f"{server.url}/api/v1/users/me", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "ada"
    assert stat.S_IMODE((app_dir / ".secret_key").stat().st_mode) == 0o600


def test_dev_secret_key_tokens_work_across_two_workers(app_dir: Path) -> None:
    """Two workers started together on a fresh database accept each other's tokens."""
    settings = {"DATABASE_URL": f"sqlite:///{app_dir / 'app.db'}", "BCRYPT_ROUNDS": "4"}
    with running_server(app_dir, "--workers", "2", started=2, **settings) as server:
        headers = sign_up_and_log_in(server.url)
        # No keep-alive: every request opens a new connection, which either worker may accept.
        limits = httpx2.Limits(max_keepalive_connections=0)
        with httpx2.Client(base_url=server.url, headers=headers, limits=limits, timeout=10) as http:
            statuses = [http.get("/api/v1/users/me").status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert stat.S_IMODE((app_dir / ".secret_key").stat().st_mode) == 0o600


def test_dev_secret_key_created_by_many_threads_at_once_is_one_key(tmp_path: Path) -> None:
    """Threads racing to create the key file all read the same key."""
    path = tmp_path / ".secret_key"
    keys = run_at_once([partial(read_or_create_dev_secret_key, path)] * 8)
    assert len(set(keys)) == 1 and len(keys[0]) >= 32
    assert path.read_text().strip() == keys[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".secret_key"]


RACE_SCRIPT = """
import os, sys, time
from pathlib import Path
from config import read_or_create_dev_secret_key
go, deadline = Path(sys.argv[2]), time.monotonic() + 30
Path(f"{go}.ready.{os.getpid()}").touch()
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
print(read_or_create_dev_secret_key(Path(sys.argv[1])))
"""


def test_dev_secret_key_created_by_many_processes_at_once_is_one_key(app_dir: Path, tmp_path: Path) -> None:
    """Processes racing to create the key file (workers starting) all read the same key."""
    path, go = tmp_path / "keys" / ".secret_key", tmp_path / "go"
    path.parent.mkdir()
    # SECRET_KEY set: importing config must not create a key of its own.
    environ = child_environ(SECRET_KEY=TEST_SECRET_KEY)
    command = [sys.executable, "-c", RACE_SCRIPT, str(path), str(go)]
    processes = [
        subprocess.Popen(command, cwd=app_dir, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        # The go only once every process waits at its starting line.
        deadline = time.monotonic() + PROCESS_SECONDS
        while len(list(tmp_path.glob("go.ready.*"))) < len(processes):
            assert time.monotonic() < deadline, "the racing processes did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [process.communicate(timeout=PROCESS_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    assert [process.returncode for process in processes] == [0] * 4, outputs
    keys = {stdout.strip() for stdout, _ in outputs}
    assert keys == {path.read_text().strip()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [".secret_key"]
