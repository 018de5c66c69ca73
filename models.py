"""Tables and API schemas: SQLModel classes that are both.

Tier: lesson path, read second.

Patterns shown:
- Base / table / Create / Update / Public / list classes per resource, each labelled with
  who it is for; fields a client must not set live only on the table (or the superuser's
  update class), so sign-up and `/users/me` ignore them whatever the body says.
- Update classes: every field optional, but an explicit `null` for a non-nullable column
  is a 422, not a crash at commit (`str = Field(default=None)`: None is only the default).
- Field types from `fieldtypes.py` (`Text`, `Email`, `Password`, `UTCDateTime`, ...): each
  says what it refuses there.
- Foreign keys with `ondelete="CASCADE"`: a user's items and notifications go with them.
- Ids never reused, on SQLite too: `fieldtypes.py` gives every table AUTOINCREMENT when it
  is created, so an old id in a token or a link never names a stranger.
- `security_stamp`: a random value each token carries; a new one revokes them all
  (`recovery_stamp` does the same for reset tokens alone, at an email change).

Imports: fieldtypes.
"""

import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import StrictBool
from sqlalchemy import Index, func
from sqlmodel import Field, SQLModel

from fieldtypes import BigId, Email, Line, Password, Subject, Text, Username, UTCDateTime

# Every constraint and index gets a predictable name: Alembic can only drop or change a named
# one (in SQLite's batch mode too), and autogenerate then writes the same name on both databases.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NotificationStatus = Literal["pending", "sent", "failed"]
# What a notification is for: the hourly caps of SPEC 5 count by owner and kind.
NotificationKind = Literal["welcome", "recovery", "email_change", "message"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_security_stamp() -> str:
    return secrets.token_hex(16)


# --- Users --------------------------------------------------------------------------


# Shared properties of a user, as clients see them
class UserBase(SQLModel):
    email: Email = Field(max_length=255, unique=True, schema_extra={"examples": ["ada@example.com"]})
    username: Username = Field(min_length=3, max_length=50, schema_extra={"examples": ["ada"]})
    full_name: Line | None = Field(default=None, max_length=255, schema_extra={"examples": ["Ada Lovelace"]})


# Database table: adds what only the server sets
class User(UserBase, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    hashed_password: str
    is_active: bool = True
    is_superuser: bool = False
    # Random, carried by every token of this account: replaced when the password changes
    # or the user is deactivated, which revokes them all. A new account gets its own, so
    # no token of a deleted account ever passes for another, whatever its id.
    security_stamp: str = Field(default_factory=new_security_stamp, max_length=32)
    # Random, carried by reset tokens only: replaced when the email changes, so a reset
    # token mailed to an earlier address never works again, even if the address comes back.
    recovery_stamp: str = Field(
        default_factory=new_security_stamp, max_length=32, sa_column_kwargs={"server_default": ""}
    )
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


# Usernames keep the case they were given but are unique regardless of it.
Index("ix_user_username_lower", func.lower(User.username), unique=True)


# Body of sign-up (POST /users/)
class UserCreate(UserBase):
    password: Password = Field(schema_extra={"examples": ["correct horse battery"]})


# Profile fields of the two update bodies below
class UserProfileUpdate(SQLModel):
    email: Email = Field(default=None, max_length=255, schema_extra={"examples": ["ada@example.com"]})
    username: Username = Field(default=None, min_length=3, max_length=50, schema_extra={"examples": ["ada"]})
    full_name: Line | None = Field(default=None, max_length=255, schema_extra={"examples": ["Ada King"]})


# Body of PATCH /users/me: what a user may change about themselves
class UserUpdateMe(UserProfileUpdate):
    current_password: str | None = Field(
        default=None,
        max_length=1024,
        description="Required to change the email",
        schema_extra={"examples": ["correct horse battery"]},
    )


# Body of PATCH /users/{id}: what a superuser may change about anyone
class UserUpdate(UserProfileUpdate):
    password: Password = Field(default=None, schema_extra={"examples": ["set by an admin"]})
    # Strict: `false` is not 0 and "1" is not true (SPEC 4).
    is_active: StrictBool = Field(default=None, schema_extra={"examples": [True]})
    is_superuser: StrictBool = Field(default=None, schema_extra={"examples": [False]})


# Body of PATCH /users/me/password
class UpdatePassword(SQLModel):
    current_password: str = Field(max_length=1024, schema_extra={"examples": ["correct horse battery"]})
    new_password: Password = Field(schema_extra={"examples": ["a new long passphrase"]})


# Returned for a user: never the password hash
class UserPublic(UserBase):
    id: int
    is_active: bool
    is_superuser: bool
    created_at: datetime
    updated_at: datetime


class UsersPublic(SQLModel):
    data: list[UserPublic]
    count: int


# --- Items --------------------------------------------------------------------------


class ItemBase(SQLModel):
    title: Text = Field(min_length=1, max_length=255, schema_extra={"examples": ["Buy milk"]})
    description: Text | None = Field(default=None, max_length=1000, schema_extra={"examples": ["Two litres"]})


class Item(ItemBase, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    owner_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=BigId)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


# Body of POST /items/: the owner is the caller, never the body
class ItemCreate(ItemBase):
    pass


class ItemUpdate(SQLModel):
    title: Text = Field(default=None, min_length=1, max_length=255, schema_extra={"examples": ["Buy oat milk"]})
    description: Text | None = Field(default=None, max_length=1000, schema_extra={"examples": ["One litre"]})


class ItemPublic(ItemBase):
    id: int
    owner_id: int
    created_at: datetime
    updated_at: datetime


class ItemsPublic(SQLModel):
    data: list[ItemPublic]
    count: int


# --- Notifications ------------------------------------------------------------------


# What a background task was asked to send, and what became of it
class NotificationBase(SQLModel):
    email: Email = Field(max_length=255, schema_extra={"examples": ["ada@example.com"]})
    subject: Subject = Field(min_length=1, max_length=255, schema_extra={"examples": ["Hello"]})
    message: Text = Field(min_length=1, max_length=10_000, schema_extra={"examples": ["Plain-text body"]})


class Notification(NotificationBase, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    owner_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=BigId)
    kind: str = Field(default="message", max_length=16, sa_column_kwargs={"server_default": "message"})
    status: str = Field(default="pending", max_length=16)
    error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# Body of POST /notifications/
class NotificationCreate(NotificationBase):
    pass


class NotificationPublic(NotificationBase):
    id: int
    owner_id: int
    status: NotificationStatus
    error: str | None
    created_at: datetime
    sent_at: datetime | None


class NotificationsPublic(SQLModel):
    data: list[NotificationPublic]
    count: int


# --- Auth ---------------------------------------------------------------------------


# A failed login, counted against what it named for LOGIN_LOCKOUT_MINUTES (SPEC 5): an
# account ("user:<id>", its username and email alike), or a login text that matches none
# ("text:<sha256 of it, lower-cased>": people type passwords into the username field).
# Rows older than the window are deleted as new failures come in.
class LoginFailure(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    login_key: str = Field(max_length=80, index=True)
    failed_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, index=True)


# A session: one per login (SPEC 5), what its refresh token and access tokens name, so
# that logout can end it. Ended sessions are deleted at once, expired ones as new logins
# come in; a deleted user's go with the user.
class LoginSession(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=BigId)
    # The id of the one refresh token that may be used next: each use replaces it.
    refresh_jti: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


# Body of a successful login or refresh
class Token(SQLModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str = Field(description="Trade it at POST /auth/refresh for a new pair, once")


# Body of POST /auth/refresh and POST /auth/logout
class RefreshRequest(SQLModel):
    refresh_token: str = Field(max_length=4096)


class PasswordRecovery(SQLModel):
    email: Email = Field(max_length=255, schema_extra={"examples": ["ada@example.com"]})


class PasswordReset(SQLModel):
    token: str = Field(max_length=4096, description="The token from the recovery email")
    new_password: Password = Field(schema_extra={"examples": ["a new long passphrase"]})


class Message(SQLModel):
    message: str


# Body of every error response (FastAPI's 422 has its own, a list of errors)
class ErrorMessage(SQLModel):
    detail: str


class HealthStatus(SQLModel):
    status: str = Field(schema_extra={"examples": ["ok"]})
    database: str = Field(schema_extra={"examples": ["ok"]})
