"""Email and notifications: what background tasks send, and how.

Tier: lesson path, read fifth.

Patterns shown:
- Background tasks receive ids and the engine, never ORM objects or the request's
  session (closed by the time they run), and open their own `Session`.
- Every message is recorded as a `Notification` first, so its fate (`pending` ->
  `sent` | `failed`) is visible through the API, and a failure takes nothing else down.
- Sending holds no database connection: read, send, then write, each step on its own.
- Background tasks that bound themselves: `send_later` and `send_password_reset_later`
  send in `limits.MAIL_THREADS`, after the response, so a slow or dead mail server holds a
  few threads and no request ever waits for mail.
- Two backends chosen by settings: SMTP through the standard library's `smtplib`
  (STARTTLS, login, timeout), or the log (one escaped line), so a workshop needs no mail server.
- Start-up marks notifications whose task died with the previous process `failed`.
- A failure is recorded by its kind only; the mail server's reply goes to the log.

Imports: config, fieldtypes, models, auth, limits, middleware.
"""

import logging
import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage

from anyio import to_thread
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

import auth
import limits
from config import Settings
from fieldtypes import header_safe
from middleware import printable
from models import Notification, NotificationKind, User, utc_now

logger = logging.getLogger(__name__)

INTERRUPTED_ERROR = "Not sent: the server stopped before its background task ran"
# What a failed notification's `error` says, by exception, first match wins (ssl and smtplib
# errors are OSErrors too). Never the server's reply: "550 no such user" would let anyone
# probe which mailboxes exist.
FAILURE_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (smtplib.SMTPRecipientsRefused, "Recipient refused by the mail server"),
    (smtplib.SMTPSenderRefused, "Sender refused by the mail server"),
    (smtplib.SMTPDataError, "Message refused by the mail server"),
    (smtplib.SMTPAuthenticationError, "Login to the mail server failed"),
    (ssl.SSLError, "TLS with the mail server failed"),
    (smtplib.SMTPNotSupportedError, "The mail server does not offer STARTTLS or login"),
    (smtplib.SMTPServerDisconnected, "Mail server unreachable"),
    (smtplib.SMTPException, "The mail server answered with an error"),
    (OSError, "Mail server unreachable"),
)


def send_email(settings: Settings, *, to: str, subject: str, body: str) -> None:
    """Send one plain-text message over SMTP, or log it when `SMTP_HOST` is empty."""
    header_safe(subject)  # again here: whatever stored it, no subject adds a header
    if not settings.SMTP_HOST:
        # One line, its line breaks escaped like every logged value, so no mail can forge a
        # log line; not through EmailMessage.as_string(), which would fold a reset token.
        logger.info("Console email to %s, subject: %s, body: %s", printable(to), printable(subject), printable(body))
        return
    message = EmailMessage()
    message["From"] = settings.EMAILS_FROM
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    # The timeout bounds every socket operation: a hung server cannot keep a worker thread.
    with smtplib.SMTP(settings.SMTP_HOST, settings.SMTP_PORT, timeout=settings.SMTP_TIMEOUT_SECONDS) as smtp:
        if settings.SMTP_TLS:
            smtp.starttls(context=ssl.create_default_context())
        if settings.SMTP_USER:
            smtp.login(settings.SMTP_USER, settings.SMTP_PASSWORD)
        smtp.send_message(message)


def record_notification(
    session: Session,
    *,
    owner_id: int,
    email: str,
    subject: str,
    message: str,
    kind: NotificationKind,
    hourly_limit: int | None = None,
    counted_kind: NotificationKind | None = None,
) -> Notification:
    """Add a `pending` notification and return it (with its id, flushed) for a background
    task, once the caller commits. With `hourly_limit`, the owner's hourly cap applies
    (`limits.add_within_hourly_cap`: it raises `limits.HourlyLimitError` over it)."""
    notification = Notification(owner_id=owner_id, email=email, subject=subject, message=message, kind=kind)
    if hourly_limit is None:
        session.add(notification)
        session.flush()
    else:
        limits.add_within_hourly_cap(session, notification, hourly_limit, counted_kind)
    return notification


def send_notification(engine: Engine, settings: Settings, notification_id: int, body: str | None = None) -> None:
    """Background task: send a recorded notification and store the outcome.

    Read, send, write: no pooled connection is held while the mail server is talked to
    (up to SMTP_TIMEOUT_SECONDS a step). `body` replaces the stored message when what is
    mailed must not be stored (a reset token).
    """
    with Session(engine) as session:
        notification = session.get(Notification, notification_id)
    if notification is None:  # its owner was deleted meanwhile
        return
    outcome: dict[str, str | datetime | None]
    try:
        send_email(settings, to=notification.email, subject=notification.subject, body=body or notification.message)
        outcome = {"status": "sent", "sent_at": utc_now(), "error": None}
    except Exception as error:  # any failure is the notification's, not the server's
        # %r: the reply whole, its line breaks escaped, for whoever runs the server.
        logger.warning("Notification %s failed: %r", notification_id, error)
        failure = next((text for kind, text in FAILURE_KINDS if isinstance(error, kind)), "Sending failed")
        outcome = {"status": "failed", "error": failure}
    with Session(engine) as session:
        # A bulk UPDATE, not the ORM: the row may be gone (owner deleted) and that is fine.
        session.exec(update(Notification).where(Notification.id == notification_id).values(**outcome))  # type: ignore[arg-type]
        session.commit()


async def send_later(engine: Engine, settings: Settings, notification_id: int) -> None:
    """Background task: `send_notification` in one of `limits.MAIL_THREADS`."""
    await to_thread.run_sync(send_notification, engine, settings, notification_id, limiter=limits.MAIL_THREADS)


async def send_password_reset_later(engine: Engine, settings: Settings, email: str) -> None:
    """Background task: `send_password_reset` in one of `limits.MAIL_THREADS`."""
    await to_thread.run_sync(send_password_reset, engine, settings, email, limiter=limits.MAIL_THREADS)


def record_welcome(session: Session, user: User, settings: Settings) -> Notification:
    """The welcome message of a new user, recorded for `send_notification`."""
    return record_notification(
        session,
        owner_id=user.id,
        email=user.email,
        subject=f"Welcome to {settings.PROJECT_NAME}",
        message=f"Hi {user.username},\n\nyour account is ready. Log in with your username or email.\n",
        kind="welcome",
    )


def record_email_change_notice(session: Session, user: User, old_email: str, settings: Settings) -> Notification:
    """The notice an email change sends to the old address, recorded for `send_notification`.
    It counts against NOTIFICATIONS_PER_HOUR like any notification (`limits.HourlyLimitError`)."""
    return record_notification(
        session,
        owner_id=user.id,
        email=old_email,
        subject=f"Your {settings.PROJECT_NAME} email address was changed",
        message=(
            f"Hi {user.username},\n\nthe email address of your account is no longer this one."
            " If you did not change it, contact us: someone may have your password.\n"
        ),
        kind="email_change",
        hourly_limit=settings.NOTIFICATIONS_PER_HOUR,
    )


def send_password_reset(engine: Engine, settings: Settings, email: str) -> None:
    """Background task of POST /auth/password-recovery.

    The lookup happens here, after the 202 has gone out, so the response takes the same
    time whether or not the account exists, and whether or not a mail is sent (at most
    RECOVERY_EMAILS_PER_HOUR an account). The stored message leaves the token out:
    whoever can read the notifications must not be able to reset the password. So does
    the console backend in production, where whoever reads the logs is not the account's
    owner (SPEC 6).
    """
    with Session(engine) as session:
        user = session.exec(select(User).where(User.email == email)).first()
        if user is None or not user.is_active:
            return
        token = auth.create_token(user, token_type="reset", settings=settings)
        subject = f"Password recovery for {settings.PROJECT_NAME}"
        template = (
            f"Hi {user.username},\n\nsomeone asked to reset your password. Send this token to"
            f" POST {settings.API_V1_STR}/auth/reset-password within"
            f" {settings.RESET_TOKEN_EXPIRE_MINUTES} minutes:\n\n{{token}}\n\n"
            "If it was not you, ignore this message: your password stays as it is.\n"
        )
        user_id = user.id  # for the log, whatever becomes of the row
        try:
            notification = record_notification(
                session,
                owner_id=user_id,
                email=user.email,
                subject=subject,
                message=template.format(token="(the token is in the email only)"),
                kind="recovery",
                hourly_limit=settings.RECOVERY_EMAILS_PER_HOUR,
                counted_kind="recovery",
            )
            session.commit()
        except limits.HourlyLimitError:
            # Nobody can fill an inbox with reset mails; the caller got the same 202 (SPEC 5).
            logger.info("Password recovery for user %s not sent: RECOVERY_EMAILS_PER_HOUR reached", user_id)
            return
        except IntegrityError:
            # The foreign key: the account was deleted since it was looked up. Nothing to send.
            logger.info("Password recovery for user %s not sent: the account was deleted", user_id)
            return
        notification_id = notification.id
    token_withheld = not settings.SMTP_HOST and settings.ENVIRONMENT == "production"
    send_notification(engine, settings, notification_id, body=None if token_withheld else template.format(token=token))


def fail_interrupted_notifications(engine: Engine, started_at: datetime) -> int:
    """Mark `failed` the notifications left `pending` by a process that died.

    Failing them (rather than sending again) never mails anyone twice; the user can
    ask again. Returns how many there were.
    """
    with Session(engine) as session:
        result = session.exec(
            update(Notification)
            .where(Notification.status == "pending", Notification.created_at < started_at)  # type: ignore[arg-type]
            .values(status="failed", error=INTERRUPTED_ERROR)
        )
        session.commit()
        return result.rowcount
