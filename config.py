"""Settings: every knob of the app, read once from the environment (and `.env`).

Tier: lesson path, read first.

Patterns shown:
- python-dotenv fills `os.environ` from `.env`; existing variables win.
- One frozen pydantic model: each setting is one line with its type, default and rule
  (`Annotated[int, Field(ge=4, le=31)] = 12`, `Literal[...]`, or a validator that says
  in words what it expects). Attribute names are the env var names.
- `load_settings(environ)` validates a plain mapping, so tests pass a dict instead of
  patching `os.environ`; an empty value means the default.
- A bad value stops start-up with one line naming the variable and the expected form,
  never echoing a secret (secret fields are `repr=False`, and so stay out of messages).
- Without `SECRET_KEY` in development, a generated key is kept in `.secret_key`, so
  tokens survive `--reload` and are shared by `--workers N`.
- `log_start_up_warnings`: `create_app` calls it once logging is set up, so the warnings
  have the app's log format, level and time included (SPEC 7).
- `get_settings` / `SettingsDep`: endpoints read the settings of the app serving them,
  so `create_app(test_settings)` needs no dependency override.

Imports: no project module.
"""

import contextlib
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal, cast, get_args

import sqlalchemy
from dotenv import load_dotenv
from email_validator import EmailNotValidError, validate_email
from fastapi import Depends, Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError

logger = logging.getLogger(__name__)

DEV_SECRET_KEY_FILE = Path(".secret_key")


class SettingsError(ValueError):
    """A setting has a value the app cannot start with; the message names it."""


# The rules a plain type cannot say. Each raises ValueError saying what it expects, and
# `load_settings` puts the variable's name in front: "API_V1_STR must start with '/' ...".


def _matching(pattern: str, expected: str) -> AfterValidator:
    """The rule "the whole value matches `pattern`", which `expected` says in words."""

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(expected)
        return value

    return AfterValidator(check)


def _sqlalchemy_url(value: str) -> str:
    try:
        sqlalchemy.make_url(value)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError("is not a valid SQLAlchemy URL") from None
    return value


def _comma_separated(value: str) -> list[str]:
    return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]


def _email_address(value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)  # what sign-up's EmailStr checks
    except EmailNotValidError:
        raise ValueError("must be an email address") from None
    return value


def _mailbox(value: str) -> str:
    if "@" not in parseaddr(value)[1] or "\n" in value or "\r" in value:
        raise ValueError("must be an email address such as 'App <noreply@example.com>'")
    return value


def _bcrypt_password(value: str) -> str:
    if not 8 <= len(value.encode()) <= 72:  # bcrypt reads 72 bytes at most
        raise ValueError("must be 8 to 72 bytes of UTF-8")
    return value


HttpOrigin = Annotated[str, _matching(r"\*|https?://.*", "must list http(s) origins")]
Username = Annotated[str, _matching(r"[A-Za-z0-9_.-]{3,50}", "must be 3-50 letters, digits, '_', '.' or '-'")]


class Settings(BaseModel, frozen=True):
    """Every setting, named like its environment variable, with its type, default and rule.

    Build it with `load_settings`, which also applies the SECRET_KEY rules.
    """

    PROJECT_NAME: str = "FastAPI Reference API"
    VERSION: str = "0.1.0"
    API_V1_STR: Annotated[str, _matching(r"/.*[^/]", "must start with '/' and not end with one")] = "/api/v1"
    ENVIRONMENT: Literal["development", "production"] = "development"
    DATABASE_URL: Annotated[str, AfterValidator(_sqlalchemy_url), Field(repr=False)] = "sqlite:///./app.db"
    SECRET_KEY: Annotated[str, Field(repr=False)] = ""
    ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    ACCESS_TOKEN_EXPIRE_MINUTES: Annotated[int, Field(ge=1, le=525_600)] = 30
    REFRESH_TOKEN_EXPIRE_DAYS: Annotated[int, Field(ge=1, le=3650)] = 14
    RESET_TOKEN_EXPIRE_MINUTES: Annotated[int, Field(ge=1, le=10_080)] = 15
    BACKEND_CORS_ORIGINS: Annotated[tuple[HttpOrigin, ...], BeforeValidator(_comma_separated)] = ()
    FIRST_SUPERUSER_EMAIL: Annotated[str, BeforeValidator(str.lower), AfterValidator(_email_address)] = ""
    FIRST_SUPERUSER_USERNAME: Username = "admin"
    FIRST_SUPERUSER_PASSWORD: Annotated[str, AfterValidator(_bcrypt_password), Field(repr=False)] = ""
    BCRYPT_ROUNDS: Annotated[int, Field(ge=4, le=31)] = 12
    SMTP_HOST: str = ""
    SMTP_PORT: Annotated[int, Field(ge=1, le=65535)] = 587
    SMTP_USER: str = ""
    SMTP_PASSWORD: Annotated[str, Field(repr=False)] = ""
    SMTP_TLS: bool = True
    SMTP_TIMEOUT_SECONDS: Annotated[int, Field(ge=1, le=300)] = 10
    EMAILS_FROM: Annotated[str, AfterValidator(_mailbox)] = "noreply@example.com"
    LOG_LEVEL: Annotated[Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], BeforeValidator(str.upper)] = "INFO"
    LOGIN_MAX_FAILURES: Annotated[int, Field(ge=1, le=1000)] = 5
    LOGIN_LOCKOUT_MINUTES: Annotated[int, Field(ge=1, le=10_080)] = 15
    NOTIFICATIONS_PER_HOUR: Annotated[int, Field(ge=1, le=100_000)] = 20
    RECOVERY_EMAILS_PER_HOUR: Annotated[int, Field(ge=1, le=1000)] = 3

    # True when SECRET_KEY came from DEV_SECRET_KEY_FILE: `log_start_up_warnings` says so.
    _dev_key: bool = False


def _one_line(error: ValidationError) -> str:
    """`NAME must be <expected form>, got 'value'`, for the first bad value; a secret's value is never shown."""
    details = error.errors()[0]
    name = str(details["loc"][0])
    field = Settings.model_fields[name]
    if details["type"] == "value_error":  # one of the rules above, which says what it expects
        expected = str(details["ctx"]["error"])
    elif field.annotation is bool:
        expected = "must be true or false"
    elif field.annotation is int:
        expected = f"must be an integer from {field.metadata[0].ge} to {field.metadata[1].le}"  # Field(ge=, le=)
    else:
        expected = f"must be one of {', '.join(get_args(field.annotation))}"
    return f"{name} {expected}" if field.repr is False else f"{name} {expected}, got {details['input']!r}"


def read_or_create_dev_secret_key(path: Path) -> str:
    """Return the development key stored at `path`, creating it if needed.

    Safe when several workers start at once: the key is written to a private temp file
    and linked into place, so a reader never sees a half-written key and only one
    writer wins.
    """
    if not path.exists():
        # Created with mode 0o600, and removed on leaving the block (a link to it stays).
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".secret_key.") as tmp:
            tmp.write(secrets.token_urlsafe(48))
            tmp.flush()  # the whole key is on disk before anyone can read it through `path`
            with contextlib.suppress(FileExistsError):  # another worker's key won: read that one
                os.link(tmp.name, path)
    return path.read_text().strip()


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build the settings from `environ`, or raise `SettingsError` naming the bad variable.

    An empty (or blank) value means the default. Nothing is logged here: see
    `log_start_up_warnings`.
    """
    # Every value is stripped, passwords too: a newline or space left by a secret file or a
    # paste is a likelier accident than a password that starts or ends with a space.
    values = {name: environ[name].strip() for name in Settings.model_fields if environ.get(name, "").strip()}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from None
    # SECRET_KEY last: its rule depends on ENVIRONMENT, and a key file is written only once
    # every other value is known to be good.
    if settings.ENVIRONMENT == "production" and len(settings.SECRET_KEY) < 32:  # SPEC 2
        raise SettingsError("SECRET_KEY must be set to at least 32 characters when ENVIRONMENT=production")
    if not settings.SECRET_KEY:
        settings = settings.model_copy(update={"SECRET_KEY": read_or_create_dev_secret_key(DEV_SECRET_KEY_FILE)})
        settings._dev_key = True
    return settings


def log_start_up_warnings(settings: Settings) -> None:
    """Warn about settings the app starts with but should not run on.

    `create_app` calls this right after it sets up logging, so these lines get the app's
    log format (SPEC 7); loading the settings, at import, logs nothing.
    """
    if settings._dev_key:
        logger.warning("SECRET_KEY is not set: using a development-only key kept in %s", DEV_SECRET_KEY_FILE)
    if settings.ENVIRONMENT == "production" and not settings.SMTP_HOST:
        logger.warning("SMTP_HOST is not set in production: emails are only logged, so nobody can recover a password")


load_dotenv()
try:
    settings = load_settings(os.environ)
except SettingsError as error:
    # One line on stderr and exit status 1, instead of a traceback from deep in an import.
    raise SystemExit(f"Configuration error: {error}") from None


async def get_settings(request: Request) -> Settings:
    """The settings of the app serving this request (see `main.create_app`).

    The async rule, stated once, here where the lesson first meets it: anything that
    queries, hashes, mails or touches a file is a sync `def`, which FastAPI runs in a worker
    thread; `async def` only where nothing blocks at all, like this one, which only reads
    memory and so saves the threadpool trip.
    """
    return cast(Settings, request.app.state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
