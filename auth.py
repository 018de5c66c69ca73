"""Authentication: bcrypt passwords, JWT tokens, sessions, and the current-user dependencies.

Tier: lesson path, read fourth.

Patterns shown:
- bcrypt called directly (no passlib): hash, verify, and re-hash at login when
  `BCRYPT_ROUNDS` changed; unknown users still cost one bcrypt check.
- JWTs with PyJWT: a pinned algorithm list, required claims, a `type` claim so a reset
  token never passes for an access token, and a `stamp` claim checked against the user's
  random `security_stamp`: a token names one account, never the next owner of its id, and
  a new stamp (password change, deactivation) revokes every earlier token, on every worker.
- Sessions in the database: a login starts one (`start_session`, stored only if the
  account is still as verified), a refresh rotates it (`rotate_session`, a compare-and-set),
  logout ends it; `revoke_every_token` ends them all.
- One factory for every 401, with `WWW-Authenticate: Bearer`.
- `Annotated` dependency aliases under their providers: `TokenDep`, `CurrentUser`, `SuperUser`.

Imports: config, fieldtypes, models, database, races.
"""

import functools
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import bcrypt
import jwt
from fastapi import Depends, HTTPException
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Engine, delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

import races
from config import Settings, SettingsDep, settings as default_settings
from database import SessionDep
from fieldtypes import MAX_DB_INT, MAX_PASSWORD_BYTES, is_storable
from models import LoginSession, Token, User, new_security_stamp, utc_now

logger = logging.getLogger(__name__)

TokenType = Literal["access", "refresh", "reset"]


# --- Passwords ----------------------------------------------------------------------


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed_password: str) -> bool:
    candidate = password.encode("utf-8", "surrogatepass")
    # bcrypt 5 raises on more than 72 bytes; no stored password is that long.
    if len(candidate) > MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(candidate, hashed_password.encode())


def hash_rounds(hashed_password: str) -> int:
    """The cost stored in a hash: `$2b$12$...` -> 12."""
    return int(hashed_password.split("$")[2])


@functools.cache
def _dummy_hash(rounds: int) -> str:
    return hash_password("not a real password", rounds)


def find_login_user(session: Session, login: str) -> User | None:
    """The user whose username (in any case) or email is `login`, else None."""
    if not is_storable(login):  # no account has a NUL or a lone surrogate in its name
        return None
    named = col(User.email) if "@" in login else func.lower(User.username)
    user: User | None = session.exec(select(User).where(named == login.lower())).first()
    return user


def authenticate(session: Session, user: User | None, *, password: str, rounds: int) -> User | None:
    """`user` if `password` is theirs, else None; one bcrypt check at `rounds` either way."""
    if user is None:
        # Spend the same bcrypt time as for a real user: timing must not reveal accounts.
        verify_password(password, _dummy_hash(rounds))
        return None
    stored_hash = user.hashed_password
    if not verify_password(password, stored_hash):
        if hash_rounds(stored_hash) < rounds:
            # A hash of a lower cost is checked in a blink: spend a check at `rounds` too, so
            # the cost upgrade does not tell which accounts still have one (SPEC 5). A right
            # password spends the same on the re-hash below.
            verify_password(password, _dummy_hash(rounds))
        return None
    if hash_rounds(stored_hash) != rounds:
        # Compare-and-set: replace only the hash just verified, never a password that a
        # reset or change stored meanwhile.
        new_hash = hash_password(password, rounds)
        session.exec(
            update(User)
            .where(User.id == user.id, User.hashed_password == stored_hash)  # type: ignore[arg-type]
            .values(hashed_password=new_hash)
        )
        session.commit()
    return user


def set_password(session: Session, user: User, new_password: str, rounds: int, *, from_stamp: str) -> bool:
    """Store a new hash, and revoke every token issued before it (`revoke_every_token`).

    A compare-and-set on `from_stamp`, the stamp the caller's token carries: of two
    concurrent uses of one reset token, or a change racing a reset, only the first
    succeeds. False when no row was changed (that token was revoked meanwhile, or the
    account is gone). The caller commits.
    """
    hashed_password = hash_password(new_password, rounds)
    return revoke_every_token(session, user.id, from_stamp=from_stamp, hashed_password=hashed_password)


def revoke_every_token(session: Session, user_id: int, *, from_stamp: str | None = None, **changes: Any) -> bool:
    """Store `changes` with a new `security_stamp`, in one UPDATE, and end every session:
    every token issued before stops working, on every worker and host (a password change or
    reset, a deactivation). With `from_stamp`, only if the stamp is still that one. False
    when no row was changed. The caller commits."""
    statement = update(User).where(User.id == user_id)  # type: ignore[arg-type]
    if from_stamp is not None:
        statement = statement.where(User.security_stamp == from_stamp)  # type: ignore[arg-type]
    changed = session.exec(statement.values(security_stamp=new_security_stamp(), updated_at=utc_now(), **changes))
    if changed.rowcount != 1:
        return False
    end_every_session(session, user_id)
    return True


def create_first_superuser(engine: Engine, settings: Settings) -> None:
    """Create `FIRST_SUPERUSER_EMAIL` once; when workers race, the unique index picks one.
    A user who signed up with that email or username first blocks it: say which, loudly."""
    email, password = settings.FIRST_SUPERUSER_EMAIL, settings.FIRST_SUPERUSER_PASSWORD
    if not email or not password:
        return
    with Session(engine) as session:
        if session.exec(select(User.id).where(User.email == email)).first() is None:
            hashed_password = hash_password(password, settings.BCRYPT_ROUNDS)
            session.add(
                User(
                    email=email,
                    username=settings.FIRST_SUPERUSER_USERNAME,
                    hashed_password=hashed_password,
                    is_superuser=True,
                )
            )
            try:
                session.commit()
                logger.info("Created the first superuser %s", settings.FIRST_SUPERUSER_USERNAME)
                return
            except IntegrityError:
                session.rollback()
        holder = session.exec(select(User).where(User.email == email)).first()
        if holder is not None and holder.is_superuser:
            return  # created at an earlier start, or by a worker starting at the same time
        taken = "FIRST_SUPERUSER_EMAIL" if holder is not None else "FIRST_SUPERUSER_USERNAME"
        logger.warning("First superuser not created: another user already has its %s", taken)


# --- Tokens and sessions --------------------------------------------------------------


def create_token(
    user: User, *, token_type: TokenType, settings: Settings, login_session: LoginSession | None = None
) -> str:
    """A signed token of `token_type` for `user`.

    Every token has its own id (`jti`), so no two are alike, even within one second. Access
    and refresh tokens name their session (`sid`), and a refresh token's id is the one its
    session expects next. A reset token carries the account's `recovery_stamp` too.
    """
    lifetime = {
        "access": timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES),
        "refresh": timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS),
        "reset": timedelta(minutes=settings.RESET_TOKEN_EXPIRE_MINUTES),
    }[token_type]
    now = datetime.now(UTC)
    claims = {
        "sub": str(user.id),
        "type": token_type,
        "stamp": user.security_stamp,
        "jti": secrets.token_hex(16),
        "iat": now,
        "exp": now + lifetime,
    }
    if login_session is not None:
        claims["sid"] = login_session.id
    if token_type == "refresh" and login_session is not None:
        claims["jti"] = login_session.refresh_jti
    if token_type == "reset":
        claims["recovery"] = user.recovery_stamp
    return jwt.encode(claims, settings.SECRET_KEY, algorithm=settings.ALGORITHM)


def decode_token(token: str, *, token_type: TokenType, settings: Settings) -> dict[str, Any] | None:
    """The claims of a valid token of `token_type` (`sub` made an int), else None."""
    try:
        # The pinned algorithm list is what refuses `alg: none` and algorithm swaps.
        claims: dict[str, Any] = jwt.decode(
            token, settings.SECRET_KEY, algorithms=[settings.ALGORITHM], options={"require": ["exp", "iat", "sub"]}
        )
        claims["sub"] = int(claims["sub"])
    except (jwt.InvalidTokenError, ValueError):
        return None
    if claims.get("type") != token_type or not 1 <= claims["sub"] <= MAX_DB_INT:
        return None
    if token_type != "reset" and not isinstance(claims.get("sid"), int):
        return None
    return claims


def user_from_access_token(session: Session, token: str, settings: Settings) -> User | None:
    """The user of a valid access token whose session is still open, else None: the user
    and the session are read in one query."""
    claims = decode_token(token, token_type="access", settings=settings)
    if claims is None:
        return None
    statement = (
        select(User)
        .join(LoginSession, col(LoginSession.user_id) == col(User.id))
        .where(col(User.id) == claims["sub"], col(LoginSession.id) == claims["sid"])
        .where(col(LoginSession.expires_at) > utc_now())
    )
    user: User | None = session.exec(statement).first()
    if user is None or claims.get("stamp") != user.security_stamp:
        return None
    return user


def user_from_reset_token(session: Session, token: str, settings: Settings) -> User | None:
    """The user of a valid, unused reset token, else None."""
    claims = decode_token(token, token_type="reset", settings=settings)
    if claims is None:
        return None
    user = session.get(User, claims["sub"])
    if user is None or claims.get("stamp") != user.security_stamp:
        return None
    # An email change replaces `recovery_stamp`: a token mailed to an earlier address never
    # works again, even once the address is changed back (SPEC 5).
    if claims.get("recovery") != user.recovery_stamp:
        return None
    return user


def issue_tokens(user: User, login_session: LoginSession, settings: Settings) -> Token:
    """The access and refresh tokens of `login_session`, as login and refresh return them."""
    return Token(
        access_token=create_token(user, token_type="access", settings=settings, login_session=login_session),
        refresh_token=create_token(user, token_type="refresh", settings=settings, login_session=login_session),
        expires_in=settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
    )


def next_refresh(settings: Settings) -> dict[str, Any]:
    """What a login or a refresh gives its session: the id of the one refresh token that may
    be used next, and REFRESH_TOKEN_EXPIRE_DAYS from now to use it."""
    return {
        "refresh_jti": secrets.token_hex(16),
        "expires_at": utc_now() + timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS),
    }


def start_session(session: Session, user: User, settings: Settings) -> Token | None:
    """A new session for `user` (a login), and its tokens; None if the account changed since
    `user` was read and its password verified. Expired sessions, anyone's, are deleted on the
    way, so the table does not grow without bound."""
    session.exec(delete(LoginSession).where(col(LoginSession.expires_at) <= utc_now()))
    if not races.still_as_verified(session, user):  # a password change won the race (SPEC 5)
        session.rollback()
        return None
    login_session = LoginSession(user_id=user.id, **next_refresh(settings))
    session.add(login_session)
    session.commit()
    return issue_tokens(user, login_session, settings)


def rotate_session(session: Session, refresh_token: str, settings: Settings) -> Token | None:
    """Use up `refresh_token` and return a new pair of its session, else None.

    A compare-and-set on the session's `refresh_jti`: of two requests racing with one
    refresh token, exactly one succeeds. A refresh token that no longer matches was used
    before: treated as stolen, its whole session ends (SPEC 5). A token whose `stamp` is not
    the account's any more (a password change, reset or deactivation since) gets nothing.
    """
    claims = decode_token(refresh_token, token_type="refresh", settings=settings)
    user = None if claims is None else session.get(User, claims["sub"])
    if claims is None or user is None or not user.is_active or claims.get("stamp") != user.security_stamp:
        return None
    refreshed = next_refresh(settings)
    rotated = session.exec(
        update(LoginSession)
        .where(col(LoginSession.id) == claims["sid"], col(LoginSession.user_id) == user.id)
        .where(col(LoginSession.refresh_jti) == claims.get("jti"), col(LoginSession.expires_at) > utc_now())
        .values(**refreshed)
    )
    if rotated.rowcount != 1:
        session.exec(delete(LoginSession).where(col(LoginSession.id) == claims["sid"]))
        session.commit()
        return None
    session.commit()
    # Signed from what was written, not a reload: a racing reuse may have ended the session
    # since, and the race is settled by then anyway.
    return issue_tokens(user, LoginSession(id=claims["sid"], user_id=user.id, **refreshed), settings)


def end_session(session: Session, refresh_token: str, settings: Settings) -> bool:
    """Logout: end the session of `refresh_token`. False if the token is not valid; a used
    one still ends its session, as a reuse would."""
    claims = decode_token(refresh_token, token_type="refresh", settings=settings)
    if claims is None:
        return False
    this_session = col(LoginSession.id) == claims["sid"]
    current = session.exec(delete(LoginSession).where(this_session, col(LoginSession.refresh_jti) == claims.get("jti")))
    if current.rowcount != 1:
        session.exec(delete(LoginSession).where(this_session))
    session.commit()
    return current.rowcount == 1


def end_every_session(session: Session, user_id: int) -> None:
    """Logout everywhere: every session of the user ends, and so do its tokens. The caller commits."""
    session.exec(delete(LoginSession).where(col(LoginSession.user_id) == user_id))


# --- Dependencies -------------------------------------------------------------------


def credentials_error(detail: str = "Could not validate credentials") -> HTTPException:
    """Every 401 of the API: RFC 6750 asks for the `WWW-Authenticate` header."""
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# tokenUrl only documents where to log in; `main.create_app` writes its own settings' prefix
# into the schema (`document_login_url`).
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=f"{default_settings.API_V1_STR}/auth/login")
TokenDep = Annotated[str, Depends(oauth2_scheme)]


def get_current_user(session: SessionDep, settings: SettingsDep, token: TokenDep) -> User:
    user = user_from_access_token(session, token, settings)
    if user is None:
        raise credentials_error()
    if not user.is_active:
        raise HTTPException(status_code=403, detail="Inactive user")
    races.remember_caller(session, user)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_current_superuser(user: CurrentUser) -> User:
    """403 unless the caller is a superuser (`async`: it only reads memory, see `config.get_settings`)."""
    if not user.is_superuser:
        raise HTTPException(status_code=403, detail="Not enough privileges")
    return user


SuperUser = Annotated[User, Depends(get_current_superuser)]
