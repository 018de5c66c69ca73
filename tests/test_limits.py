"""Tests of the abuse limits (SPEC 5): login throttling, the notification cap and the
recovery cap, all kept in the database.

Patterns shown:
- Time moved by editing rows (`age`), never by sleeping: a test that needs "15 minutes
  later" sets the stored timestamps back.
- Two app instances on one database stand for two workers; a third for a restart.

Imports: models, conftest, main.
"""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from conftest import DEFAULT_PASSWORD, MakeSettings, count_notifications, engine_of, login, signup
from main import create_app
from models import LoginFailure, Notification

API = "/api/v1"
WRONG_PASSWORD = "wrong password"
TOO_MANY_LOGINS = {"detail": "Too many failed logins, try again later"}
TOO_MANY_NOTIFICATIONS = {"detail": "Too many notifications, try again later"}


def try_login(client: TestClient, username: str, password: str = DEFAULT_PASSWORD) -> Any:
    """POST /auth/login; the response, whatever it is."""
    return client.post(f"{API}/auth/login", data={"username": username, "password": password})


def fail_logins(client: TestClient, username: str, times: int) -> None:
    """`times` wrong passwords for `username`, each an ordinary 401."""
    for _ in range(times):
        response = try_login(client, username, WRONG_PASSWORD)
        assert response.status_code == 401, response.text


def assert_throttled(response: Any) -> int:
    """A 429 with the SPEC's body; its `Retry-After` in whole seconds."""
    assert response.status_code == 429, response.text
    assert response.json() == TOO_MANY_LOGINS
    return int(response.headers["Retry-After"])


def age(client: TestClient, table: type[LoginFailure] | type[Notification], by: timedelta) -> None:
    """Move every stored failure or notification `by` into the past."""
    when = "failed_at" if table is LoginFailure else "created_at"
    with Session(engine_of(client)) as session:
        for row in session.exec(select(table)).all():
            setattr(row, when, getattr(row, when) - by)
            session.add(row)
        session.commit()


def change_email(client: TestClient, headers: dict[str, str], email: str, password: str = DEFAULT_PASSWORD) -> Any:
    """PATCH /users/me with a new email and `password` as the current one; the response."""
    return client.patch(f"{API}/users/me", headers=headers, json={"email": email, "current_password": password})


def change_password(client: TestClient, headers: dict[str, str], current_password: str) -> Any:
    """PATCH /users/me/password from `current_password` to a new one; the response."""
    body = {"current_password": current_password, "new_password": "a brand new password"}
    return client.patch(f"{API}/users/me/password", headers=headers, json=body)


# --- Login throttling -----------------------------------------------------------------


def test_login_after_max_failures_gets_429_even_with_the_right_password(client: TestClient) -> None:
    """Five failures within 15 minutes: the sixth login is refused, right password or not."""
    signup(client, "ada")
    fail_logins(client, "ada", 5)
    assert_throttled(try_login(client, "ada"))
    assert_throttled(try_login(client, "ada", WRONG_PASSWORD))


def test_login_below_max_failures_still_works(client: TestClient) -> None:
    """Four failures are not enough to lock."""
    signup(client, "ada")
    fail_logins(client, "ada", 4)
    assert try_login(client, "ada").status_code == 200


def test_successful_login_clears_the_failures(client: TestClient) -> None:
    """After a success, the count starts again from zero."""
    signup(client, "ada")
    fail_logins(client, "ada", 4)
    login(client, "ada")
    fail_logins(client, "ada", 4)
    login(client, "ada")


def test_username_and_email_of_one_account_share_the_count(client: TestClient) -> None:
    """Failures by username and by email (in any case) add up for the account."""
    signup(client, "ada")
    fail_logins(client, "ada", 2)
    fail_logins(client, "ADA@example.com", 2)
    fail_logins(client, "Ada", 1)
    assert_throttled(try_login(client, "ada@example.com"))


def test_unknown_login_is_throttled_alike(client: TestClient) -> None:
    """A login text that matches no account is counted by itself, lower-cased: an unknown
    account answers exactly as a known one does."""
    fail_logins(client, "nobody", 3)
    fail_logins(client, "NoBody", 2)
    assert_throttled(try_login(client, "nobody"))


def test_throttled_account_leaves_other_accounts_alone(client: TestClient) -> None:
    """One account locked, another logs in as usual."""
    signup(client, "ada")
    signup(client, "bob")
    fail_logins(client, "ada", 5)
    assert_throttled(try_login(client, "ada"))
    assert try_login(client, "bob").status_code == 200


def test_retry_after_counts_down_to_when_the_oldest_failure_leaves_the_window(client: TestClient) -> None:
    """`Retry-After` is the whole seconds until the oldest counted failure is
    LOGIN_LOCKOUT_MINUTES (15) old."""
    signup(client, "ada")
    fail_logins(client, "ada", 5)
    assert 15 * 60 - 5 <= assert_throttled(try_login(client, "ada")) <= 15 * 60
    age(client, LoginFailure, timedelta(minutes=14, seconds=30))
    assert 25 <= assert_throttled(try_login(client, "ada")) <= 30
    age(client, LoginFailure, timedelta(seconds=30))
    assert try_login(client, "ada").status_code == 200


def test_a_429_is_not_itself_a_failure(client: TestClient) -> None:
    """Logins refused with 429 add nothing: once the oldest failure leaves the window, the
    account is below the limit again, however many 429s came since."""
    signup(client, "ada")
    fail_logins(client, "ada", 1)
    age(client, LoginFailure, timedelta(minutes=10))
    fail_logins(client, "ada", 4)
    for _ in range(3):
        assert_throttled(try_login(client, "ada", WRONG_PASSWORD))
    age(client, LoginFailure, timedelta(minutes=5, seconds=1))
    assert try_login(client, "ada").status_code == 200


def test_throttled_login_spends_no_bcrypt_check(client: TestClient, bcrypt_checks: list[bytes]) -> None:
    """The lock is checked before the password: a guesser gets no bcrypt time at all."""
    signup(client, "ada")
    fail_logins(client, "ada", 5)
    bcrypt_checks.clear()
    assert_throttled(try_login(client, "ada"))
    assert_throttled(try_login(client, "ada", WRONG_PASSWORD))
    assert bcrypt_checks == []


def test_wrong_current_password_counts_as_a_failed_login(client: TestClient) -> None:
    """A stolen access token is no way to guess the password: LOGIN_MAX_FAILURES wrong current
    passwords, on either route, and the account's logins are throttled."""
    signup(client, "ada")
    headers = login(client, "ada")
    for _ in range(2):
        assert change_email(client, headers, "ada2@example.com", WRONG_PASSWORD).status_code == 400
    for _ in range(3):
        assert change_password(client, headers, WRONG_PASSWORD).status_code == 400
    assert_throttled(try_login(client, "ada"))


@pytest.mark.parametrize("route", ["password", "email", "full name"])
def test_own_account_routes_answer_the_logins_429_while_throttled(client: TestClient, route: str) -> None:
    """While the account's logins are throttled, PATCH /users/me/password and PATCH /users/me
    (the right current password included) get the same 429 with Retry-After, and nothing
    changes (SPEC 4's table)."""
    signup(client, "ada")
    headers = login(client, "ada")
    fail_logins(client, "ada", 5)
    if route == "password":
        response = change_password(client, headers, DEFAULT_PASSWORD)
    elif route == "email":
        response = change_email(client, headers, "ada2@example.com")
    else:
        response = client.patch(f"{API}/users/me", headers=headers, json={"full_name": "Ada King"})
    assert assert_throttled(response) > 0
    me = client.get(f"{API}/users/me", headers=headers).json()
    assert (me["email"], me["full_name"]) == ("ada@example.com", None)


def test_login_throttling_holds_across_two_workers_and_a_restart(make_settings: MakeSettings) -> None:
    """Two apps on one database (as two workers are) share the count; a third, started
    after both stopped, still refuses."""
    settings = make_settings()
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        signup(first, "ada")
        fail_logins(first, "ada", 3)
        fail_logins(second, "ada", 2)
        assert_throttled(try_login(first, "ada"))
    with TestClient(create_app(settings)) as restarted:
        assert_throttled(try_login(restarted, "ada"))


def test_failures_too_old_to_count_are_deleted_as_new_ones_come_in(client: TestClient) -> None:
    """The table does not grow without bound: a new failure removes the expired ones."""
    fail_logins(client, "someone", 3)
    age(client, LoginFailure, timedelta(minutes=15))
    fail_logins(client, "someone else", 1)
    with Session(engine_of(client)) as session:
        assert session.exec(select(func.count()).select_from(LoginFailure)).one() == 1


# --- Notification and recovery caps ------------------------------------------------------


def post_notification(client: TestClient, headers: dict[str, str]) -> Any:
    body = {"email": "bob@example.com", "subject": "Hello", "message": "Hi"}
    return client.post(f"{API}/notifications/", headers=headers, json=body)


def test_notification_cap_refuses_with_429_and_records_nothing(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """NOTIFICATIONS_PER_HOUR=3 and the welcome counts: two more are queued, the next is a
    429 with Retry-After, and nothing of it is stored or sent."""
    with TestClient(create_app(make_settings(NOTIFICATIONS_PER_HOUR="3"))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        for _ in range(2):
            assert post_notification(client, headers).status_code == 202
        caplog.clear()
        response = post_notification(client, headers)
        assert response.status_code == 429, response.text
        assert response.json() == TOO_MANY_NOTIFICATIONS
        assert 3600 - 5 <= int(response.headers["Retry-After"]) <= 3600
        assert count_notifications(client) == 3
        assert "Console email" not in caplog.text


def test_email_change_over_the_notification_cap_gets_429_and_changes_nothing(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The notice of an email change is a notification like any other: NOTIFICATIONS_PER_HOUR=2,
    the welcome and one change use it up, the next change is a 429 and the email stays."""
    with TestClient(create_app(make_settings(NOTIFICATIONS_PER_HOUR="2"))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        assert change_email(client, headers, "ada2@example.com").status_code == 200
        caplog.clear()
        response = change_email(client, headers, "stranger@example.com")
        assert response.status_code == 429, response.text
        assert response.json() == TOO_MANY_NOTIFICATIONS
        assert 3600 - 5 <= int(response.headers["Retry-After"]) <= 3600
        assert client.get(f"{API}/users/me", headers=headers).json()["email"] == "ada2@example.com"
        assert count_notifications(client) == 2
        assert "Console email" not in caplog.text


def test_notification_cap_counts_the_last_60_minutes_only(make_settings: MakeSettings) -> None:
    """Notifications over an hour old no longer count."""
    with TestClient(create_app(make_settings(NOTIFICATIONS_PER_HOUR="2"))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        assert post_notification(client, headers).status_code == 202
        assert post_notification(client, headers).status_code == 429
        age(client, Notification, timedelta(minutes=60))
        assert post_notification(client, headers).status_code == 202


def test_notification_cap_is_per_user(make_settings: MakeSettings) -> None:
    """One user at the cap, another queues as usual."""
    with TestClient(create_app(make_settings(NOTIFICATIONS_PER_HOUR="1"))) as client:
        signup(client, "ada")
        signup(client, "bob")
        assert post_notification(client, login(client, "ada")).status_code == 429
        age(client, Notification, timedelta(minutes=60))
        assert post_notification(client, login(client, "bob")).status_code == 202


def test_recovery_cap_answers_the_same_202_and_sends_nothing_more(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """RECOVERY_EMAILS_PER_HOUR=2: a third request gets the same 202 and sends no mail."""
    with TestClient(create_app(make_settings(RECOVERY_EMAILS_PER_HOUR="2"))) as client:
        signup(client, "ada")
        caplog.clear()
        answers = [client.post(f"{API}/auth/password-recovery", json={"email": "ada@example.com"}) for _ in range(3)]
        unknown = client.post(f"{API}/auth/password-recovery", json={"email": "nobody@example.com"})
        assert {(r.status_code, r.text) for r in [*answers, unknown]} == {(answers[0].status_code, answers[0].text)}
        assert answers[0].status_code == 202
        assert count_notifications(client, kind="recovery") == 2
        assert caplog.text.count("subject: Password recovery") == 2


def test_every_429_is_documented_with_retry_after(client: TestClient) -> None:
    """The schema of login and of POST /notifications/ lists 429 and its header."""
    paths = client.get(f"{API}/openapi.json").json()["paths"]
    for path in (f"{API}/auth/login", f"{API}/notifications/"):
        response = paths[path]["post"]["responses"]["429"]
        assert response["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorMessage"}
