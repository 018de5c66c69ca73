"""Background tasks and email (SPEC 6) and the SPEC 4 rows for notifications and password reset.

Patterns shown:
- A real SMTP server per test: aiosmtpd on a free loopback port, in its own thread, with
  a handler that keeps what it accepts; STARTTLS against a throwaway certificate
  authority (trustme) that the client trusts through `SSL_CERT_FILE`, no mocks.
- The console backend checked through `caplog`: what a workshop reads in its terminal.
- `TestClient` runs background tasks before it returns, so a notification's status is
  final right after the call that queued it.

Imports: config, fieldtypes, models, database, auth, emails, limits, main, conftest, live_server.
"""

import asyncio
import email
import email.policy
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session as SMTPSession
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

import fieldtypes
from auth import hash_password
from config import Settings
from conftest import (
    DEFAULT_PASSWORD,
    MakeSettings,
    count_notifications,
    engine_of,
    login,
    security_stamp,
    settings_environ,
    signup,
)
from database import create_db_engine
from emails import INTERRUPTED_ERROR, send_email
from limits import MAIL_CONCURRENCY
from live_server import copy_app, free_port, running_server
from main import create_app
from models import Notification, User

EMAILS_FROM = "team@example.org"
SMTP_USER = "mailer"
SMTP_PASSWORD = "mail password"
NEW_PASSWORD = "a brand new passphrase"
WELCOME_BODY = "Hi ada,\n\nyour account is ready. Log in with your username or email.\n"
RESET_PASSWORD = "/api/v1/auth/reset-password"
RECOVERY_ANSWER = {"message": "If an account has this email, a password reset token is on its way"}
INVALID_TOKEN = {"detail": "Invalid or expired token"}
# A JWT alone on its line: the reset token as the mail carries it, and as the console log does,
# where the line breaks around it are escaped (`\n`).
TOKEN_LINE = re.compile(r"(?:^|\\n)([\w-]+\.[\w-]+\.[\w-]+)(?:$|\\n)", re.MULTILINE)


@dataclass
class Delivery:
    """One message a `Mailbox` accepted, and how it came in."""

    message: EmailMessage
    recipients: list[str]
    over_tls: bool
    authenticated: bool


class Mailbox:
    """aiosmtpd handler that accepts every message and keeps it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    @property
    def messages(self) -> list[EmailMessage]:
        return [delivery.message for delivery in self.deliveries]

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        # SMTP carries CRLF line ends; read the message as a mail client shows it.
        content = envelope.content.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.deliveries.append(
            Delivery(message, list(envelope.rcpt_tos), session.ssl is not None, bool(session.authenticated))
        )
        return "250 OK"


class RefusingMailbox:
    """aiosmtpd handler that refuses every message after reading it."""

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope
    ) -> str:
        return "554 5.7.1 Message refused by policy"


class UnknownRecipients(Mailbox):
    """aiosmtpd handler that knows only example.com's ada, as a relay that reveals too much."""

    async def handle_RCPT(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address != "ada@example.com":
            return "550 5.1.1 <nobody@example.com>: User unknown in relay mx1.internal.example"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def check_login(server: SMTP, session: SMTPSession, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    """aiosmtpd authenticator that knows one account: SMTP_USER / SMTP_PASSWORD."""
    known = LoginPassword(SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=isinstance(auth_data, LoginPassword) and auth_data == known)


class RawMailbox(Mailbox):
    """A `Mailbox` that also keeps each message's bytes exactly as the server received them."""

    def __init__(self) -> None:
        super().__init__()
        self.contents: list[bytes] = []

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.contents.append(envelope.original_content)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(name="raw_mailbox")
def raw_mailbox_fixture() -> RawMailbox:
    """An empty mailbox for an SMTP server, raw messages kept."""
    return RawMailbox()


@pytest.fixture(name="mailbox")
def mailbox_fixture(raw_mailbox: RawMailbox) -> Mailbox:
    """An empty mailbox for an SMTP server (the same as `raw_mailbox`)."""
    return raw_mailbox


@pytest.fixture(name="smtp_client")
def smtp_client_fixture(make_settings: MakeSettings, mailbox: Mailbox) -> Iterator[TestClient]:
    """A client of an app that mails through a plain SMTP server delivering to `mailbox`."""
    with smtp_server(mailbox) as port, TestClient(create_app(smtp_settings(make_settings, port))) as client:
        yield client


@pytest.fixture(name="ca")
def ca_fixture() -> trustme.CA:
    """A throwaway certificate authority, trusted by nothing until a test says so."""
    return trustme.CA()


@pytest.fixture(name="starttls_port")
def starttls_port_fixture(ca: trustme.CA, mailbox: Mailbox) -> Iterator[int]:
    """An SMTP server that requires STARTTLS and then a login before it takes a message."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with smtp_server(
        mailbox, tls_context=server_context, require_starttls=True, auth_required=True, authenticator=check_login
    ) as port:
        yield port


@pytest.fixture(name="console_log")
def console_log_fixture(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """`caplog`, capturing what the console email backend logs."""
    caplog.set_level(logging.INFO, logger="emails")
    return caplog


@contextmanager
def smtp_server(handler: object, port: int = 0, **smtp_options: Any) -> Iterator[int]:
    """Run an aiosmtpd server with `handler` on `port` (default: a free one); yield the port."""
    port = port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_settings(make_settings: MakeSettings, port: int, **overrides: str) -> Settings:
    """Test settings that send mail to 127.0.0.1:`port` (0: a free one), plain text unless overridden."""
    environ = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port or free_port()),
        "SMTP_TLS": "false",
        "EMAILS_FROM": EMAILS_FROM,
    }
    return make_settings(**(environ | overrides))


def notifications_of(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The caller's notifications, as GET /notifications/ lists them."""
    response = client.get("/api/v1/notifications/", headers=headers)
    assert response.status_code == 200, response.text
    notifications: list[dict[str, Any]] = response.json()["data"]
    return notifications


def notify(client: httpx2.Client, headers: dict[str, str], **fields: str) -> dict[str, Any]:
    """POST /notifications/ and return the queued notification's JSON."""
    body = {"email": "bob@example.com", "subject": "Hello", "message": "Plain-text body\n"} | fields
    response = client.post("/api/v1/notifications/", json=body, headers=headers)
    assert response.status_code == 202, response.text
    notification: dict[str, Any] = response.json()
    return notification


def reset_token_from(text: str) -> str:
    """The one line of `text` that is a whole JWT."""
    tokens: list[str] = TOKEN_LINE.findall(text)
    assert len(tokens) == 1, text
    return tokens[0]


def request_reset_token(client: TestClient, caplog: pytest.LogCaptureFixture, email_address: str) -> str:
    """Ask for a reset token and read it where a workshop would: the console backend's log."""
    caplog.clear()
    response = client.post("/api/v1/auth/password-recovery", json={"email": email_address})
    assert response.status_code == 202, response.text
    return reset_token_from(caplog.text)


def reset_claims(client: TestClient, settings: Settings, user: dict[str, Any], issued: datetime) -> dict[str, Any]:
    """The claims of `user`'s reset token issued at `issued`, as the app writes them."""
    return {
        "sub": str(user["id"]),
        "type": "reset",
        "stamp": security_stamp(client, user["id"]),
        "recovery": security_stamp(client, user["id"], "recovery_stamp"),
        "iat": issued,
        "exp": issued + timedelta(minutes=settings.RESET_TOKEN_EXPIRE_MINUTES),
    }


def reset_body(token: str, new_password: str = NEW_PASSWORD) -> dict[str, str]:
    """The body of POST /auth/reset-password."""
    return {"token": token, "new_password": new_password}


def assert_reset_refused(client: TestClient, token: str, new_password: str = NEW_PASSWORD) -> None:
    """POST /auth/reset-password with `token` is a 400 with the one invalid-token detail."""
    response = client.post(RESET_PASSWORD, json=reset_body(token, new_password))
    assert response.status_code == 400, response.text
    assert response.json() == INVALID_TOKEN


# --- Delivery over SMTP -----------------------------------------------------------------


def test_signup_mails_the_welcome_message_over_smtp(smtp_client: TestClient, mailbox: Mailbox) -> None:
    """Sign-up delivers one welcome message from EMAILS_FROM and records it as sent."""
    signup(smtp_client, "ada")

    [message] = mailbox.messages
    assert message["From"] == EMAILS_FROM
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome to FastAPI Reference API"
    assert message.get_content() == WELCOME_BODY
    [welcome] = notifications_of(smtp_client, login(smtp_client, "ada"))
    assert welcome["subject"] == "Welcome to FastAPI Reference API"
    assert welcome["message"] == WELCOME_BODY
    assert welcome["status"] == "sent"
    assert welcome["sent_at"] is not None
    assert welcome["error"] is None


def test_password_recovery_mails_a_reset_token_that_works_once(smtp_client: TestClient, mailbox: Mailbox) -> None:
    """The recovery mail carries a token that resets the password once, then gets 400."""
    signup(smtp_client, "ada")

    response = smtp_client.post("/api/v1/auth/password-recovery", json={"email": "ada@example.com"})

    assert response.status_code == 202, response.text
    _welcome, recovery = mailbox.messages
    assert recovery["From"] == EMAILS_FROM
    assert recovery["To"] == "ada@example.com"
    assert recovery["Subject"] == "Password recovery for FastAPI Reference API"
    body = recovery.get_content()
    token = reset_token_from(body)
    assert body == (
        "Hi ada,\n\nsomeone asked to reset your password. Send this token to"
        " POST /api/v1/auth/reset-password within 15 minutes:\n\n"
        f"{token}\n\n"
        "If it was not you, ignore this message: your password stays as it is.\n"
    )
    first = smtp_client.post(RESET_PASSWORD, json=reset_body(token))
    assert first.status_code == 200, first.text
    assert first.json() == {"message": "Password updated"}
    assert_reset_refused(smtp_client, token, "yet another passphrase")
    login(smtp_client, "ada", NEW_PASSWORD)


def test_password_recovery_notification_is_the_accounts_and_keeps_no_token(
    smtp_client: TestClient, mailbox: Mailbox
) -> None:
    """The recovery is recorded as the account's sent notification, without the token."""
    ada = signup(smtp_client, "ada")
    headers = login(smtp_client, "ada")

    smtp_client.post("/api/v1/auth/password-recovery", json={"email": "ada@example.com"})

    token = reset_token_from(mailbox.messages[-1].get_content())
    _welcome, recovery = notifications_of(smtp_client, headers)
    assert recovery["owner_id"] == ada["id"]
    assert recovery["email"] == "ada@example.com"
    assert recovery["subject"] == "Password recovery for FastAPI Reference API"
    assert recovery["status"] == "sent"
    assert token not in recovery["message"]
    assert "(the token is in the email only)" in recovery["message"]


def test_notification_is_mailed_over_smtp_and_ends_sent(smtp_client: TestClient, mailbox: Mailbox) -> None:
    """POST /notifications/ delivers the message as given and its status becomes sent."""
    signup(smtp_client, "ada")
    headers = login(smtp_client, "ada")
    mailbox.deliveries.clear()

    queued = notify(smtp_client, headers, email="Bob@Example.com", subject="Lunch?", message="At noon.\nBring forks.\n")

    [delivery] = mailbox.deliveries
    assert delivery.recipients == ["bob@example.com"]
    assert delivery.message["From"] == EMAILS_FROM
    assert delivery.message["To"] == "bob@example.com"
    assert delivery.message["Subject"] == "Lunch?"
    assert delivery.message.get_content() == "At noon.\nBring forks.\n"
    assert queued["status"] == "pending"
    response = smtp_client.get(f"/api/v1/notifications/{queued['id']}", headers=headers)
    assert response.status_code == 200, response.text
    sent = response.json()
    assert sent["status"] == "sent"
    assert sent["error"] is None
    assert datetime.fromisoformat(sent["sent_at"]) >= datetime.fromisoformat(sent["created_at"])


def test_notification_is_mailed_over_starttls_with_login(
    make_settings: MakeSettings,
    mailbox: Mailbox,
    ca: trustme.CA,
    starttls_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With SMTP_TLS and SMTP_USER, the app upgrades to TLS, verifies the server, logs in, sends."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # Honoured by ssl.create_default_context(): the client really verifies the chain.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    settings = smtp_settings(
        make_settings, starttls_port, SMTP_TLS="true", SMTP_USER=SMTP_USER, SMTP_PASSWORD=SMTP_PASSWORD
    )

    with TestClient(create_app(settings)) as client:
        signup(client, "ada")
        queued = notify(client, login(client, "ada"), subject="Over TLS")

        assert [d.message["Subject"] for d in mailbox.deliveries] == ["Welcome to FastAPI Reference API", "Over TLS"]
        assert all(d.over_tls and d.authenticated for d in mailbox.deliveries)
        response = client.get(f"/api/v1/notifications/{queued['id']}", headers=login(client, "ada"))
        assert response.json()["status"] == "sent"


def test_notification_to_an_untrusted_starttls_server_fails(
    make_settings: MakeSettings, mailbox: Mailbox, starttls_port: int
) -> None:
    """A certificate from an unknown authority fails the send: nothing goes out in clear."""
    settings = smtp_settings(
        make_settings, starttls_port, SMTP_TLS="true", SMTP_USER=SMTP_USER, SMTP_PASSWORD=SMTP_PASSWORD
    )

    with TestClient(create_app(settings)) as client:
        signup(client, "ada")
        [welcome] = notifications_of(client, login(client, "ada"))

    assert mailbox.deliveries == []
    assert welcome["status"] == "failed"
    assert welcome["sent_at"] is None
    assert welcome["error"] == "TLS with the mail server failed"


def test_notification_to_a_server_that_is_down_fails_and_the_api_keeps_answering(
    make_settings: MakeSettings,
) -> None:
    """A refused connection marks the notification failed with the error; requests go on."""
    with TestClient(create_app(smtp_settings(make_settings, free_port()))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        queued = notify(client, headers)

        response = client.get(f"/api/v1/notifications/{queued['id']}", headers=headers)
        assert response.status_code == 200, response.text
        failed = response.json()
        assert failed["status"] == "failed"
        assert failed["sent_at"] is None
        assert failed["error"] == "Mail server unreachable"
        assert [n["status"] for n in notifications_of(client, headers)] == ["failed", "failed"]
        assert client.get("/health").status_code == 200


def test_notification_refused_by_the_server_names_the_failure_and_logs_the_reply(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A 554 reply to the message marks the notification failed with the kind of failure;
    the reply itself is only in the log, with the notification id."""
    with smtp_server(RefusingMailbox()) as port, TestClient(create_app(smtp_settings(make_settings, port))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        queued = notify(client, headers)
        response = client.get(f"/api/v1/notifications/{queued['id']}", headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    assert response.json()["error"] == "Message refused by the mail server"
    assert f"Notification {queued['id']} failed: SMTPDataError(554, b'5.7.1 Message refused by policy')" in caplog.text


def test_notification_to_an_unknown_recipient_never_shows_the_servers_reply(make_settings: MakeSettings) -> None:
    """A relay's "550 User unknown" (with its host names) is not shown to the caller, who
    could otherwise probe which mailboxes exist."""
    with smtp_server(UnknownRecipients()) as port, TestClient(create_app(smtp_settings(make_settings, port))) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        queued = notify(client, headers, email="nobody@example.com")
        failed = client.get(f"/api/v1/notifications/{queued['id']}", headers=headers).json()

    assert failed["status"] == "failed"
    assert failed["error"] == "Recipient refused by the mail server"


# --- Console backend --------------------------------------------------------------------


def test_console_backend_logs_the_notification_and_marks_it_sent(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """Without SMTP_HOST the recipient, subject and body are logged on one line, their line
    breaks escaped: a message cannot forge a log line."""
    console_log.clear()

    queued = notify(client, user_headers, subject="Hello", message="First line\n2026-12-04 INFO main: FAKE\x1b[31m\n")

    escaped = "First line\\n2026-12-04 INFO main: FAKE\\x1b[31m\\n"
    assert f"Console email to bob@example.com, subject: Hello, body: {escaped}" in console_log.messages
    response = client.get(f"/api/v1/notifications/{queued['id']}", headers=user_headers)
    assert response.json()["status"] == "sent"
    assert response.json()["sent_at"] is not None


def test_console_backend_logs_the_whole_reset_token_on_one_line(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """The logged recovery mail holds the reset token unbroken, and it works."""
    token = request_reset_token(client, console_log, "ada@example.com")

    [record] = [r for r in console_log.records if r.name == "emails"]
    assert record.getMessage().startswith(
        "Console email to ada@example.com, subject: Password recovery for FastAPI Reference API, body: Hi ada,\\n"
    )
    assert f"\\n\\n{token}\\n\\n" in record.getMessage()
    assert client.post(RESET_PASSWORD, json=reset_body(token)).status_code == 200
    [_welcome, recovery] = notifications_of(client, login(client, "ada", NEW_PASSWORD))
    assert recovery["status"] == "sent"


# --- Start-up ---------------------------------------------------------------------------


def test_notification_left_pending_before_start_up_is_marked_failed(
    client: TestClient, settings: Settings, user_headers: dict[str, str]
) -> None:
    """A notification whose background task died with the last process does not stay pending."""
    ada_id = client.get("/api/v1/users/me", headers=user_headers).json()["id"]
    engine = create_db_engine(settings.DATABASE_URL)
    with Session(engine) as session:
        session.add(Notification(owner_id=ada_id, email="bob@example.com", subject="Lost", message="Never sent"))
        session.commit()
    engine.dispose()

    with TestClient(create_app(settings)) as restarted:
        welcome, lost = notifications_of(restarted, user_headers)

    assert welcome["status"] == "sent"
    assert lost["subject"] == "Lost"
    assert lost["status"] == "failed"
    assert lost["error"] == INTERRUPTED_ERROR
    assert lost["sent_at"] is None


# --- POST /notifications/ ---------------------------------------------------------------


def test_create_notification_returns_202_with_status_pending(client: TestClient, user_headers: dict[str, str]) -> None:
    """The 202 body is the recorded notification as queued, owned by the caller."""
    ada_id = client.get("/api/v1/users/me", headers=user_headers).json()["id"]
    body = {"email": "Bob@Example.com", "subject": "Hello", "message": "Plain-text body"}

    response = client.post("/api/v1/notifications/", json=body, headers=user_headers)

    assert response.status_code == 202, response.text
    created = response.json()
    assert created == {
        "id": created["id"],
        "owner_id": ada_id,
        "email": "bob@example.com",
        "subject": "Hello",
        "message": "Plain-text body",
        "status": "pending",
        "error": None,
        "created_at": created["created_at"],
        "sent_at": None,
    }
    assert created["created_at"].endswith(("Z", "+00:00"))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"subject": "Hello", "message": "Body"}, ["body", "email"]),
        ({"email": "bob@example.com", "message": "Body"}, ["body", "subject"]),
        ({"email": "bob@example.com", "subject": "Hello"}, ["body", "message"]),
        ({"email": "not-an-email", "subject": "Hello", "message": "Body"}, ["body", "email"]),
        ({"email": "bob@example.com", "subject": "", "message": "Body"}, ["body", "subject"]),
        ({"email": "bob@example.com", "subject": "Hi\nBcc: eve@example.org", "message": "Body"}, ["body", "subject"]),
        ({"email": "bob@example.com", "subject": "Hello\r", "message": "Body"}, ["body", "subject"]),
        ({"email": "bob@example.com", "subject": "Hel\x00lo", "message": "Body"}, ["body", "subject"]),
        ({"email": "bob@example.com", "subject": "Hello", "message": ""}, ["body", "message"]),
        ({"email": "bob@example.com", "subject": "Hello", "message": "Bo\x00dy"}, ["body", "message"]),
        ({"email": "bob@example.com", "subject": "x" * 256, "message": "Body"}, ["body", "subject"]),
    ],
    ids=[
        "missing email",
        "missing subject",
        "missing message",
        "bad email",
        "empty subject",
        "subject with a newline",
        "subject with a carriage return",
        "NUL in subject",
        "empty message",
        "NUL in message",
        "subject too long",
    ],
)
def test_create_notification_rejects_a_bad_body(
    client: TestClient, user_headers: dict[str, str], body: dict[str, str], loc: list[str]
) -> None:
    """A bad body is a 422 naming the field, and nothing is recorded."""
    recorded = count_notifications(client)

    response = client.post("/api/v1/notifications/", json=body, headers=user_headers)

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    assert count_notifications(client) == recorded


# --- GET /notifications/ ----------------------------------------------------------------


def test_read_notifications_lists_own_only_ordered_by_id(client: TestClient) -> None:
    """Each user sees their own notifications, by id, with the total count."""
    signup(client, "ada")
    signup(client, "bob")
    ada, bob = login(client, "ada"), login(client, "bob")
    notify(client, ada, subject="one")
    notify(client, bob, subject="bob's")
    notify(client, ada, subject="two")

    response = client.get("/api/v1/notifications/", headers=ada)

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["count"] == 3
    assert [n["subject"] for n in page["data"]] == ["Welcome to FastAPI Reference API", "one", "two"]
    ids = [n["id"] for n in page["data"]]
    assert ids == sorted(ids)
    assert {n["owner_id"] for n in page["data"]} == {client.get("/api/v1/users/me", headers=ada).json()["id"]}


def test_read_notifications_count_is_the_total_not_the_page(client: TestClient, user_headers: dict[str, str]) -> None:
    """`skip` and `limit` cut the page; `count` stays the total."""
    for subject in ("one", "two", "three"):
        notify(client, user_headers, subject=subject)

    response = client.get("/api/v1/notifications/?skip=1&limit=2", headers=user_headers)

    assert response.status_code == 200, response.text
    assert [n["subject"] for n in response.json()["data"]] == ["one", "two"]
    assert response.json()["count"] == 4


@pytest.mark.parametrize("query", ["skip=-1", "limit=0", "limit=101", "limit=ten"])
def test_read_notifications_rejects_out_of_range_pagination(
    client: TestClient, user_headers: dict[str, str], query: str
) -> None:
    """`skip` below 0 or `limit` outside 1-100 is a 422."""
    response = client.get(f"/api/v1/notifications/?{query}", headers=user_headers)
    assert response.status_code == 422, response.text


# --- GET /notifications/{id} ------------------------------------------------------------


def test_read_notification_returns_the_owners_with_its_status(client: TestClient, user_headers: dict[str, str]) -> None:
    """The owner reads their notification with its current status."""
    queued = notify(client, user_headers)

    response = client.get(f"/api/v1/notifications/{queued['id']}", headers=user_headers)

    assert response.status_code == 200, response.text
    current = response.json()
    assert current == queued | {"status": "sent", "sent_at": current["sent_at"]}
    assert current["sent_at"] is not None


def test_read_notification_of_another_user_is_404(client: TestClient, user_headers: dict[str, str]) -> None:
    """Another user's notification is hidden as if it did not exist."""
    queued = notify(client, user_headers)
    signup(client, "bob")

    response = client.get(f"/api/v1/notifications/{queued['id']}", headers=login(client, "bob"))

    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Notification not found"}


def test_read_missing_notification_is_404(client: TestClient, user_headers: dict[str, str]) -> None:
    """An id that names no notification gets 404."""
    response = client.get("/api/v1/notifications/999999", headers=user_headers)
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Notification not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/notifications/"), ("GET", "/api/v1/notifications/1"), ("POST", "/api/v1/notifications/")],
)
def test_notifications_without_a_token_get_401(client: TestClient, method: str, path: str) -> None:
    """Every notification endpoint wants a bearer token."""
    body = {"email": "bob@example.com", "subject": "Hello", "message": "Body"}
    response = client.request(method, path, json=body if method == "POST" else None)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Not authenticated"}


# --- POST /auth/password-recovery -------------------------------------------------------


def test_password_recovery_answers_the_same_for_known_and_unknown_emails(
    smtp_client: TestClient, mailbox: Mailbox
) -> None:
    """202 with one identical body either way; only the real account gets mail."""
    signup(smtp_client, "ada")
    mailbox.deliveries.clear()
    recorded = count_notifications(smtp_client)

    unknown = smtp_client.post("/api/v1/auth/password-recovery", json={"email": "nobody@example.com"})
    assert mailbox.deliveries == []
    assert count_notifications(smtp_client) == recorded
    known = smtp_client.post("/api/v1/auth/password-recovery", json={"email": "ADA@example.com"})

    assert unknown.status_code == known.status_code == 202, known.text
    assert unknown.content == known.content
    assert known.json() == RECOVERY_ANSWER
    assert [d.recipients for d in mailbox.deliveries] == [["ada@example.com"]]


@pytest.mark.parametrize(
    "body",
    [{}, {"email": ""}, {"email": "not-an-email"}, {"email": "ada@"}, {"email": None}],
    ids=["missing", "empty", "no at sign", "no domain", "null"],
)
def test_password_recovery_rejects_a_bad_email(client: TestClient, body: dict[str, Any]) -> None:
    """A missing or malformed email is a 422."""
    response = client.post("/api/v1/auth/password-recovery", json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "email"]]


# --- POST /auth/reset-password ----------------------------------------------------------


def test_successful_reset_clears_the_accounts_failed_logins(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """The owner locked out by a guessing script resets the password and logs in at once."""
    for _ in range(5):
        wrong = client.post("/api/v1/auth/login", data={"username": "ada", "password": "wrong password"})
        assert wrong.status_code == 401, wrong.text
    token = request_reset_token(client, console_log, "ada@example.com")
    assert client.post(RESET_PASSWORD, json=reset_body(token)).status_code == 200
    login(client, "ada", NEW_PASSWORD)


def test_reset_password_sets_the_new_password_and_revokes_earlier_tokens(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """After a reset the new password logs in, the old one does not, old tokens get 401."""
    token = request_reset_token(client, console_log, "ada@example.com")

    response = client.post(RESET_PASSWORD, json=reset_body(token))

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Password updated"}
    old = client.get("/api/v1/users/me", headers=user_headers)
    assert old.status_code == 401, old.text
    assert old.headers["WWW-Authenticate"] == "Bearer"
    refused = client.post("/api/v1/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
    assert refused.status_code == 401, refused.text
    fresh = client.get("/api/v1/users/me", headers=login(client, "ada", NEW_PASSWORD))
    assert fresh.status_code == 200, fresh.text


def test_reset_token_expires_after_reset_token_expire_minutes(
    make_settings: MakeSettings, console_log: pytest.LogCaptureFixture
) -> None:
    """A reset token is typed and lives RESET_TOKEN_EXPIRE_MINUTES, not the access lifetime."""
    settings = make_settings(RESET_TOKEN_EXPIRE_MINUTES="5")
    with TestClient(create_app(settings)) as client:
        signup(client, "ada")
        token = request_reset_token(client, console_log, "ada@example.com")

    claims = jwt.decode(token, settings.SECRET_KEY, algorithms=[settings.ALGORITHM])
    assert claims["type"] == "reset"
    assert claims["exp"] - claims["iat"] == 5 * 60


@pytest.mark.parametrize(
    "token", ["", "not-a-token", "a.b.c", "x" * 4096], ids=["empty", "no dots", "three segments", "max length"]
)
def test_reset_password_rejects_a_garbage_token(client: TestClient, user_headers: dict[str, str], token: str) -> None:
    """Anything that is not a reset token of ours is a 400, and the password stays."""
    assert_reset_refused(client, token)
    login(client, "ada")


def test_reset_password_rejects_an_expired_token(client: TestClient, settings: Settings) -> None:
    """A reset token past its `exp` is a 400."""
    ada = signup(client, "ada")
    issued = datetime.now(UTC) - timedelta(minutes=settings.RESET_TOKEN_EXPIRE_MINUTES + 1)
    expired = jwt.encode(reset_claims(client, settings, ada, issued), settings.SECRET_KEY, algorithm=settings.ALGORITHM)

    assert_reset_refused(client, expired)
    login(client, "ada")


def test_reset_password_rejects_a_token_signed_with_another_key(client: TestClient, settings: Settings) -> None:
    """A well-formed reset token not signed with SECRET_KEY is a 400."""
    ada = signup(client, "ada")
    claims = reset_claims(client, settings, ada, datetime.now(UTC))
    forged = jwt.encode(claims, "another-secret-key-that-is-long-enough-for-hs256", algorithm=settings.ALGORITHM)

    assert_reset_refused(client, forged)


def test_reset_password_rejects_an_access_token(client: TestClient, user_headers: dict[str, str]) -> None:
    """An access token is not a reset token: 400, and the password stays."""
    access_token = user_headers["Authorization"].removeprefix("Bearer ")

    assert_reset_refused(client, access_token)
    login(client, "ada")


def test_reset_password_rejects_an_already_used_token(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """A reset token works once; the second use is a 400 and changes nothing."""
    token = request_reset_token(client, console_log, "ada@example.com")
    assert client.post(RESET_PASSWORD, json=reset_body(token)).status_code == 200

    assert_reset_refused(client, token, "yet another passphrase")
    login(client, "ada", NEW_PASSWORD)


def test_reset_password_revokes_the_other_reset_tokens(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """Using one reset token revokes every token issued before, reset tokens included."""
    earlier = request_reset_token(client, console_log, "ada@example.com")
    later = request_reset_token(client, console_log, "ada@example.com")
    assert client.post(RESET_PASSWORD, json=reset_body(later)).status_code == 200

    assert_reset_refused(client, earlier, "yet another passphrase")


def test_password_change_revokes_reset_tokens_issued_before(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """PATCH /users/me/password revokes an earlier reset token too (SPEC 5)."""
    token = request_reset_token(client, console_log, "ada@example.com")
    change = {"current_password": DEFAULT_PASSWORD, "new_password": "changed by the user"}
    assert client.patch("/api/v1/users/me/password", json=change, headers=user_headers).status_code == 200

    assert_reset_refused(client, token, "yet another passphrase")


def test_reset_password_rejects_a_short_password_and_keeps_the_token(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """A too-short new password is a 422 that does not use the token up."""
    token = request_reset_token(client, console_log, "ada@example.com")

    response = client.post(RESET_PASSWORD, json=reset_body(token, "short"))

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "new_password"]]
    assert client.post(RESET_PASSWORD, json=reset_body(token)).status_code == 200


def test_reset_token_used_as_access_token_gets_401(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """A reset token never authenticates a request."""
    token = request_reset_token(client, console_log, "ada@example.com")

    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Could not validate credentials"}


# --- Mail header injection and the reset token's address ---------------------------------

INJECTED_SUBJECTS = [
    pytest.param("=?utf-8?q?Invoice=0D=0ABcc:_x@evil.example?=", id="encoded-word-crlf"),
    pytest.param("=?utf-8?b?SW52b2ljZQ0KUmVwbHktVG86IHhAZXZpbC5leGFtcGxl?=", id="encoded-word-base64"),
    pytest.param("Invoice=?utf-8?q?=0AFrom:_ceo@example.com?=", id="encoded-word-inside"),
    *[
        pytest.param(f"Invoice{separator}Bcc: x@evil.example", id=f"separator-{ord(separator):#x}")
        for separator in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
    ],
]


def test_line_separators_are_every_one_that_splitlines_knows() -> None:
    """The subject check refuses exactly what str.splitlines() breaks lines at."""
    breaking = {chr(code) for code in range(0x110000) if len(f"a{chr(code)}b".splitlines()) > 1}
    assert breaking == set(fieldtypes.LINE_SEPARATORS)


@pytest.mark.parametrize("subject", INJECTED_SUBJECTS)
def test_notification_subject_that_could_inject_a_header_gets_422_and_sends_nothing(
    smtp_client: TestClient, mailbox: Mailbox, subject: str
) -> None:
    """A subject with a line separator or an encoded word is refused before anything is
    recorded: no mail with an extra header ever reaches the server."""
    signup(smtp_client, "ada")
    headers = login(smtp_client, "ada")
    mailbox.deliveries.clear()
    response = smtp_client.post(
        "/api/v1/notifications/", headers=headers, json={"email": "bob@example.com", "subject": subject, "message": "m"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "subject"]
    assert mailbox.deliveries == []
    assert len(notifications_of(smtp_client, headers)) == 1  # the welcome only


@pytest.mark.parametrize("subject", INJECTED_SUBJECTS)
def test_send_email_refuses_a_subject_that_could_inject_a_header(
    make_settings: MakeSettings, mailbox: Mailbox, subject: str
) -> None:
    """Whatever stored the subject (an older version, a script), sending refuses it: the
    server receives nothing."""
    with smtp_server(mailbox) as port, pytest.raises(ValueError, match="must"):
        send_email(smtp_settings(make_settings, port), to="bob@example.com", subject=subject, body="m")
    assert mailbox.deliveries == []


def test_mail_at_the_smtp_server_carries_only_the_headers_the_app_set(
    smtp_client: TestClient, raw_mailbox: RawMailbox
) -> None:
    """The raw message as the server received it: From, To, Subject and the MIME headers."""
    signup(smtp_client, "ada")
    notify(smtp_client, login(smtp_client, "ada"), subject="Invoice 42 paid")
    *_, raw = raw_mailbox.contents
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if not line.startswith((" ", "\t"))]
    assert sorted(names) == ["Content-Transfer-Encoding", "Content-Type", "From", "MIME-Version", "Subject", "To"]
    assert "Subject: Invoice 42 paid" in head.split("\r\n")


def test_reset_token_mailed_before_an_email_change_is_void(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """A reset token works only for the address it was sent to."""
    token = request_reset_token(client, console_log, "ada@example.com")
    body = {"email": "ada.new@example.com", "current_password": DEFAULT_PASSWORD}
    assert client.patch("/api/v1/users/me", headers=user_headers, json=body).status_code == 200
    assert_reset_refused(client, token)
    login(client, "ada")


def test_reset_token_mailed_before_an_email_change_stays_void_when_the_address_comes_back(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """A -> B -> A: the token mailed to A before the first change does not come back to life."""
    token = request_reset_token(client, console_log, "ada@example.com")
    for address in ("ada.new@example.com", "ada@example.com"):
        body = {"email": address, "current_password": DEFAULT_PASSWORD}
        assert client.patch("/api/v1/users/me", headers=user_headers, json=body).status_code == 200
    assert_reset_refused(client, token)
    login(client, "ada")


def test_reset_token_of_deleted_account_never_resets_another(
    client: TestClient, user_headers: dict[str, str], console_log: pytest.LogCaptureFixture
) -> None:
    """Asked for before the account was deleted, a reset token is useless for any account
    that comes after, even one given the same id and email."""
    ada_id = client.get("/api/v1/users/me", headers=user_headers).json()["id"]
    token = request_reset_token(client, console_log, "ada@example.com")
    assert client.delete("/api/v1/users/me", headers=user_headers).status_code == 204
    with Session(engine_of(client)) as session:
        session.add(
            User(
                id=ada_id,
                email="ada@example.com",
                username="newada",
                hashed_password=hash_password(DEFAULT_PASSWORD, 4),
            )
        )
        session.commit()
    assert_reset_refused(client, token)
    login(client, "newada")


def test_production_without_smtp_host_warns_once_at_start_up(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning naming SMTP_HOST, when the app is built (loading logs nothing): mail will only be logged."""
    caplog.set_level(logging.WARNING, logger="config")
    settings = make_settings(ENVIRONMENT="production")
    assert [record for record in caplog.records if record.name == "config"] == []
    create_app(settings)
    [warning] = [record.getMessage() for record in caplog.records if record.name == "config"]
    assert "SMTP_HOST" in warning


def test_production_console_backend_withholds_the_reset_token(
    make_settings: MakeSettings, console_log: pytest.LogCaptureFixture
) -> None:
    """In production the console backend logs the reset mail without its token."""
    with TestClient(create_app(make_settings(ENVIRONMENT="production"))) as client:
        signup(client, "ada")
        console_log.clear()
        client.post("/api/v1/auth/password-recovery", json={"email": "ada@example.com"})
    [record] = [r for r in console_log.records if r.name == "emails"]
    assert "(the token is in the email only)" in record.getMessage()
    assert TOKEN_LINE.search(record.getMessage()) is None


class PoolWatchingMailbox(Mailbox):
    """A `Mailbox` that notes how many pooled connections the app holds as each mail arrives."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.checked_out: list[int] = []

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope
    ) -> str:
        pool = self.engine.pool
        assert isinstance(pool, QueuePool)
        self.checked_out.append(pool.checkedout())
        return await super().handle_DATA(server, session, envelope)


def test_sending_a_notification_holds_no_database_connection(make_settings: MakeSettings) -> None:
    """Read, send, write: while the mail server has the message, the app holds no pooled
    connection (a slow server must not drain the pool)."""
    port = free_port()
    with TestClient(create_app(smtp_settings(make_settings, port))) as client:
        mailbox = PoolWatchingMailbox(engine_of(client))
        with smtp_server(mailbox, port=port):
            signup(client, "ada")
            notify(client, login(client, "ada"))
    assert mailbox.checked_out == [0, 0]


class HeldMailbox(Mailbox):
    """A mail server that holds every message until `release` is set (a slow server)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.in_flight = self.most_in_flight = 0

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: SMTPSession, envelope: Envelope
    ) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        self.in_flight -= 1
        return await super().handle_DATA(server, session, envelope)


def test_mail_in_flight_is_bounded_and_a_slow_server_holds_no_request_thread(make_settings: MakeSettings) -> None:
    """With the mail server stuck, at most MAIL_CONCURRENCY mails are in flight, the rest
    wait without a thread, and other requests are answered meanwhile."""
    mailbox = HeldMailbox()
    mailbox.release.set()
    settings = smtp_settings(make_settings, 0, SMTP_TIMEOUT_SECONDS="60", NOTIFICATIONS_PER_HOUR="100")
    with smtp_server(mailbox, port=settings.SMTP_PORT), TestClient(create_app(settings)) as client:
        signup(client, "ada")
        headers = login(client, "ada")
        mailbox.release.clear()
        queued = 48  # more than anyio's 40 worker threads
        with ThreadPoolExecutor(max_workers=queued + 1) as pool:
            pending = [pool.submit(notify, client, headers, subject=f"n{n}") for n in range(queued)]
            deadline = time.monotonic() + 20
            while mailbox.in_flight < MAIL_CONCURRENCY and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # let the other requests queue up
            reads = pool.submit(lambda: client.get("/api/v1/users/me", headers=headers).status_code)
            assert reads.result(timeout=10) == 200
            mailbox.release.set()
            assert len([future.result() for future in pending]) == queued
    assert mailbox.most_in_flight == MAIL_CONCURRENCY
    assert len(mailbox.deliveries) == 1 + queued


def test_no_request_waits_for_mail_while_every_mail_thread_is_stuck(tmp_path: Path, database_url: str) -> None:
    """A stuck mail server holds all MAIL_CONCURRENCY mail threads; sign-up, recovery and
    notifications are still answered at once: the bound sits in the background task, after
    the response, never in the request (SPEC 5). A live server: it answers before its
    background tasks run, which TestClient waits for."""
    mailbox = HeldMailbox()
    with smtp_server(mailbox) as port:
        environ = settings_environ(
            database_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(port),
            SMTP_TLS="false",
            SMTP_TIMEOUT_SECONDS="60",
            NOTIFICATIONS_PER_HOUR="100",
            LOG_LEVEL="WARNING",
        )
        with running_server(copy_app(tmp_path / "app"), started=1, **environ) as server:
            try:
                with httpx2.Client(base_url=server.url, timeout=5) as client:
                    signup(client, "ada")  # the welcome is the first mail held
                    headers = login(client, "ada")
                    for number in range(MAIL_CONCURRENCY - 1):
                        notify(client, headers, subject=f"n{number}")
                    deadline = time.monotonic() + 10
                    while mailbox.in_flight < MAIL_CONCURRENCY and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert mailbox.in_flight == MAIL_CONCURRENCY
                    signup(client, "bob")
                    recovery = client.post("/api/v1/auth/password-recovery", json={"email": "ada@example.com"})
                    assert recovery.status_code == 202, recovery.text
                    notify(client, headers)
            finally:
                mailbox.release.set()


def test_deleting_an_account_deletes_its_notifications(client: TestClient, user_headers: dict[str, str]) -> None:
    """The welcome and every queued notification go with their owner (ON DELETE CASCADE)."""
    notify(client, user_headers)
    assert count_notifications(client) == 2
    assert client.delete("/api/v1/users/me", headers=user_headers).status_code == 204
    assert count_notifications(client) == 0
