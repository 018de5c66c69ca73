"""Abuse limits and concurrency bounds: what keeps a burst of traffic or an abuser from
taking the service down (SPEC 5).

Tier: safeguard, beside the lesson. `main.py` and `emails.py` call it by name
(`limits.refuse_throttled_login(...)`); a beginner may skip it on a first read.

Patterns shown:
- Login throttling kept in the database (`LoginFailure` rows), so it holds across
  workers, hosts and restarts; a wrong current password counts like a failed login.
- Hourly caps on notifications, counted in the database one request at a time per owner.
- One Retry-After formula (`seconds_until`), one 429 factory (`too_many_requests`).
- `BCRYPT_SLOT`: FastAPI's `Depends(..., max_concurrency=N)` bounds the routes that run
  bcrypt; `MAIL_THREADS`: an anyio `CapacityLimiter` bounds the threads that send mail.
  Waiting for either holds no worker thread.

Imports: config, models, auth.
"""

import hashlib
import math
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from anyio import CapacityLimiter
from fastapi import Depends, HTTPException
from sqlalchemy import delete
from sqlmodel import Session, col, select

import auth
from config import Settings
from models import LoginFailure, Notification, User, utc_now

TOO_MANY_LOGINS = "Too many failed logins, try again later"


def seconds_until(counted_since: datetime, window_start: datetime) -> int:
    """Whole seconds until `counted_since` leaves a window that now starts at `window_start`."""
    return max(1, math.ceil((counted_since - window_start).total_seconds()))


def too_many_requests(detail: str, retry_after: int) -> HTTPException:
    """Every 429 of the API: `Retry-After` says when to come back, in whole seconds."""
    return HTTPException(status_code=429, detail=detail, headers={"Retry-After": str(retry_after)})


# --- Login throttling -------------------------------------------------------------------


def login_key(login: str, user: User | None) -> str:
    """What a failed login counts against (see `models.LoginFailure`)."""
    if user is not None:
        return account_key(user)
    return "text:" + hashlib.sha256(login.lower().encode("utf-8", "surrogatepass")).hexdigest()


def account_key(user: User) -> str:
    """The failed-login count of `user`'s account: its username and email share it."""
    return f"user:{user.id}"


def refuse_throttled_login(session: Session, key: str, settings: Settings) -> None:
    """429 once `key` has LOGIN_MAX_FAILURES failures within LOGIN_LOCKOUT_MINUTES, until the
    oldest of them leaves the window. Checked before any bcrypt check, and not a failure itself."""
    window_start = utc_now() - timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
    failed_at = col(LoginFailure.failed_at)
    recent = session.exec(
        select(failed_at)
        .where(LoginFailure.login_key == key, failed_at > window_start)
        .order_by(failed_at.desc())
        .limit(settings.LOGIN_MAX_FAILURES)
    ).all()
    if len(recent) == settings.LOGIN_MAX_FAILURES:
        raise too_many_requests(TOO_MANY_LOGINS, seconds_until(recent[-1], window_start))


def record_login_failure(session: Session, key: str, settings: Settings) -> None:
    """Count a failed login against `key`, and delete the failures too old to count."""
    now = utc_now()
    session.add(LoginFailure(login_key=key, failed_at=now))
    window_start = now - timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
    session.exec(delete(LoginFailure).where(col(LoginFailure.failed_at) <= window_start))
    session.commit()


def clear_login_failures(session: Session, key: str) -> None:
    """A successful login or password reset: `key` starts again from no failure. The caller commits."""
    session.exec(delete(LoginFailure).where(col(LoginFailure.login_key) == key))


def check_current_password(session: Session, user: User, password: str, settings: Settings) -> None:
    """400 unless `password` is the caller's; a wrong one counts as a failed login of the
    account. With `refuse_throttled_login` first, a stolen access token is no way to guess the
    password (SPEC 5)."""
    if not auth.verify_password(password, user.hashed_password):
        record_login_failure(session, account_key(user), settings)
        raise HTTPException(status_code=400, detail="Incorrect password")


# --- Hourly caps --------------------------------------------------------------------------


class HourlyLimitError(Exception):
    """Raised by `add_within_hourly_cap` instead of adding: the owner is at the limit."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after  # whole seconds until the oldest counted one is an hour old


def add_within_hourly_cap(session: Session, notification: Notification, limit: int, kind: str | None = None) -> None:
    """Add `notification`, unless its owner already has `limit` notifications (of `kind`, or
    of any kind) created in the last 60 minutes: then roll back and raise `HourlyLimitError`.

    The new row is written first and counted with the others, one request at a time per
    owner: PostgreSQL locks the owner's row until commit, and SQLite lets one writer at a time
    hold the database from its first write.
    """
    session.exec(select(User.id).where(User.id == notification.owner_id).with_for_update()).first()
    session.add(notification)
    session.flush()
    hour_ago = utc_now() - timedelta(hours=1)
    created_at = col(Notification.created_at)
    recent = select(created_at).where(col(Notification.owner_id) == notification.owner_id, created_at > hour_ago)
    if kind is not None:
        recent = recent.where(col(Notification.kind) == kind)
    newest_first = session.exec(recent.order_by(created_at.desc()).limit(limit + 1)).all()
    if len(newest_first) > limit:  # the new one and `limit` others
        session.rollback()
        raise HourlyLimitError(seconds_until(newest_first[limit], hour_ago))


# --- Concurrency bounds -------------------------------------------------------------------

# bcrypt is the costliest thing the API does (a quarter second of CPU at cost 12). Routes
# that hash or check a password first wait for one of these slots, on the event loop: the
# waiting holds no worker thread and no database session, and bcrypt runs at most one
# check per core. So a burst of logins (a workshop at 9:00, a guessing script) queues
# behind itself while every other request keeps the threads and sessions it needs.
# bench/ on 2 cores: one slot per core gave logins 0.54x of the bcrypt bound, one slot
# fewer 0.44x, and both kept reads and password recovery above half (bench/README.md).
BCRYPT_CONCURRENCY = os.cpu_count() or 1


async def bcrypt_slot() -> AsyncIterator[None]:
    """Held for the whole of a route that runs bcrypt; see BCRYPT_CONCURRENCY."""
    yield


# One shared object, so every route shares the limit; in a route's `dependencies=[...]`, it
# is taken before the route's own parameters (its session among them).
BCRYPT_SLOT = Depends(bcrypt_slot, scope="function", max_concurrency=BCRYPT_CONCURRENCY)

# Mail is sent in threads of its own, at most this many at once per process: a mail server
# that is slow or gone (up to SMTP_TIMEOUT_SECONDS a step) holds at most this many threads,
# and further mail waits on the event loop, holding none. The bound sits in the background
# task, after the response: no request waits for a mail slot (SPEC 5).
MAIL_CONCURRENCY = 4
MAIL_THREADS = CapacityLimiter(MAIL_CONCURRENCY)
