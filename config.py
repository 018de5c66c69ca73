"""Settings: every knob of the app, read once from the environment (and `.env`).

Patterns shown:
- python-dotenv fills `os.environ` from `.env`; existing variables win.
- `load_settings(environ)` parses a plain mapping into one frozen dataclass, so tests
  pass a dict instead of patching `os.environ`.
- A bad value stops start-up with one line naming the variable and the expected form,
  never echoing a secret (secret fields are `repr=False`).
- Without `SECRET_KEY` in development, a generated key is kept in `.secret_key`, so
  tokens survive `--reload` and are shared by `--workers N`.
- `get_settings` / `SettingsDep`: endpoints read the settings of the app serving them,
  so `create_app(test_settings)` needs no dependency override.

Imports: middleware (its logging set-up, for the start-up warnings).
"""

import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal, cast

from dotenv import load_dotenv
from email_validator import EmailNotValidError, validate_email
from fastapi import Depends, Request
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from middleware import configure_logging

logger = logging.getLogger(__name__)

DEV_SECRET_KEY_FILE = Path(".secret_key")
MIN_PRODUCTION_SECRET_LENGTH = 32
ALLOWED_ALGORITHMS = ("HS256", "HS384", "HS512")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class SettingsError(ValueError):
    """A setting has a value the app cannot start with; the message names it."""


@dataclass(frozen=True)
class Settings:
    PROJECT_NAME: str = "FastAPI Reference API"
    VERSION: str = "0.1.0"
    API_V1_STR: str = "/api/v1"
    ENVIRONMENT: Literal["development", "production"] = "development"
    DATABASE_URL: str = field(default="sqlite:///./app.db", repr=False)
    SECRET_KEY: str = field(default="", repr=False)
    ALGORITHM: str = "HS256"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = 30
    REFRESH_TOKEN_EXPIRE_DAYS: int = 14
    RESET_TOKEN_EXPIRE_MINUTES: int = 15
    BACKEND_CORS_ORIGINS: tuple[str, ...] = ()
    FIRST_SUPERUSER_EMAIL: str = ""
    FIRST_SUPERUSER_USERNAME: str = "admin"
    FIRST_SUPERUSER_PASSWORD: str = field(default="", repr=False)
    BCRYPT_ROUNDS: int = 12
    SMTP_HOST: str = ""
    SMTP_PORT: int = 587
    SMTP_USER: str = ""
    SMTP_PASSWORD: str = field(default="", repr=False)
    SMTP_TLS: bool = True
    SMTP_TIMEOUT_SECONDS: int = 10
    EMAILS_FROM: str = "noreply@example.com"
    LOG_LEVEL: str = "INFO"
    LOGIN_MAX_FAILURES: int = 5
    LOGIN_LOCKOUT_MINUTES: int = 15
    NOTIFICATIONS_PER_HOUR: int = 20
    RECOVERY_EMAILS_PER_HOUR: int = 3


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def _boolean(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(environ: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = environ.get(name, "").strip() or default
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _api_prefix(environ: Mapping[str, str]) -> str:
    value = environ.get("API_V1_STR", "").strip() or Settings.API_V1_STR
    if not value.startswith("/") or value.endswith("/"):
        raise SettingsError(f"API_V1_STR must start with '/' and not end with one, got {value!r}")
    return value


def _database_url(environ: Mapping[str, str]) -> str:
    value = environ.get("DATABASE_URL", "").strip() or Settings.DATABASE_URL
    try:
        make_url(value)
    except ArgumentError:
        # The URL may hold a password: name the variable, not the value.
        raise SettingsError("DATABASE_URL is not a valid SQLAlchemy URL") from None
    return value


def _cors_origins(environ: Mapping[str, str]) -> tuple[str, ...]:
    origins = [o.strip().rstrip("/") for o in environ.get("BACKEND_CORS_ORIGINS", "").split(",")]
    for origin in origins:
        if origin and origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(f"BACKEND_CORS_ORIGINS must list http(s) origins, got {origin!r}")
    return tuple(o for o in origins if o)


def _superuser_email(environ: Mapping[str, str]) -> str:
    value = environ.get("FIRST_SUPERUSER_EMAIL", "").strip().lower()
    if value:
        try:
            validate_email(value, check_deliverability=False)  # what sign-up's EmailStr checks
        except EmailNotValidError:
            raise SettingsError(f"FIRST_SUPERUSER_EMAIL must be an email address, got {value!r}") from None
    return value


def _superuser_username(environ: Mapping[str, str]) -> str:
    value = environ.get("FIRST_SUPERUSER_USERNAME", "").strip() or Settings.FIRST_SUPERUSER_USERNAME
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,50}", value):
        raise SettingsError(f"FIRST_SUPERUSER_USERNAME must be 3-50 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _emails_from(environ: Mapping[str, str]) -> str:
    value = environ.get("EMAILS_FROM", "").strip() or Settings.EMAILS_FROM
    _, address = parseaddr(value)
    if "@" not in address or "\n" in value or "\r" in value:
        raise SettingsError(f"EMAILS_FROM must be an email address such as 'App <noreply@example.com>', got {value!r}")
    return value


def read_or_create_dev_secret_key(path: Path) -> str:
    """Return the development key stored at `path`, creating it if needed.

    Safe when several workers start at once: the key is written to a private temp file
    and linked into place, so a reader never sees a half-written key and only one
    writer wins.
    """
    if not path.exists():
        fd, tmp_name = tempfile.mkstemp(dir=path.parent or ".", prefix=".secret_key.")
        try:
            with os.fdopen(fd, "w") as tmp:  # mkstemp creates it with mode 0o600
                tmp.write(secrets.token_urlsafe(48))
            os.link(tmp_name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp_name)
    return path.read_text().strip()


def _secret_key(environ: Mapping[str, str], environment: str) -> str:
    value = environ.get("SECRET_KEY", "").strip()
    if environment == "production":
        if len(value) < MIN_PRODUCTION_SECRET_LENGTH:
            raise SettingsError(
                f"SECRET_KEY must be set to at least {MIN_PRODUCTION_SECRET_LENGTH} characters"
                " when ENVIRONMENT=production"
            )
        return value
    if value:
        return value
    logger.warning(
        "SECRET_KEY is not set: using a development key kept in %s (never do this in production)",
        DEV_SECRET_KEY_FILE,
    )
    return read_or_create_dev_secret_key(DEV_SECRET_KEY_FILE)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build the settings from `environ`, or raise `SettingsError` naming the bad variable."""
    environment = _choice(environ, "ENVIRONMENT", Settings.ENVIRONMENT, ("development", "production"))
    superuser_password = environ.get("FIRST_SUPERUSER_PASSWORD", "")
    if superuser_password and not 8 <= len(superuser_password.encode()) <= 72:
        raise SettingsError("FIRST_SUPERUSER_PASSWORD must be 8 to 72 bytes of UTF-8")
    settings = Settings(
        PROJECT_NAME=environ.get("PROJECT_NAME", "").strip() or Settings.PROJECT_NAME,
        VERSION=environ.get("VERSION", "").strip() or Settings.VERSION,
        API_V1_STR=_api_prefix(environ),
        ENVIRONMENT=cast(Literal["development", "production"], environment),
        DATABASE_URL=_database_url(environ),
        ALGORITHM=_choice(environ, "ALGORITHM", Settings.ALGORITHM, ALLOWED_ALGORITHMS),
        ACCESS_TOKEN_EXPIRE_MINUTES=_integer(
            environ, "ACCESS_TOKEN_EXPIRE_MINUTES", Settings.ACCESS_TOKEN_EXPIRE_MINUTES, 1, 525_600
        ),
        REFRESH_TOKEN_EXPIRE_DAYS=_integer(
            environ, "REFRESH_TOKEN_EXPIRE_DAYS", Settings.REFRESH_TOKEN_EXPIRE_DAYS, 1, 3650
        ),
        RESET_TOKEN_EXPIRE_MINUTES=_integer(
            environ, "RESET_TOKEN_EXPIRE_MINUTES", Settings.RESET_TOKEN_EXPIRE_MINUTES, 1, 10_080
        ),
        BACKEND_CORS_ORIGINS=_cors_origins(environ),
        FIRST_SUPERUSER_EMAIL=_superuser_email(environ),
        FIRST_SUPERUSER_USERNAME=_superuser_username(environ),
        FIRST_SUPERUSER_PASSWORD=superuser_password,
        BCRYPT_ROUNDS=_integer(environ, "BCRYPT_ROUNDS", Settings.BCRYPT_ROUNDS, 4, 31),
        SMTP_HOST=environ.get("SMTP_HOST", "").strip(),
        SMTP_PORT=_integer(environ, "SMTP_PORT", Settings.SMTP_PORT, 1, 65535),
        SMTP_USER=environ.get("SMTP_USER", "").strip(),
        SMTP_PASSWORD=environ.get("SMTP_PASSWORD", ""),
        SMTP_TLS=_boolean(environ, "SMTP_TLS", Settings.SMTP_TLS),
        SMTP_TIMEOUT_SECONDS=_integer(environ, "SMTP_TIMEOUT_SECONDS", Settings.SMTP_TIMEOUT_SECONDS, 1, 300),
        EMAILS_FROM=_emails_from(environ),
        LOG_LEVEL=_choice(
            {"LOG_LEVEL": environ.get("LOG_LEVEL", "").upper()}, "LOG_LEVEL", Settings.LOG_LEVEL, LOG_LEVELS
        ),
        LOGIN_MAX_FAILURES=_integer(environ, "LOGIN_MAX_FAILURES", Settings.LOGIN_MAX_FAILURES, 1, 1000),
        LOGIN_LOCKOUT_MINUTES=_integer(environ, "LOGIN_LOCKOUT_MINUTES", Settings.LOGIN_LOCKOUT_MINUTES, 1, 10_080),
        NOTIFICATIONS_PER_HOUR=_integer(environ, "NOTIFICATIONS_PER_HOUR", Settings.NOTIFICATIONS_PER_HOUR, 1, 100_000),
        RECOVERY_EMAILS_PER_HOUR=_integer(
            environ, "RECOVERY_EMAILS_PER_HOUR", Settings.RECOVERY_EMAILS_PER_HOUR, 1, 1000
        ),
        # Last: its warning or key file only once every other value is known to be good.
        SECRET_KEY=_secret_key(environ, environment),
    )
    if settings.ENVIRONMENT == "production" and not settings.SMTP_HOST:
        logger.warning(
            "SMTP_HOST is not set in production: emails are only logged, reset tokens withheld,"
            " so nobody can recover a password"
        )
    return settings


load_dotenv()
# Before the settings are read: their start-up warnings (no SECRET_KEY, no SMTP_HOST) get the
# app's log format, level and time included, like every later line (SPEC 7).
_log_level = os.environ.get("LOG_LEVEL", "").strip().upper()
configure_logging(_log_level if _log_level in LOG_LEVELS else Settings.LOG_LEVEL)
try:
    settings = load_settings(os.environ)
except SettingsError as error:
    # One line on stderr and exit status 1, instead of a traceback from deep in an import.
    sys.exit(f"Configuration error: {error}")


async def get_settings(request: Request) -> Settings:
    """The settings of the app serving this request (see `main.create_app`).

    `async` because it only reads memory: a `def` dependency costs a threadpool trip.
    """
    return cast(Settings, request.app.state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
