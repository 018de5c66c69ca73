"""Races: two requests on one row (or two workers on one file) never give a 5xx (SPEC 5).

Tier: safeguard, beside the lesson. `main.py` and `database.py` call it by name
(`races.user_change(...)`); a beginner may skip it on a first read: it keeps the routes
correct when another request changes or deletes a row between their read and their write.

Patterns shown:
- One mechanism, in the session dependency (`database.get_session`): a write the database
  refuses because of another request raises, and `answer_write_refused` turns that into the
  4xx a client would have got a moment later: 400 for a duplicate (by the unique
  constraint's name), 401 when the caller's own account is gone (as for a deleted user's
  token), else 404 for a row gone. No wrapper per endpoint.
- What "gone" looks like to SQLAlchemy: an UPDATE of a row that is not there any more
  (`StaleDataError`), an INSERT that refers to a deleted row (a foreign-key
  `IntegrityError`), and, through `delete_row`, a DELETE that found nothing to delete (the
  ORM itself only warns about that one).
- `remember_caller`: the dependency that authenticates notes the caller on the session
  (SQLAlchemy's `Session.info`, a dict for exactly such notes), so the answer can tell the
  two cases apart.
- `user_change`: one context manager for every change to a user that a race could break:
  two superusers demoting each other take turns (row locks), the last active superuser
  stays.
- `still_as_verified`: a login stores its session only if the account is still as its
  password was checked (`auth.start_session`).
- `switch_to_wal`: workers starting on a new SQLite file race to switch it to WAL; the
  losers wait a little and try again.

Imports: models.
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException
from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from models import Item, User

WRITE_REFUSED_ERRORS = (StaleDataError, IntegrityError)
EMAIL_TAKEN, USERNAME_TAKEN = "Email already registered", "Username already taken"
# What each unique constraint's 400 says, by the names the databases report (models.py).
DUPLICATE_DETAILS = {
    "uq_user_email": EMAIL_TAKEN,  # PostgreSQL
    "user.email": EMAIL_TAKEN,  # SQLite
    "ix_user_username_lower": USERNAME_TAKEN,  # both
}
CALLER_ID = "caller_id"
ACTIVE_SUPERUSERS = select(User.id).where(User.is_superuser, User.is_active)


def remember_caller(session: Session, user: User) -> None:
    """Note who is calling, for `answer_row_gone`."""
    session.info[CALLER_ID] = user.id


def is_foreign_key_error(error: IntegrityError) -> bool:
    """True if `error` is a foreign key refusing a row (SQLite's message, PostgreSQL's code)."""
    return "FOREIGN KEY constraint failed" in str(error.orig) or getattr(error.orig, "sqlstate", None) == "23503"


def duplicate_detail(error: IntegrityError) -> str | None:
    """The 400's detail when `error` is a unique constraint refusing a duplicate, else None.
    PostgreSQL names the constraint; SQLite names the column, or the index."""
    if "UNIQUE constraint failed" not in str(error.orig) and getattr(error.orig, "sqlstate", None) != "23505":
        return None
    reported = getattr(getattr(error.orig, "diag", None), "constraint_name", None) or str(error.orig)
    return next((detail for name, detail in DUPLICATE_DETAILS.items() if name in reported), "Already exists")


def answer_write_refused(session: Session, error: StaleDataError | IntegrityError) -> HTTPException:
    """The 4xx for a write the database refused because of what another request did first:
    a duplicate (400), a row gone meanwhile (404), the caller's own account gone (401). Any
    other refusal (a NOT NULL, say) is a bug, raised again: a 500."""
    session.rollback()
    if isinstance(error, IntegrityError) and (detail := duplicate_detail(error)) is not None:
        return HTTPException(status_code=400, detail=detail)
    if isinstance(error, IntegrityError) and not is_foreign_key_error(error):
        raise error
    caller_id = session.info.get(CALLER_ID)
    if caller_id is not None and session.get(User, caller_id) is None:
        # auth.credentials_error's 401 (auth imports this module, so it cannot be imported here)
        return HTTPException(
            status_code=401, detail="Could not validate credentials", headers={"WWW-Authenticate": "Bearer"}
        )
    return HTTPException(status_code=404, detail="Not found")


def delete_row(session: Session, row: User | Item) -> None:
    """DELETE `row`; `StaleDataError` when another request deleted it first, as for an UPDATE.
    The database deletes what refers to it (ON DELETE CASCADE). The caller commits."""
    table = type(row)
    deleted = session.exec(delete(table).where(table.id == row.id))  # type: ignore[arg-type]
    if deleted.rowcount != 1:
        raise StaleDataError(f"{table.__name__} {row.id} was deleted by another request")


def still_as_verified(session: Session, user: User) -> bool:
    """True if `user`'s row is still there, active, with the `security_stamp` it was read
    with: a login whose password was checked while a change, a reset or a deactivation
    replaced the stamp gets no session. Called after the transaction's first write, it holds
    the row until commit: PostgreSQL locks it (FOR SHARE, which a change of the stamp waits
    for); SQLite lets one writer at a time hold the database from its first write."""
    unchanged = select(User.id).where(
        User.id == user.id, User.security_stamp == user.security_stamp, col(User.is_active)
    )
    return session.exec(unchanged.with_for_update(read=True)).first() is not None


def ensure_unique(session: Session, *, email: str | None, username: str | None, user_id: int | None = None) -> None:
    """400 if another user already has this email or (in any case) this username."""
    others = select(User.id).where(User.id != user_id)
    if email is not None and session.exec(others.where(User.email == email)).first() is not None:
        raise HTTPException(status_code=400, detail=EMAIL_TAKEN)
    if username is not None and session.exec(others.where(func.lower(User.username) == username.lower())).first():
        raise HTTPException(status_code=400, detail=USERNAME_TAKEN)


@contextmanager
def user_change(session: Session, user: User) -> Iterator[None]:
    """Around a change to `user` (an update, or `delete_row`), which it commits.

    If `user` is an active superuser, every active superuser's row stays locked until the
    commit (PostgreSQL: FOR UPDATE; SQLite lets one writer at a time hold the database from
    its first write), so that two superusers demoting each other take turns; and if no
    active superuser would be left, nothing changes: 400. (A concurrent request that took the
    email or username first: the unique index refuses the write, and `answer_write_refused`
    gives the same 400 as `ensure_unique`.)
    """
    was_superuser = user.is_superuser and user.is_active
    if was_superuser:
        session.exec(ACTIVE_SUPERUSERS.order_by(col(User.id)).with_for_update()).all()
    yield
    session.flush()
    if was_superuser and session.exec(ACTIVE_SUPERUSERS).first() is None:
        session.rollback()
        raise HTTPException(status_code=400, detail="Cannot remove the last superuser")
    session.commit()


def switch_to_wal(cursor: sqlite3.Cursor, timeout_ms: int) -> None:
    """Readers never block the writer and the writer never blocks readers.

    WAL is kept in the file, so only the first connection to a new database switches it.
    That switch needs an exclusive lock, and when two connections switch at once (workers
    starting on a fresh file) SQLite tells one "database is locked" at once, without
    waiting for the busy timeout: it waits a little and tries again.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
