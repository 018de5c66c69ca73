"""Two requests racing on one row (SPEC 5): each race played the same way every time.

Patterns shown:
- `paused_before` (conftest.py) holds one request just before an SQL statement, in a thread
  of its own, while the test sends the request that races it; then lets it go on. No
  sleeps, no luck: the losing order happens on every run, on SQLite and PostgreSQL alike.
- `user_headers` (ada) and `superuser_headers` come from conftest.py.
- What the loser must get: never a 5xx. A write to a row deleted meanwhile is a 404, or the
  deleted user's 401 when the row was the caller's own account; a login whose account
  changed while its password was checked gets no session.

Imports: auth, config, database, main, models, conftest.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

import auth
from config import Settings
from conftest import (
    DEFAULT_PASSWORD,
    SUPERUSER_EMAIL,
    MakeSettings,
    engine_of,
    login,
    paused_before,
    promote,
    run_at_once,
    signup,
)
from database import SessionDep
from main import create_app
from models import User

API = "/api/v1"
USER = '"?user"?'  # PostgreSQL quotes the table name, SQLite does not
BAD_CREDENTIALS = {"detail": "Incorrect username or password"}
BAD_TOKEN = {"detail": "Could not validate credentials"}
NOT_FOUND = {"detail": "Not found"}


def race(
    client: TestClient, pattern: str, paused: Callable[[], httpx2.Response], racing: Callable[[], Any]
) -> httpx2.Response:
    """Run `paused` until it reaches the statement `pattern`, run `racing` to its end, then let
    `paused` go on; its response."""
    with ThreadPoolExecutor(max_workers=1) as pool, paused_before(engine_of(client), pattern) as pause:
        response = pool.submit(paused)
        assert pause.reached.wait(timeout=10), "the paused request never reached its statement"
        racing()
        pause.release.set()
        return response.result(timeout=10)


def log_in_ada(client: TestClient) -> Callable[[], httpx2.Response]:
    return lambda: client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})


def test_login_racing_a_password_change_gets_no_session(client: TestClient, user_headers: dict[str, str]) -> None:
    """The password was right when checked, and changed before the session was stored: 401."""
    new_password = {"current_password": DEFAULT_PASSWORD, "new_password": "a brand new password"}

    def change_password() -> None:
        assert client.patch(f"{API}/users/me/password", headers=user_headers, json=new_password).status_code == 200

    response = race(client, "^DELETE FROM loginfailure", log_in_ada(client), change_password)
    assert response.status_code == 401, response.text
    assert response.json() == BAD_CREDENTIALS


def test_login_racing_a_deactivation_and_reactivation_gets_no_session(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    """Deactivating ends every session, reactivating brings none back: a login checked in
    between gets none either."""
    ada_id = client.get(f"{API}/users/me", headers=user_headers).json()["id"]

    def deactivate_and_reactivate() -> None:
        for active in (False, True):
            response = client.patch(f"{API}/users/{ada_id}", headers=superuser_headers, json={"is_active": active})
            assert response.status_code == 200, response.text

    response = race(client, "^DELETE FROM loginfailure", log_in_ada(client), deactivate_and_reactivate)
    assert response.status_code == 401, response.text


def test_login_racing_the_deletion_of_its_account_gets_401(client: TestClient, user_headers: dict[str, str]) -> None:
    def delete_account() -> None:
        assert client.delete(f"{API}/users/me", headers=user_headers).status_code == 204

    response = race(client, "^DELETE FROM loginfailure", log_in_ada(client), delete_account)
    assert response.status_code == 401, response.text
    assert response.json() == BAD_CREDENTIALS


def test_item_update_racing_its_deletion_gets_404(client: TestClient, user_headers: dict[str, str]) -> None:
    item = client.post(f"{API}/items/", headers=user_headers, json={"title": "raced"}).json()
    url = f"{API}/items/{item['id']}"

    response = race(
        client,
        "^UPDATE item SET",
        lambda: client.patch(url, headers=user_headers, json={"title": "late"}),
        lambda: client.delete(url, headers=user_headers),
    )
    assert response.status_code == 404, response.text
    assert response.json() == NOT_FOUND


def test_item_deletion_racing_another_deletion_gets_404(client: TestClient, user_headers: dict[str, str]) -> None:
    item = client.post(f"{API}/items/", headers=user_headers, json={"title": "raced"}).json()
    url = f"{API}/items/{item['id']}"

    def delete_first() -> None:
        assert client.delete(url, headers=user_headers).status_code == 204

    response = race(client, "^DELETE FROM item", lambda: client.delete(url, headers=user_headers), delete_first)
    assert response.status_code == 404, response.text


def test_email_change_racing_a_signup_that_takes_the_email_gets_400(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    """The email was free when checked, and taken before the UPDATE: the unique index refuses
    it, and the session dependency answers the same 400 as the check."""
    url = f"{API}/users/{client.get(f'{API}/users/me', headers=user_headers).json()['id']}"

    response = race(
        client,
        f"^UPDATE {USER} SET",
        lambda: client.patch(url, headers=superuser_headers, json={"email": "wanted@example.com"}),
        lambda: signup(client, "other", email="wanted@example.com"),
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Email already registered"}


def test_username_change_racing_a_signup_that_takes_it_in_another_case_gets_400(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    response = race(
        client,
        f"^UPDATE {USER} SET",
        lambda: client.patch(f"{API}/users/me", headers=user_headers, json={"username": "Wanted"}),
        lambda: signup(client, "wanted"),
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Username already taken"}


@pytest.mark.parametrize(
    ("taken", "detail"),
    [
        ({"email": SUPERUSER_EMAIL}, "Email already registered"),
        # A constraint `races.DUPLICATE_DETAILS` does not name (here the primary key of the
        # first superuser, created at start-up; a team's new table would have others).
        ({"id": 1}, "Already exists"),
    ],
    ids=["email", "unnamed-constraint"],
)
def test_duplicate_that_a_route_never_checked_for_is_a_400_not_a_500(
    make_settings: MakeSettings, taken: dict[str, Any], detail: str
) -> None:
    """Safe by construction: a route a team adds without `ensure_unique` still answers a
    duplicate with the 400, from the session dependency (races.answer_write_refused)."""
    app = create_app(make_settings())

    @app.post("/throwaway", status_code=201, responses={400: {"description": "Duplicate"}})
    def add_user_unchecked(session: SessionDep) -> None:
        fields = {"email": "new@example.com", "username": "someone", "hashed_password": "x"} | taken
        session.add(User(**fields))
        session.commit()

    with TestClient(app) as client:
        response = client.post("/throwaway")
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": detail}


def test_superuser_update_racing_the_users_deletion_gets_404(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    url = f"{API}/users/{client.get(f'{API}/users/me', headers=user_headers).json()['id']}"

    response = race(
        client,
        f"^UPDATE {USER} SET",
        lambda: client.patch(url, headers=superuser_headers, json={"full_name": "Late"}),
        lambda: client.delete(url, headers=superuser_headers),
    )
    assert response.status_code == 404, response.text


def test_own_update_racing_the_deletion_of_the_account_gets_401(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    response = race(
        client,
        f"^UPDATE {USER} SET",
        lambda: client.patch(f"{API}/users/me", headers=user_headers, json={"full_name": "Late"}),
        lambda: client.delete(f"{API}/users/me", headers=user_headers),
    )
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN


def test_password_change_racing_the_deletion_of_the_account_gets_401(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    new_password = {"current_password": DEFAULT_PASSWORD, "new_password": "a brand new password"}
    response = race(
        client,
        f"^UPDATE {USER} SET",
        lambda: client.patch(f"{API}/users/me/password", headers=user_headers, json=new_password),
        lambda: client.delete(f"{API}/users/me", headers=user_headers),
    )
    assert response.status_code == 401, response.text


@pytest.mark.parametrize(
    ("path", "body", "pattern"),
    [
        ("items", {"title": "late"}, "^INSERT INTO item"),
        # Before the owner's row is locked for the hourly cap (a lock the deletion would wait for).
        (
            "notifications",
            {"email": "bob@example.com", "subject": "s", "message": "m"},
            f"^SELECT {USER}.id\\s+FROM {USER}\\s+WHERE {USER}.id = ",
        ),
    ],
)
def test_create_racing_the_deletion_of_its_account_gets_401(
    client: TestClient, user_headers: dict[str, str], path: str, body: dict[str, str], pattern: str
) -> None:
    """The caller was authenticated, then their account went: the foreign key refuses the
    new row, and the answer is the deleted user's 401."""
    response = race(
        client,
        pattern,
        lambda: client.post(f"{API}/{path}/", headers=user_headers, json=body),
        lambda: client.delete(f"{API}/users/me", headers=user_headers),
    )
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN


def test_recovery_racing_the_deletion_of_its_account_sends_nothing_and_logs_no_traceback(
    client: TestClient, user_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The background task found the account, which went before the reset mail was recorded."""
    caplog.clear()
    response = race(
        client,
        f"^SELECT {USER}.id\\s+FROM {USER}\\s+WHERE {USER}.id = ",
        lambda: client.post(f"{API}/auth/password-recovery", json={"email": "ada@example.com"}),
        lambda: client.delete(f"{API}/users/me", headers=user_headers),
    )
    assert response.status_code == 202, response.text
    assert "subject: Password recovery" not in caplog.text  # no mail
    assert not [record for record in caplog.records if record.levelname == "ERROR" or record.exc_info]


def test_password_set_from_a_revoked_stamp_changes_nothing(client: TestClient, settings: Settings) -> None:
    """`auth.set_password` is a compare-and-set on the stamp its caller's token carried: once
    another change has replaced that stamp, a change from it (a used reset token, a revoked
    access token) stores nothing, and the later password stays."""
    signup(client, "ada")
    engine = engine_of(client)
    with Session(engine, expire_on_commit=False) as stale, Session(engine) as other:
        user = stale.exec(select(User).where(User.username == "ada")).one()
        read_stamp = user.security_stamp  # what a token issued now carries
        stale.commit()
        fresh = other.get(User, user.id)
        assert fresh is not None
        assert auth.set_password(other, fresh, "changed elsewhere", settings.BCRYPT_ROUNDS, from_stamp=read_stamp)
        other.commit()
        assert not auth.set_password(stale, user, "from the old stamp", settings.BCRYPT_ROUNDS, from_stamp=read_stamp)
        stale.commit()
    login(client, "ada", "changed elsewhere")


def test_superusers_demoting_each_other_at_once_leave_one(
    client: TestClient, superuser_headers: dict[str, str]
) -> None:
    """Two superusers each demoting the other at the same moment: the database lets one
    through; the other gets 400, or 403 when its caller was demoted first; one remains."""
    other_id, other_headers = promote(client, superuser_headers, "bob")
    responses = run_at_once(
        [
            lambda: client.patch(f"{API}/users/{other_id}", headers=superuser_headers, json={"is_superuser": False}),
            lambda: client.patch(f"{API}/users/1", headers=other_headers, json={"is_superuser": False}),
        ]
    )
    assert sorted(response.status_code for response in responses) in ([200, 400], [200, 403])
    listing = client.get(f"{API}/users/", headers=superuser_headers)
    if listing.status_code == 403:
        listing = client.get(f"{API}/users/", headers=other_headers)
    assert [user["is_superuser"] for user in listing.json()["data"]] in ([True, False], [False, True])
