"""Tests of the users, auth and items API (SPEC sections 3 to 5), one behaviour each.

The file a workshop reads: the happy path first, then each endpoint with its tables of bad
input. Fixtures and helpers come from conftest.py: every test runs on a fresh database,
and speaks to the app only through HTTP. Tests that look behind the API (patched bcrypt,
paused requests, sessions of their own) live in tests/.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from config import Settings
from conftest import (
    DEFAULT_PASSWORD,
    SUPERUSER_EMAIL,
    SUPERUSER_PASSWORD,
    MakeSettings,
    json_body_fields,
    login,
    newest_session_id,
    promote,
    security_stamp,
    signup,
)
from main import create_app

API = "/api/v1"
USER_FIELDS = {"id", "email", "username", "full_name", "is_active", "is_superuser", "created_at", "updated_at"}
ITEM_FIELDS = {"id", "title", "description", "owner_id", "created_at", "updated_at"}
BAD_CREDENTIALS = {"detail": "Incorrect username or password"}
BAD_TOKEN = {"detail": "Could not validate credentials"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_items(client: TestClient, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    items = []
    for number in range(count):
        response = client.post(f"{API}/items/", headers=headers, json={"title": f"item {number}"})
        assert response.status_code == 201, response.text
        items.append(response.json())
    return items


def assert_utc(timestamp: str) -> None:
    """ISO 8601 with an explicit UTC offset, as SPEC 3 asks of every datetime."""
    assert timestamp.endswith(("Z", "+00:00")), timestamp
    assert datetime.fromisoformat(timestamp).utcoffset() == timedelta(0)


# --- The happy path ------------------------------------------------------------------


def test_sign_up_log_in_read_me_and_create_an_item(client: TestClient) -> None:
    """What a client does first: sign up, log in, read its account, create and read an item."""
    signed_up = client.post(
        f"{API}/users/", json={"email": "ada@example.com", "username": "ada", "password": DEFAULT_PASSWORD}
    )
    assert signed_up.status_code == 201, signed_up.text
    logged_in = client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
    assert logged_in.status_code == 200, logged_in.text
    headers = bearer(logged_in.json()["access_token"])

    me = client.get(f"{API}/users/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json() == signed_up.json()

    created = client.post(f"{API}/items/", headers=headers, json={"title": "Buy milk"})
    assert created.status_code == 201, created.text
    assert created.json()["owner_id"] == me.json()["id"]
    listed = client.get(f"{API}/items/", headers=headers)
    assert listed.json() == {"data": [created.json()], "count": 1}


def test_without_a_token_the_api_answers_401(client: TestClient) -> None:
    """No Authorization header: 401 and WWW-Authenticate: Bearer."""
    response = client.get(f"{API}/users/me")
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_reports_ok_when_the_database_answers(client: TestClient) -> None:
    """GET /health is 200 with status ok."""
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok"}


# --- Sign-up ---------------------------------------------------------------------------


def test_signup_returns_the_public_user(client: TestClient) -> None:
    """201 with exactly the public fields; email lower-cased, username kept as given."""
    response = client.post(
        f"{API}/users/",
        json={"email": "Ada@Example.COM", "username": "Ada.L", "password": DEFAULT_PASSWORD, "full_name": "Ada"},
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == USER_FIELDS
    assert user["email"] == "ada@example.com"
    assert user["username"] == "Ada.L"
    assert user["full_name"] == "Ada"
    assert user["is_active"] is True and user["is_superuser"] is False
    assert_utc(user["created_at"])
    assert_utc(user["updated_at"])


def test_signup_ignores_fields_a_client_may_not_set(client: TestClient) -> None:
    """id, is_active, is_superuser and timestamps in the body change nothing."""
    body = {
        "email": "eve@example.com",
        "username": "eve",
        "password": DEFAULT_PASSWORD,
        "id": 999,
        "is_superuser": True,
        "is_active": False,
        "created_at": "2000-01-01T00:00:00Z",
        "hashed_password": "x",
    }
    response = client.post(f"{API}/users/", json=body)
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["id"] != 999 and user["is_superuser"] is False and user["is_active"] is True
    assert not user["created_at"].startswith("2000")
    login(client, "eve")


def test_signup_duplicate_email_in_any_case_gets_400(client: TestClient) -> None:
    """Emails are unique regardless of case."""
    signup(client, "ada")
    response = client.post(
        f"{API}/users/", json={"email": "ADA@example.com", "username": "other", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Email already registered"}


def test_signup_duplicate_username_in_any_case_gets_400(client: TestClient) -> None:
    """Usernames are unique regardless of case."""
    signup(client, "ada")
    response = client.post(
        f"{API}/users/", json={"email": "other@example.com", "username": "ADA", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Username already taken"}


def test_signup_accepts_a_password_of_exactly_72_bytes(client: TestClient) -> None:
    """36 two-byte characters are 72 bytes: the longest password bcrypt reads."""
    signup(client, "ada", password="é" * 36)
    login(client, "ada", "é" * 36)


VALID_SIGNUP = {"email": "new@example.com", "username": "newbie", "password": DEFAULT_PASSWORD}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": None}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 51}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "at@sign"}, "username"),
        ({"password": "short7b"}, "password"),
        ({"password": "é" * 36 + "x"}, "password"),
        ({"password": "a" * 73}, "password"),
        ({"full_name": "x" * 256}, "full_name"),
        ({"full_name": "nul\u0000byte"}, "full_name"),
        ({"username": None}, "username"),
    ],
)
def test_signup_invalid_field_gets_422(client: TestClient, changes: dict[str, Any], field: str) -> None:
    """Each bad field is a 422 naming it, and no user is created."""
    response = client.post(f"{API}/users/", json=VALID_SIGNUP | changes)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    assert (
        client.post(f"{API}/auth/login", data={"username": "newbie", "password": DEFAULT_PASSWORD}).status_code == 401
    )


@pytest.mark.parametrize("missing", ["email", "username", "password"])
def test_signup_missing_field_gets_422(client: TestClient, missing: str) -> None:
    """email, username and password are required."""
    body = {key: value for key, value in VALID_SIGNUP.items() if key != missing}
    response = client.post(f"{API}/users/", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", missing]


@pytest.mark.parametrize(
    "raw_body",
    [
        b'{"email": "x@example.com", "username": "lone", "password": "\\ud800\\ud800abcdefgh"}',
        b'{"email": "x@example.com", "username": "lone", "password": "abcdefgh", "full_name": "\\udfff"}',
        b'{"email": "x@example.com", "username": "lone", "password": "\xff\xfe"}',
        b'{"email": ',
        b"[1, 2, 3]",
        b'"just a string"',
    ],
)
def test_signup_malformed_body_gets_4xx_json_not_500(client: TestClient, raw_body: bytes) -> None:
    """Lone surrogates, bad UTF-8 and broken JSON get a JSON 4xx with a detail."""
    response = client.post(f"{API}/users/", content=raw_body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()


def test_hand_raised_and_framework_422_have_the_same_shape(client: TestClient) -> None:
    """Our 422 handler keeps FastAPI's body: a list of errors with loc, msg and type."""
    response = client.post(f"{API}/users/", json={})
    assert response.status_code == 422
    for error in response.json()["detail"]:
        assert {"loc", "msg", "type"} <= set(error)


# --- Login -----------------------------------------------------------------------------


def test_login_with_username_returns_a_bearer_token(client: TestClient) -> None:
    """200 with access_token, token_type bearer and expires_in in whole seconds."""
    signup(client, "ada")
    response = client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60 and type(body["expires_in"]) is int


def test_login_accepts_email_or_username_in_any_case(client: TestClient) -> None:
    """The username field takes the username or the email, case-insensitively."""
    signup(client, "Ada")
    for name in ("Ada", "ada", "ADA", "ada@example.com", "ADA@Example.com"):
        login(client, name)


def test_login_token_has_the_spec_claims(client: TestClient, settings: Settings) -> None:
    """sub is the user id as a string; exp, iat and a token type are present."""
    user = signup(client, "ada")
    token = login(client, "ada")["Authorization"].split()[1]
    claims = jwt.decode(token, settings.SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == str(user["id"])
    assert claims["type"] == "access"
    assert claims["exp"] - claims["iat"] == 30 * 60


def test_login_unknown_user_and_wrong_password_get_the_same_401(client: TestClient) -> None:
    """Same status, body and header: a login attempt does not reveal which accounts exist."""
    signup(client, "ada")
    wrong = client.post(f"{API}/auth/login", data={"username": "ada", "password": "wrong password"})
    unknown = client.post(f"{API}/auth/login", data={"username": "nobody", "password": "wrong password"})
    for response in (wrong, unknown):
        assert response.status_code == 401, response.text
        assert response.json() == BAD_CREDENTIALS
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_login_with_password_over_72_bytes_gets_401(client: TestClient) -> None:
    """bcrypt 5 raises on long input; login answers 401, never 500."""
    signup(client, "ada")
    response = client.post(f"{API}/auth/login", data={"username": "ada", "password": "x" * 100})
    assert response.status_code == 401, response.text
    assert response.json() == BAD_CREDENTIALS


def test_login_with_nul_byte_username_gets_401(client: TestClient) -> None:
    """A NUL byte never reaches the database (PostgreSQL refuses it)."""
    response = client.post(f"{API}/auth/login", data={"username": "ada\x00", "password": DEFAULT_PASSWORD})
    assert response.status_code == 401, response.text


def test_login_of_inactive_user_gets_403(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """A deactivated user with the right password gets 403."""
    user = signup(client, "ada")
    client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={"is_active": False})
    response = client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "Inactive user"}


@pytest.mark.parametrize("form", [{}, {"username": "ada"}, {"password": DEFAULT_PASSWORD}])
def test_login_missing_form_field_gets_422(client: TestClient, form: dict[str, str]) -> None:
    """username and password are both required."""
    response = client.post(f"{API}/auth/login", data=form)
    assert response.status_code == 422, response.text


# --- Access tokens ---------------------------------------------------------------------


def make_token(
    client: TestClient,
    settings: Settings,
    *,
    key: str | None = None,
    algorithm: str = "HS256",
    expires_in: int = 300,
    **claims: Any,
) -> str:
    """An access token of the superuser (id 1) in their newest session, signed with the app's
    key; the arguments change it, and a claim given as None is left out."""
    now = datetime.now(UTC)
    live = {"stamp": security_stamp(client, 1), "sid": newest_session_id(client, 1)}
    payload = {"sub": "1", "type": "access", "iat": now, "exp": now + timedelta(seconds=expires_in)} | live | claims
    signing_key = "" if algorithm == "none" else settings.SECRET_KEY if key is None else key
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, signing_key, algorithm=algorithm)


# How each bad token differs from a valid one: `make_token`'s arguments, or a token of its own.
BAD_ACCESS_TOKENS = [
    pytest.param({"token": "not-a-jwt"}, id="garbage"),
    pytest.param({"expires_in": -1}, id="expired"),
    pytest.param({"tampered": True}, id="tampered"),
    pytest.param({"algorithm": "none"}, id="alg-none"),
    pytest.param({"algorithm": "HS512"}, id="other-algorithm"),
    pytest.param({"key": "another key long enough for hs256!"}, id="other-key"),
    pytest.param({"type": "reset"}, id="reset-type"),
    pytest.param({"type": "refresh"}, id="refresh-type"),
    pytest.param({"type": None}, id="no-type"),
    pytest.param({"sid": None}, id="no-session"),
    pytest.param({"sid": 999_999}, id="other-session"),
    pytest.param({"exp": None}, id="no-exp"),
    pytest.param({"sub": None}, id="no-sub"),
    pytest.param({"sub": "abc"}, id="sub-not-an-id"),
    pytest.param({"sub": str(2**70)}, id="sub-beyond-64-bits"),
    pytest.param({"stamp": "0" * 32}, id="revoked-stamp"),
]


@pytest.mark.parametrize("bad", BAD_ACCESS_TOKENS)
def test_bad_access_token_gets_401(client: TestClient, settings: Settings, bad: dict[str, Any]) -> None:
    """Every kind of bad token gets the same 401 with the Bearer challenge."""
    signup(client, "ada")  # user id 2 (the superuser is 1): tokens for sub 1 would be valid otherwise
    login(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
    changes = dict(bad)
    token = changes.pop("token", None)
    tampered = changes.pop("tampered", False)
    token = token or make_token(client, settings, **changes)
    response = client.get(f"{API}/users/me", headers=bearer(token[:-2] + "xx" if tampered else token))
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_token_crafted_with_the_right_claims_is_accepted(client: TestClient, settings: Settings) -> None:
    """The control for the table above: the same helper with no change passes."""
    login(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
    response = client.get(f"{API}/users/me", headers=bearer(make_token(client, settings)))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == SUPERUSER_EMAIL


def test_token_of_deleted_user_gets_401(client: TestClient, user_headers: dict[str, str]) -> None:
    """Deleting the account invalidates its tokens."""
    assert client.delete(f"{API}/users/me", headers=user_headers).status_code == 204
    response = client.get(f"{API}/users/me", headers=user_headers)
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN


def test_deactivation_ends_every_token_for_good(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """A token of a user deactivated since it was issued gets 401, and reactivating the
    user brings none back: they log in again."""
    user = signup(client, "ada")
    headers = login(client, "ada")
    client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={"is_active": False})
    assert client.get(f"{API}/users/me", headers=headers).json() == BAD_TOKEN
    client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={"is_active": True})
    response = client.get(f"{API}/users/me", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN
    assert client.get(f"{API}/users/me", headers=login(client, "ada")).status_code == 200


def test_token_of_deleted_account_does_not_open_the_next_signup(client: TestClient) -> None:
    """Ids are never reused: the next account gets a new id, and the old token gets 401."""
    ada = signup(client, "ada")
    headers = login(client, "ada")
    assert client.delete(f"{API}/users/me", headers=headers).status_code == 204
    mallory = signup(client, "mallory")
    assert mallory["id"] > ada["id"]
    response = client.get(f"{API}/users/me", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == BAD_TOKEN


@pytest.mark.parametrize("path", ["items", "notifications"])
def test_ids_of_deleted_rows_are_never_reused(client: TestClient, user_headers: dict[str, str], path: str) -> None:
    """Deleting the newest item (or notification, with its owner) never frees its id."""
    body = {"title": "first"} if path == "items" else {"email": "bob@example.com", "subject": "s", "message": "m"}
    first = client.post(f"{API}/{path}/", headers=user_headers, json=body).json()
    if path == "items":
        client.delete(f"{API}/items/{first['id']}", headers=user_headers)
    else:
        client.delete(f"{API}/users/me", headers=user_headers)
        user_headers = signup(client, "bob") and login(client, "bob")
    second = client.post(f"{API}/{path}/", headers=user_headers, json=body).json()
    assert second["id"] > first["id"]


# --- /users/me -------------------------------------------------------------------------


def test_read_me_returns_the_caller(client: TestClient, user_headers: dict[str, str]) -> None:
    """GET /users/me is the caller's public user."""
    response = client.get(f"{API}/users/me", headers=user_headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == USER_FIELDS
    assert response.json()["username"] == "ada"


def test_update_me_changes_only_what_is_sent(client: TestClient, user_headers: dict[str, str]) -> None:
    """PATCH /users/me updates the given fields, lower-cases email, bumps updated_at."""
    before = client.get(f"{API}/users/me", headers=user_headers).json()
    response = client.patch(
        f"{API}/users/me",
        headers=user_headers,
        json={"full_name": "Ada L", "email": "NEW@Example.com", "current_password": DEFAULT_PASSWORD},
    )
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["full_name"] == "Ada L" and after["email"] == "new@example.com"
    assert after["username"] == "ada"
    assert after["updated_at"] > before["updated_at"]
    assert after["created_at"] == before["created_at"]


def test_update_me_cannot_grant_privileges(client: TestClient, user_headers: dict[str, str]) -> None:
    """is_superuser, is_active and id in the body are ignored."""
    response = client.patch(
        f"{API}/users/me", headers=user_headers, json={"is_superuser": True, "is_active": False, "id": 1}
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_superuser"] is False and response.json()["is_active"] is True
    assert response.json()["id"] != 1


def test_update_me_full_name_can_be_cleared(client: TestClient) -> None:
    """full_name is nullable: an explicit null clears it."""
    signup(client, "ada", full_name="Ada")
    response = client.patch(f"{API}/users/me", headers=login(client, "ada"), json={"full_name": None})
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] is None


@pytest.mark.parametrize("field", ["email", "username"])
def test_update_me_explicit_null_for_required_field_gets_422(
    client: TestClient, user_headers: dict[str, str], field: str
) -> None:
    """null for a non-nullable column is a 422, not a 500 at commit."""
    response = client.patch(f"{API}/users/me", headers=user_headers, json={field: None})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"email": "BOB@example.com", "current_password": DEFAULT_PASSWORD}, "Email already registered"),
        ({"username": "Bob"}, "Username already taken"),
    ],
)
def test_update_me_to_another_users_email_or_username_gets_400(
    client: TestClient, user_headers: dict[str, str], changes: dict[str, str], detail: str
) -> None:
    """Uniqueness holds on update too, in any case."""
    signup(client, "bob")
    response = client.patch(f"{API}/users/me", headers=user_headers, json=changes)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": detail}


def test_update_me_to_own_email_and_username_is_fine(client: TestClient, user_headers: dict[str, str]) -> None:
    """Sending back one's own values is no duplicate."""
    response = client.patch(
        f"{API}/users/me", headers=user_headers, json={"email": "ada@example.com", "username": "ADA"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "ADA"


def test_update_me_requires_a_token(client: TestClient) -> None:
    """401 without a token."""
    assert client.patch(f"{API}/users/me", json={"full_name": "x"}).status_code == 401


def test_update_password_me_changes_the_password(client: TestClient, user_headers: dict[str, str]) -> None:
    """200, then only the new password logs in."""
    response = client.patch(
        f"{API}/users/me/password",
        headers=user_headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new password"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Password updated"}
    login(client, "ada", "a brand new password")
    assert client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD}).status_code == 401


def test_update_password_me_revokes_earlier_tokens(client: TestClient, user_headers: dict[str, str]) -> None:
    """Tokens issued before a password change get 401; a new login works."""
    second_session = login(client, "ada")
    client.patch(
        f"{API}/users/me/password",
        headers=user_headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new password"},
    )
    for headers in (user_headers, second_session):
        response = client.get(f"{API}/users/me", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json() == BAD_TOKEN
    fresh = login(client, "ada", "a brand new password")
    assert client.get(f"{API}/users/me", headers=fresh).status_code == 200


def test_update_password_me_with_wrong_current_password_gets_400(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    """400 and the password stays."""
    response = client.patch(
        f"{API}/users/me/password",
        headers=user_headers,
        json={"current_password": "not my password", "new_password": "a brand new password"},
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Incorrect password"}
    login(client, "ada")


def test_update_password_me_with_too_long_new_password_gets_422(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    """A new password over 72 bytes is a clear 422."""
    response = client.patch(
        f"{API}/users/me/password",
        headers=user_headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "🔑" * 19},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "new_password"]
    assert "72 bytes" in response.json()["detail"][0]["msg"]


def test_delete_me_removes_the_user_with_items(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    """204, and the user's items go too (foreign keys on, also on SQLite; their notifications:
    tests/test_emails.py)."""
    create_items(client, user_headers, 3)
    response = client.delete(f"{API}/users/me", headers=user_headers)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert client.get(f"{API}/items/", headers=superuser_headers).json() == {"data": [], "count": 0}


# --- /users (superuser) ---------------------------------------------------------------


def test_read_users_lists_everyone_by_id_with_total_count(
    client: TestClient, superuser_headers: dict[str, str]
) -> None:
    """{data, count}: count is the total, data the page, ordered by id."""
    for name in ("bob", "cyd", "dee"):
        signup(client, name)
    response = client.get(f"{API}/users/", headers=superuser_headers, params={"skip": 1, "limit": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 4
    assert [user["username"] for user in body["data"]] == ["bob", "cyd"]


def test_read_users_as_ordinary_user_gets_403(client: TestClient, user_headers: dict[str, str]) -> None:
    """Only superusers list users."""
    response = client.get(f"{API}/users/", headers=user_headers)
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "Not enough privileges"}


@pytest.mark.parametrize(
    "params", [{"skip": -1}, {"limit": 0}, {"limit": 101}, {"skip": 2**63}, {"skip": "x"}, {"limit": 10**30}]
)
def test_pagination_out_of_range_gets_422(
    client: TestClient, superuser_headers: dict[str, str], params: dict[str, Any]
) -> None:
    """skip >= 0 (up to 64 bits), 1 <= limit <= 100."""
    for path in ("/users/", "/items/", "/notifications/"):
        response = client.get(f"{API}{path}", headers=superuser_headers, params=params)
        assert response.status_code == 422, (path, response.text)


def test_pagination_largest_skip_gives_an_empty_page(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """The largest 64-bit skip is valid and just finds nothing."""
    response = client.get(f"{API}/users/", headers=superuser_headers, params={"skip": 2**63 - 1, "limit": 100})
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [], "count": 1}


def test_read_user_by_id_self_is_allowed(client: TestClient) -> None:
    """An ordinary user may read their own record by id."""
    user = signup(client, "ada")
    response = client.get(f"{API}/users/{user['id']}", headers=login(client, "ada"))
    assert response.status_code == 200, response.text
    assert response.json() == user | {"updated_at": response.json()["updated_at"]}


@pytest.mark.parametrize("other_id", [1, 9999, 0, -1, 2**63 - 1])
def test_read_user_by_id_of_another_gets_403_existing_or_not(
    client: TestClient, user_headers: dict[str, str], other_id: int
) -> None:
    """403 for someone else's id whether it exists (1: the superuser) or not."""
    response = client.get(f"{API}/users/{other_id}", headers=user_headers)
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "Not enough privileges"}


def test_read_user_by_id_as_superuser(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """A superuser reads anyone; a missing id is 404."""
    user = signup(client, "ada")
    assert client.get(f"{API}/users/{user['id']}", headers=superuser_headers).json()["username"] == "ada"
    for missing_id in (9999, 0, -(2**63), 2**63 - 1):
        response = client.get(f"{API}/users/{missing_id}", headers=superuser_headers)
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("bad_id", [str(2**63), str(-(2**63) - 1), str(2**64), "abc"])
def test_user_id_out_of_range_gets_422(client: TestClient, superuser_headers: dict[str, str], bad_id: str) -> None:
    """Ids beyond 64 bits never reach the database (the driver would overflow)."""
    assert client.get(f"{API}/users/{bad_id}", headers=superuser_headers).status_code == 422


def test_update_user_as_superuser(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """A superuser may change flags and profile fields."""
    user = signup(client, "ada")
    response = client.patch(
        f"{API}/users/{user['id']}",
        headers=superuser_headers,
        json={"is_superuser": True, "full_name": "Admin Ada", "username": "ada2"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["is_superuser"] is True and body["full_name"] == "Admin Ada" and body["username"] == "ada2"


def test_update_user_password_as_superuser_revokes_tokens(
    client: TestClient, superuser_headers: dict[str, str]
) -> None:
    """A superuser setting a password revokes the user's earlier tokens."""
    user = signup(client, "ada")
    headers = login(client, "ada")
    response = client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={"password": "set by admin 1"})
    assert response.status_code == 200, response.text
    assert client.get(f"{API}/users/me", headers=headers).status_code == 401
    login(client, "ada", "set by admin 1")


def test_update_user_as_ordinary_user_gets_403(client: TestClient, user_headers: dict[str, str]) -> None:
    """Only superusers update others."""
    response = client.patch(f"{API}/users/1", headers=user_headers, json={"is_superuser": False})
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "Not enough privileges"}


def test_update_missing_user_gets_404(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """404 for an id that does not exist."""
    response = client.patch(f"{API}/users/9999", headers=superuser_headers, json={"full_name": "x"})
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "User not found"}


def test_update_user_to_duplicate_email_gets_400(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """Uniqueness holds for superuser updates too."""
    user = signup(client, "ada")
    response = client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={"email": SUPERUSER_EMAIL})
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Email already registered"}


@pytest.mark.parametrize("field", ["email", "username", "is_active", "is_superuser", "password"])
def test_update_user_explicit_null_gets_422(client: TestClient, superuser_headers: dict[str, str], field: str) -> None:
    """null for a non-nullable field is a 422."""
    user = signup(client, "ada")
    response = client.patch(f"{API}/users/{user['id']}", headers=superuser_headers, json={field: None})
    assert response.status_code == 422, response.text


# Every integer and boolean field of every JSON body (read from the OpenAPI schema, so a field
# added later is covered too), with values of other JSON types that lax parsing would accept.
OTHER_TYPES = {"boolean": [1, 0, "true", "false", "1"], "integer": [False, True, "1", 1.5]}
STRICT_FIELDS = [
    pytest.param(method, path, body | {field: value}, id=f"{method} {path} {field}={value!r}")
    for method, path, body, field, types in json_body_fields()
    for json_type in sorted(types & OTHER_TYPES.keys())
    for value in OTHER_TYPES[json_type]
]


@pytest.mark.parametrize(("method", "path", "body"), STRICT_FIELDS)
def test_integer_and_boolean_body_fields_are_strict(
    client: TestClient, superuser_headers: dict[str, str], method: str, path: str, body: dict[str, Any]
) -> None:
    """`false` is not 0 and "1" is not true: a 422, and the route never runs (SPEC 4)."""
    url = API + re.sub(r"\{[^}]+\}", "1", path)  # the superuser's own id: validation comes first
    response = client.request(method, url, headers=superuser_headers, json=body)
    assert response.status_code == 422, response.text


def test_delete_user_as_superuser_removes_their_items(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """204, then the user is 404 and their items are gone."""
    user = signup(client, "ada")
    create_items(client, login(client, "ada"), 2)
    response = client.delete(f"{API}/users/{user['id']}", headers=superuser_headers)
    assert response.status_code == 204, response.text
    assert client.get(f"{API}/users/{user['id']}", headers=superuser_headers).status_code == 404
    assert client.get(f"{API}/items/", headers=superuser_headers).json()["count"] == 0


def test_delete_user_as_ordinary_user_gets_403(client: TestClient, user_headers: dict[str, str]) -> None:
    """Only superusers delete others."""
    response = client.delete(f"{API}/users/1", headers=user_headers)
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "Not enough privileges"}


def test_delete_missing_user_gets_404(client: TestClient, superuser_headers: dict[str, str]) -> None:
    """404 for an id that does not exist."""
    response = client.delete(f"{API}/users/9999", headers=superuser_headers)
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "User not found"}


def test_first_superuser_is_created_once(make_settings: MakeSettings) -> None:
    """Starting three times on the same database leaves one user, the superuser."""
    settings = make_settings()
    for _ in range(2):
        with TestClient(create_app(settings)):
            pass
    with TestClient(create_app(settings)) as client:
        headers = login(client, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
        listing = client.get(f"{API}/users/", headers=headers).json()
    assert listing["count"] == 1
    assert listing["data"][0]["is_superuser"] is True


# --- Items -----------------------------------------------------------------------------


def test_create_item_is_owned_by_the_caller(client: TestClient, user_headers: dict[str, str]) -> None:
    """201 with the public item; owner_id and id in the body are ignored."""
    me = client.get(f"{API}/users/me", headers=user_headers).json()
    response = client.post(
        f"{API}/items/", headers=user_headers, json={"title": "Milk", "description": "2 l", "owner_id": 1, "id": 77}
    )
    assert response.status_code == 201, response.text
    item = response.json()
    assert set(item) == ITEM_FIELDS
    assert item["owner_id"] == me["id"] and item["id"] != 77
    assert item["title"] == "Milk" and item["description"] == "2 l"
    assert_utc(item["created_at"])
    assert_utc(item["updated_at"])


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "x" * 256},
        {"title": None},
        {"title": 5},
        {"title": "ok", "description": "x" * 1001},
        {"title": "nul \u0000"},
        {"title": "ok", "description": "nul \u0000"},
    ],
)
def test_create_item_invalid_body_gets_422(
    client: TestClient, user_headers: dict[str, str], body: dict[str, Any]
) -> None:
    """title 1-255 characters, description up to 1000, no NUL; nothing is stored."""
    response = client.post(f"{API}/items/", headers=user_headers, json=body)
    assert response.status_code == 422, response.text
    assert client.get(f"{API}/items/", headers=user_headers).json()["count"] == 0


def test_create_item_accepts_the_longest_title_and_description(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    """The limits are inclusive."""
    response = client.post(f"{API}/items/", headers=user_headers, json={"title": "x" * 255, "description": "y" * 1000})
    assert response.status_code == 201, response.text


def test_every_secured_operation_without_a_token_gets_401_with_bearer_challenge(client: TestClient) -> None:
    """Every operation the schema marks as secured answers 401 `Not authenticated` and
    `WWW-Authenticate: Bearer` when no token is sent."""
    schema = client.get(f"{API}/openapi.json").json()
    secured = [
        (method, re.sub(r"\{\w+\}", "1", path))  # any id: the token is checked first
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    ]
    assert len(secured) >= 15
    for method, path in secured:
        response = client.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == {"detail": "Not authenticated"}, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer", (method, path)


def test_listings_default_to_the_first_100_rows_with_the_total_count(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    """Without skip and limit a listing is rows 1 to 100 by id; count is the total (SPEC 4)."""
    created = create_items(client, user_headers, 101)
    body = client.get(f"{API}/items/", headers=user_headers).json()
    assert body["count"] == 101
    assert [item["id"] for item in body["data"]] == [item["id"] for item in created[:100]]


def test_items_require_a_token(client: TestClient) -> None:
    """Every items route is 401 without a token."""
    for method, path in (
        ("get", "/items/"),
        ("post", "/items/"),
        ("get", "/items/1"),
        ("patch", "/items/1"),
        ("delete", "/items/1"),
    ):
        response = client.request(method, f"{API}{path}", json={"title": "x"})
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_read_items_lists_own_items_by_id_with_total_count(client: TestClient, user_headers: dict[str, str]) -> None:
    """Only the caller's items, ordered by id; count is the total."""
    signup(client, "bob")
    create_items(client, login(client, "bob"), 2)
    mine = create_items(client, user_headers, 5)
    response = client.get(f"{API}/items/", headers=user_headers, params={"skip": 1, "limit": 3})
    assert response.status_code == 200, response.text
    assert response.json() == {"data": mine[1:4], "count": 5}


def test_read_items_as_superuser_lists_everyones(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    """A superuser sees all items."""
    create_items(client, user_headers, 2)
    create_items(client, superuser_headers, 1)
    assert client.get(f"{API}/items/", headers=superuser_headers).json()["count"] == 3


def test_read_item_of_owner(client: TestClient, user_headers: dict[str, str]) -> None:
    """The owner reads their item."""
    [item] = create_items(client, user_headers, 1)
    response = client.get(f"{API}/items/{item['id']}", headers=user_headers)
    assert response.status_code == 200, response.text
    assert response.json() == item


def test_read_item_of_another_user_gets_404(client: TestClient, user_headers: dict[str, str]) -> None:
    """Someone else's item is 404, as if it did not exist."""
    signup(client, "bob")
    [item] = create_items(client, login(client, "bob"), 1)
    for method in ("get", "patch", "delete"):
        response = client.request(method, f"{API}/items/{item['id']}", headers=user_headers, json={"title": "mine"})
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "Item not found"}


def test_missing_item_gets_404(client: TestClient, user_headers: dict[str, str]) -> None:
    """An id with no item is 404 for read, update and delete."""
    for method in ("get", "patch", "delete"):
        for missing_id in (9999, 0, -1, 2**63 - 1):
            response = client.request(method, f"{API}/items/{missing_id}", headers=user_headers, json={"title": "x"})
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "Item not found"}


def test_superuser_reads_updates_and_deletes_any_item(
    client: TestClient, user_headers: dict[str, str], superuser_headers: dict[str, str]
) -> None:
    """Owner or superuser: the superuser passes every item check."""
    [item] = create_items(client, user_headers, 1)
    url = f"{API}/items/{item['id']}"
    assert client.get(url, headers=superuser_headers).status_code == 200
    assert client.patch(url, headers=superuser_headers, json={"title": "by root"}).json()["title"] == "by root"
    assert client.delete(url, headers=superuser_headers).status_code == 204


def test_update_item_changes_only_what_is_sent(client: TestClient, user_headers: dict[str, str]) -> None:
    """PATCH keeps unsent fields, may clear description, bumps updated_at."""
    item = client.post(f"{API}/items/", headers=user_headers, json={"title": "a", "description": "b"}).json()
    response = client.patch(f"{API}/items/{item['id']}", headers=user_headers, json={"description": None})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "a" and updated["description"] is None
    assert updated["updated_at"] > item["updated_at"] and updated["created_at"] == item["created_at"]


@pytest.mark.parametrize("body", [{"title": None}, {"title": ""}, {"title": "x" * 256}, {"owner_id": "x", "title": 1}])
def test_update_item_invalid_body_gets_422(
    client: TestClient, user_headers: dict[str, str], body: dict[str, Any]
) -> None:
    """An explicit null title is a 422, like any invalid value; the item stays."""
    [item] = create_items(client, user_headers, 1)
    response = client.patch(f"{API}/items/{item['id']}", headers=user_headers, json=body)
    assert response.status_code == 422, response.text
    assert client.get(f"{API}/items/{item['id']}", headers=user_headers).json() == item


def test_update_item_cannot_change_owner(client: TestClient, user_headers: dict[str, str]) -> None:
    """owner_id in a PATCH body is ignored."""
    [item] = create_items(client, user_headers, 1)
    response = client.patch(f"{API}/items/{item['id']}", headers=user_headers, json={"owner_id": 1, "title": "t"})
    assert response.status_code == 200, response.text
    assert response.json()["owner_id"] == item["owner_id"]


def test_delete_item_removes_it(client: TestClient, user_headers: dict[str, str]) -> None:
    """204 with no body, then 404."""
    [item] = create_items(client, user_headers, 1)
    response = client.delete(f"{API}/items/{item['id']}", headers=user_headers)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert client.get(f"{API}/items/{item['id']}", headers=user_headers).status_code == 404


@pytest.mark.parametrize("bad_id", [str(2**63), str(-(2**63) - 1), str(2**64), "1.5"])
def test_item_id_out_of_range_gets_422(client: TestClient, user_headers: dict[str, str], bad_id: str) -> None:
    """Item ids beyond 64 bits never reach the database."""
    assert client.get(f"{API}/items/{bad_id}", headers=user_headers).status_code == 422


# --- Email changes, administrators, timing ----------------------------------------------


@pytest.mark.parametrize("password", [None, "wrong password"])
def test_update_me_email_without_the_right_current_password_gets_400(
    client: TestClient, user_headers: dict[str, str], password: str | None
) -> None:
    """A stolen token alone cannot move the account to another address."""
    body = {"email": "mallory@example.com"} | ({"current_password": password} if password else {})
    response = client.patch(f"{API}/users/me", headers=user_headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Incorrect password"}
    assert client.get(f"{API}/users/me", headers=user_headers).json()["email"] == "ada@example.com"


def test_update_me_other_fields_need_no_password(client: TestClient, user_headers: dict[str, str]) -> None:
    """Only an email change asks for the password."""
    response = client.patch(f"{API}/users/me", headers=user_headers, json={"username": "ada2", "full_name": "A"})
    assert response.status_code == 200, response.text


def test_update_me_email_notifies_the_old_address(client: TestClient, user_headers: dict[str, str]) -> None:
    """The old address hears of the change, through a notification of the account's."""
    body = {"email": "ada.new@example.com", "current_password": DEFAULT_PASSWORD}
    assert client.patch(f"{API}/users/me", headers=user_headers, json=body).status_code == 200
    notifications = client.get(f"{API}/notifications/", headers=user_headers).json()["data"]
    notice = notifications[-1]
    assert notice["email"] == "ada@example.com"
    assert notice["subject"] == "Your FastAPI Reference API email address was changed"
    assert notice["status"] == "sent"


LAST_SUPERUSER = {"detail": "Cannot remove the last superuser"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/users/1", {"is_superuser": False}),
        ("PATCH", "/users/1", {"is_active": False}),
        ("DELETE", "/users/1", None),
        ("DELETE", "/users/me", None),
    ],
)
def test_last_superuser_cannot_be_removed(
    client: TestClient, superuser_headers: dict[str, str], method: str, path: str, body: dict[str, bool] | None
) -> None:
    """The only active superuser cannot demote, deactivate or delete themselves: 400, and
    nothing changes."""
    response = client.request(method, f"{API}{path}", headers=superuser_headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json() == LAST_SUPERUSER
    me = client.get(f"{API}/users/me", headers=superuser_headers).json()
    assert me["is_superuser"] is True and me["is_active"] is True


def test_last_active_superuser_cannot_be_removed_by_another_superuser_who_is_inactive(
    client: TestClient, superuser_headers: dict[str, str]
) -> None:
    """An inactive superuser does not count: the active one stays."""
    other_id, other_headers = promote(client, superuser_headers, "bob")
    response = client.patch(f"{API}/users/1", headers=other_headers, json={"is_superuser": False})
    assert response.status_code == 200, response.text
    response = client.patch(f"{API}/users/{other_id}", headers=other_headers, json={"is_active": False})
    assert response.status_code == 400, response.text
    assert response.json() == LAST_SUPERUSER


def test_a_superuser_can_be_removed_while_another_remains(
    client: TestClient, superuser_headers: dict[str, str]
) -> None:
    """With two superusers, one may step down and the other may delete them."""
    other_id, other_headers = promote(client, superuser_headers, "bob")
    response = client.patch(f"{API}/users/{other_id}", headers=other_headers, json={"is_superuser": False})
    assert response.status_code == 200, response.text
    promote(client, superuser_headers, "carol")
    assert client.delete(f"{API}/users/me", headers=superuser_headers).status_code == 204


@pytest.mark.parametrize(
    ("taken", "setting"),
    [({"username": "admin"}, "FIRST_SUPERUSER_USERNAME"), ({"email": SUPERUSER_EMAIL}, "FIRST_SUPERUSER_EMAIL")],
)
def test_first_superuser_blocked_by_a_signed_up_user_is_a_warning_naming_the_setting(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture, taken: dict[str, str], setting: str
) -> None:
    """Someone who signed up with the superuser's username or email first: start-up says
    so at WARNING, naming the setting to change."""
    with TestClient(create_app(make_settings(FIRST_SUPERUSER_EMAIL="", FIRST_SUPERUSER_PASSWORD=""))) as client:
        signup(client, **({"username": "mallory", "email": "mallory@example.com"} | taken))
    caplog.clear()
    with TestClient(create_app(make_settings())):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "auth"]
    assert warnings == [f"First superuser not created: another user already has its {setting}"]
