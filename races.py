"""Safeguard: two requests racing on one row never give a 5xx (SPEC 5).

Tier: safeguards, beside the lesson. A beginner may skip this module on a first read: it
keeps the routes of `main.py` correct when a row they read is deleted by another request
before they write it.

Patterns shown:
- One mechanism, in the session dependency (`database.get_session`): a write that finds
  its row gone meanwhile raises, and `answer_row_gone` turns that into the 4xx a client
  would have got a moment later: 401 when the caller's own account is gone (as for a
  deleted user's token), else 404. No wrapper per endpoint.
- What "gone" looks like to SQLAlchemy: an UPDATE of a row that is not there any more
  (`StaleDataError`), an INSERT that refers to a deleted row (a foreign-key
  `IntegrityError`), and, through `delete_row`, a DELETE that found nothing to delete (the
  ORM itself only warns about that one).
- `remember_caller`: the dependency that authenticates notes the caller on the session
  (SQLAlchemy's `Session.info`, a dict for exactly such notes), so the answer can tell the
  two cases apart.

Imports: models.
"""

from fastapi import HTTPException
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from models import Item, User

ROW_GONE_ERRORS = (StaleDataError, IntegrityError)
CALLER_ID = "caller_id"


def remember_caller(session: Session, user: User) -> None:
    """Note who is calling, for `answer_row_gone`."""
    session.info[CALLER_ID] = user.id


def is_foreign_key_error(error: IntegrityError) -> bool:
    """True if `error` is a foreign key refusing a row (SQLite's message, PostgreSQL's code)."""
    return "FOREIGN KEY constraint failed" in str(error.orig) or getattr(error.orig, "sqlstate", None) == "23503"


def answer_row_gone(session: Session, error: StaleDataError | IntegrityError) -> HTTPException:
    """The 4xx for a write whose row went away meanwhile; any other error is raised again."""
    if isinstance(error, IntegrityError) and not is_foreign_key_error(error):
        raise error
    session.rollback()
    caller_id = session.info.get(CALLER_ID)
    if caller_id is not None and session.get(User, caller_id) is None:
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
