"""Custom field types: what a plain `str` or `int` would let through to a 500.

Tier: safeguard, beside the lesson. `models.py` and `main.py` use these names like any
type (`title: Text`, `item_id: RowId`); read this module when you wonder what they refuse.

Patterns shown:
- Reusable `Annotated` types with pydantic validators: `Text` rejects what no database
  stores (NUL, lone surrogates); `Line` and `Subject` are single lines (a mail header that
  cannot smuggle in another); `Password` counts UTF-8 bytes, bcrypt's real limit; `Email`
  is stored lower-case.
- `UTCDateTime`: a SQLAlchemy `TypeDecorator`, so every datetime leaves the database
  timezone-aware UTC, on SQLite too.
- 64-bit bounds: `BigId` for every key, and `Skip`, `Limit`, `RowId` for query and path
  parameters, so a number the driver would overflow on is a 422, not a 500.
- Ids never reused, on SQLite too: a SQLAlchemy `before_create` event gives every table
  AUTOINCREMENT, including the copies Alembic's batch mode builds.

Imports: no project module.
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, EmailStr, StringConstraints
from sqlalchemy import BigInteger, Connection, DateTime, Dialect, Integer, Table, event
from sqlalchemy.types import TypeDecorator

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,50}$"
MAX_PASSWORD_BYTES = 72
# Every character str.splitlines() breaks a line at.
LINE_SEPARATORS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns timezone-aware UTC (SQLite would hand back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def is_storable(value: str) -> bool:
    """False for text no database stores: PostgreSQL refuses NUL, and no driver encodes a
    lone surrogate (which a form in charset=utf-7 can carry)."""
    return "\x00" not in value and re.search("[\ud800-\udfff]", value) is None


def _storable_text(value: str) -> str:
    # Rejected here as a 422 rather than as a 500 at commit.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not is_storable(value):
        raise ValueError("must be valid Unicode text")
    return value


def _single_line(value: str) -> str:
    # A mail program or a log reader may break a line at any of these.
    if any(separator in value for separator in LINE_SEPARATORS):
        raise ValueError("must be a single line")
    return value


def header_safe(value: str) -> str:
    """A mail header value that cannot smuggle in another header (SPEC 5).

    Besides line separators, refuse RFC 2047 encoded words (`=?utf-8?q?...?=`): Python's
    `email` package before 3.11.10 / 3.12.5 decodes them back into raw line breaks when it
    writes the message (CVE-2024-6923). `emails.send_email` checks every subject again.
    """
    _single_line(value)
    if re.search(r"=\?.*\?=", value):
        raise ValueError("must not contain an encoded word (=?...?=)")
    return value


def _password_bytes(value: str) -> str:
    # bcrypt reads at most 72 bytes; longer would be silently cut (bcrypt < 5) or raise.
    if not 8 <= len(value.encode("utf-8", "surrogatepass")) <= MAX_PASSWORD_BYTES:
        raise ValueError("must be 8 to 72 bytes of UTF-8")
    return _storable_text(value)


Text = Annotated[str, AfterValidator(_storable_text)]
Line = Annotated[str, AfterValidator(_storable_text), AfterValidator(_single_line)]
Subject = Annotated[str, AfterValidator(_storable_text), AfterValidator(header_safe)]
Email = Annotated[EmailStr, AfterValidator(str.lower)]
Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
Password = Annotated[str, AfterValidator(_password_bytes)]


# The range of the 64-bit integers of SQLite and PostgreSQL (BIGINT).
MIN_DB_INT, MAX_DB_INT = -(2**63), 2**63 - 1

# 64-bit ids everywhere: BIGINT on PostgreSQL (INTEGER there is 32-bit), and SQLite's
# INTEGER, which is 64-bit and the only type that makes a column the autoincrementing rowid.
# Primary keys are None until the row is inserted; they are declared `int` because the
# code reads them only after a commit.
BigId = BigInteger().with_variant(Integer(), "sqlite")


@event.listens_for(Table, "before_create")
def _never_reuse_ids(table: Table, connection: Connection, **_: Any) -> None:
    """Ids of deleted rows are never handed out again on SQLite either (PostgreSQL's sequences
    never do): AUTOINCREMENT instead of SQLite's default "highest id + 1", so an old id in a
    token or a link never names a stranger. Set here, for every table SQLite creates (an
    integer primary key is all AUTOINCREMENT needs), so it holds by construction: for the
    models, for a new table of a migration, and for the copy an Alembic batch builds when it
    rebuilds a table, which would otherwise lose it without a word."""
    if connection.dialect.name == "sqlite":
        table.dialect_options["sqlite"]["autoincrement"] = True


# Ids and offsets in a request are bounded the same way.
Skip = Annotated[int, Query(ge=0, le=MAX_DB_INT)]
Limit = Annotated[int, Query(ge=1, le=100)]
RowId = Annotated[int, Path(ge=MIN_DB_INT, le=MAX_DB_INT)]
