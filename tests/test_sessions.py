"""Tests of sessions (SPEC 4 and 5): refresh tokens with rotation and reuse detection,
logout and logout everywhere, and what ends every session.

Patterns shown:
- `Tokens`: a login's pair, with the headers its access token gives.
- A race settled by the database: N threads send one refresh token at once (`run_at_once`).
- A live `uvicorn --workers 2`: the rotation and the reuse land on whichever worker, and
  the database decides.

Imports: models, conftest, live_server.
"""

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import Session, func, select, update

from conftest import (
    DEFAULT_PASSWORD,
    SUPERUSER_EMAIL,
    SUPERUSER_PASSWORD,
    engine_of,
    login,
    run_at_once,
    settings_environ,
    signup,
)
from live_server import copy_app, running_server
from models import LoginSession, User

API = "/api/v1"
BAD_TOKEN = {"detail": "Could not validate credentials"}
NEW_PASSWORD = "a brand new passphrase"


@dataclass
class Tokens:
    """What a login or a refresh returned."""

    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def log_in(client: httpx2.Client, username: str = "ada", password: str = DEFAULT_PASSWORD) -> Tokens:
    response = client.post(f"{API}/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return Tokens(response.json()["access_token"], response.json()["refresh_token"])


def refresh(client: httpx2.Client, refresh_token: str) -> Any:
    return client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})


def assert_refused(response: Any) -> None:
    """The one 401 of every token failure, with its Bearer challenge."""
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN
    assert response.headers["WWW-Authenticate"] == "Bearer"


def me(client: httpx2.Client, tokens: Tokens) -> int:
    """The status of GET /users/me with these tokens' access token."""
    status: int = client.get(f"{API}/users/me", headers=tokens.headers).status_code
    return status


def sessions_in_database(client: TestClient) -> int:
    with Session(engine_of(client)) as session:
        count: int = session.exec(select(func.count()).select_from(LoginSession)).one()
        return count


@pytest.fixture(name="ada")
def ada_fixture(client: TestClient) -> Tokens:
    """A signed-up user, `ada`, logged in once."""
    signup(client, "ada")
    return log_in(client)


def test_an_authenticated_request_reads_user_and_session_in_one_query(client: TestClient, ada: Tokens) -> None:
    """Sessions cost GET /users/me no extra query: the user and the session come together."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine_of(client), "before_cursor_execute", count)
    try:
        assert me(client, ada) == 200
    finally:
        event.remove(engine_of(client), "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert "JOIN loginsession" in statements[0]


# --- POST /auth/refresh --------------------------------------------------------------------


def test_login_returns_a_refresh_token_beside_the_access_token(client: TestClient, ada: Tokens) -> None:
    """Login's body has both tokens; the refresh token is not an access token."""
    assert me(client, ada) == 200
    assert client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {ada.refresh_token}"}).status_code == 401


def test_refresh_returns_a_new_pair_that_works(client: TestClient, ada: Tokens) -> None:
    """200 with the login body: a new access token and a new refresh token."""
    response = refresh(client, ada.refresh_token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 60
    rotated = Tokens(body["access_token"], body["refresh_token"])
    assert rotated.refresh_token != ada.refresh_token
    assert me(client, rotated) == 200
    assert refresh(client, rotated.refresh_token).status_code == 200


def test_every_refresh_returns_an_access_token_never_seen_before(client: TestClient, ada: Tokens) -> None:
    """Refreshes within one second (one `iat`) still give distinct access tokens: each has its `jti`."""
    access_tokens = {ada.access_token}
    refresh_token = ada.refresh_token
    for _ in range(3):
        body = refresh(client, refresh_token).json()
        access_tokens.add(body["access_token"])
        refresh_token = body["refresh_token"]
    assert len(access_tokens) == 4


def test_refresh_token_whose_stamp_is_not_current_gets_401(client: TestClient, ada: Tokens) -> None:
    """A session that outlived a change of the account's stamp (a login that raced a password
    change, say) is no way back in: the refresh compares the token's stamp with the user's."""
    with Session(engine_of(client)) as session:
        session.exec(update(User).values(security_stamp="replaced meanwhile"))
        session.commit()
    assert_refused(refresh(client, ada.refresh_token))


def test_reused_refresh_token_gets_401_and_ends_its_whole_session(client: TestClient, ada: Tokens) -> None:
    """A refresh token presented a second time is taken as stolen: 401, and every token of
    its session, the newest included, stops working."""
    rotated = refresh(client, ada.refresh_token).json()
    assert_refused(refresh(client, ada.refresh_token))
    assert me(client, Tokens(rotated["access_token"], rotated["refresh_token"])) == 401
    assert_refused(refresh(client, rotated["refresh_token"]))
    assert me(client, ada) == 401


def test_reuse_ends_only_its_own_session(client: TestClient, ada: Tokens) -> None:
    """Another login of the same user (another device) keeps working."""
    laptop = log_in(client)
    refresh(client, ada.refresh_token)
    refresh(client, ada.refresh_token)
    assert me(client, laptop) == 200
    assert refresh(client, laptop.refresh_token).status_code == 200


def test_one_refresh_token_raced_by_many_requests_succeeds_once(client: TestClient, ada: Tokens) -> None:
    """Eight requests send the same refresh token at once: exactly one gets 200."""
    responses = run_at_once([lambda: refresh(client, ada.refresh_token) for _ in range(8)])
    assert sorted(response.status_code for response in responses) == [200] + [401] * 7


@pytest.mark.parametrize("kind", ["access", "garbage", "signed with another key"])
def test_refresh_with_anything_but_a_refresh_token_gets_401(client: TestClient, ada: Tokens, kind: str) -> None:
    """An access token, garbage, or a forgery is no refresh token; the session goes on."""
    token = {
        "access": ada.access_token,
        "garbage": "not-a-jwt",
        "signed with another key": ada.refresh_token[:-4] + "AAAA",
    }[kind]
    assert_refused(refresh(client, token))
    assert me(client, ada) == 200


def test_refresh_token_is_no_reset_token(client: TestClient, ada: Tokens) -> None:
    """Tokens of one kind are refused as another: a refresh token cannot reset a password."""
    response = client.post(
        f"{API}/auth/reset-password", json={"token": ada.refresh_token, "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Invalid or expired token"}


def test_expired_session_is_refused_and_deleted_by_the_next_login(client: TestClient, ada: Tokens) -> None:
    """Past REFRESH_TOKEN_EXPIRE_DAYS a session is over; the next login, anyone's, removes it."""
    with Session(engine_of(client)) as session:
        for login_session in session.exec(select(LoginSession)).all():
            login_session.expires_at -= timedelta(days=14)
            session.add(login_session)
        session.commit()
    assert me(client, ada) == 401
    assert_refused(refresh(client, ada.refresh_token))
    log_in(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
    assert sessions_in_database(client) == 1


# --- Logout -----------------------------------------------------------------------------


def test_logout_ends_the_session_at_once(client: TestClient, ada: Tokens) -> None:
    """204; then its access token and its refresh token get 401, not when they expire."""
    response = client.post(f"{API}/auth/logout", json={"refresh_token": ada.refresh_token})
    assert response.status_code == 204, response.text
    assert me(client, ada) == 401
    assert_refused(refresh(client, ada.refresh_token))
    assert sessions_in_database(client) == 0


def test_logout_leaves_the_other_sessions(client: TestClient, ada: Tokens) -> None:
    """Logging out of one device keeps the others."""
    phone = log_in(client)
    client.post(f"{API}/auth/logout", json={"refresh_token": ada.refresh_token})
    assert me(client, phone) == 200


@pytest.mark.parametrize("kind", ["access", "garbage", "used"])
def test_logout_with_an_invalid_refresh_token_gets_401(client: TestClient, ada: Tokens, kind: str) -> None:
    """An access token, garbage or an already-used refresh token is refused."""
    if kind == "used":
        refresh(client, ada.refresh_token)
    token = {"access": ada.access_token, "garbage": "not-a-jwt", "used": ada.refresh_token}[kind]
    assert_refused(client.post(f"{API}/auth/logout", json={"refresh_token": token}))


def test_logout_all_ends_every_session_of_the_caller_only(client: TestClient, ada: Tokens) -> None:
    """204; every session of the caller ends, another user's stays."""
    phone = log_in(client)
    root = log_in(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
    response = client.post(f"{API}/auth/logout-all", headers=ada.headers)
    assert response.status_code == 204, response.text
    assert [me(client, ada), me(client, phone), me(client, root)] == [401, 401, 200]
    assert_refused(refresh(client, phone.refresh_token))


def test_logout_all_needs_an_access_token(client: TestClient) -> None:
    """Without one: 401 with the Bearer challenge."""
    response = client.post(f"{API}/auth/logout-all")
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- What ends every session --------------------------------------------------------------


def test_password_change_ends_every_session(client: TestClient, ada: Tokens) -> None:
    """Refresh tokens included: a stolen one is worth nothing after a password change."""
    phone = log_in(client)
    body = {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD}
    assert client.patch(f"{API}/users/me/password", headers=ada.headers, json=body).status_code == 200
    assert_refused(refresh(client, phone.refresh_token))
    assert me(client, phone) == 401
    assert sessions_in_database(client) == 0


def test_password_set_by_a_superuser_or_deactivation_ends_every_session(client: TestClient, ada: Tokens) -> None:
    """Both PATCH /users/{id} paths end the user's sessions."""
    root = log_in(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
    ada_id = client.get(f"{API}/users/me", headers=ada.headers).json()["id"]
    client.patch(f"{API}/users/{ada_id}", headers=root.headers, json={"password": NEW_PASSWORD})
    assert_refused(refresh(client, ada.refresh_token))
    again = log_in(client, "ada", NEW_PASSWORD)
    client.patch(f"{API}/users/{ada_id}", headers=root.headers, json={"is_active": False})
    assert_refused(refresh(client, again.refresh_token))
    client.patch(f"{API}/users/{ada_id}", headers=root.headers, json={"is_active": True})
    assert_refused(refresh(client, again.refresh_token))


def test_deleted_users_sessions_go_with_the_user(client: TestClient, ada: Tokens) -> None:
    """No session row outlives its user."""
    log_in(client)
    assert client.delete(f"{API}/users/me", headers=ada.headers).status_code == 204
    assert sessions_in_database(client) == 0
    assert_refused(refresh(client, ada.refresh_token))


# --- Several workers ----------------------------------------------------------------------


def test_reuse_on_another_worker_ends_the_session_for_all(tmp_path: Path, database_url: str) -> None:
    """With `--workers 2` and a new connection per request, refreshes and the reuse land on
    either worker: the session lives in the database, so the reuse ends it for both."""
    settings = settings_environ(database_url, LOG_LEVEL="WARNING")
    with running_server(copy_app(tmp_path / "app"), "--workers", "2", started=2, **settings) as server:

        def fresh(method: str, path: str, **kwargs: Any) -> Any:
            with httpx2.Client(base_url=server.url, timeout=20) as http:  # a new connection each time
                return http.request(method, f"{API}{path}", **kwargs)

        with httpx2.Client(base_url=server.url, timeout=20) as http:
            signup(http, "ada")
        first = fresh("POST", "/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD}).json()
        token = first["refresh_token"]
        for _ in range(4):
            response = fresh("POST", "/auth/refresh", json={"refresh_token": token})
            assert response.status_code == 200, response.text
            newest = response.json()
            token = newest["refresh_token"]
        for _ in range(4):
            assert fresh("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
            me_response = fresh("GET", "/users/me", headers={"Authorization": f"Bearer {newest['access_token']}"})
            assert me_response.status_code == 401
        assert fresh("POST", "/auth/refresh", json={"refresh_token": token}).status_code == 401
        assert "Traceback" not in server.log()


def test_token_of_deleted_account_is_refused_even_if_the_database_reuses_its_id(client: TestClient) -> None:
    """Tokens are bound to the account, not only to its id: a new row given the old id
    (as some databases would) is not opened by the old account's token."""
    ada = signup(client, "ada")
    headers = login(client, "ada")
    assert client.delete(f"{API}/users/me", headers=headers).status_code == 204
    with Session(engine_of(client)) as session:
        session.add(User(id=ada["id"], email="eve@example.com", username="eve", hashed_password="x"))
        session.commit()
    for method, path in [("GET", "/users/me"), ("POST", "/items/")]:
        response = client.request(method, f"{API}{path}", headers=headers, json={"title": "as eve"})
        assert response.status_code == 401, response.text
        assert response.json() == BAD_TOKEN
