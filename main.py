"""The application: every endpoint, one router per resource, and `create_app()`.

Tier: lesson path, read last. It calls the other lesson modules by name (`auth.start_session`,
`emails.send_later`) and the safeguards the same way (`limits.`, `races.`).

Patterns shown:
- `APIRouter(prefix=..., tags=[...])` per resource, all under `API_V1_STR`; operation ids
  `tag-function_name` for generated clients.
- Sync `def` endpoints on `SessionDep`, `CurrentUser`, `SuperUser`; fetch-or-404 helpers;
  `response_model` and `status_code` in the decorator; background tasks for email.
- Every status code an operation can answer in its OpenAPI schema (`errors`).
- `dependencies=[BCRYPT_SLOT]`: FastAPI's `max_concurrency` bounds the routes that run bcrypt.
- An application factory: `create_app(settings)` builds an app on those settings (tests
  pass their own); `app = create_app()` is what `uvicorn main:app` serves.
- `lifespan` for start-up work (migrations, first superuser, interrupted notifications),
  each step in a worker thread because it blocks.
- FastAPI's "extending OpenAPI" pattern: the schema's login URL follows the app's settings.

Imports: config, fieldtypes, models, database, auth, limits, emails, middleware, races.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordRequestForm
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

import auth
import config
import database
import emails
import limits
import middleware
import races
from auth import CurrentUser, SuperUser
from config import Settings, SettingsDep
from database import EngineDep, SessionDep
from fieldtypes import Limit, RowId, Skip
from limits import BCRYPT_SLOT
from models import (
    ErrorMessage,
    HealthStatus,
    Item,
    ItemCreate,
    ItemPublic,
    ItemsPublic,
    ItemUpdate,
    Message,
    Notification,
    NotificationCreate,
    NotificationPublic,
    NotificationsPublic,
    PasswordRecovery,
    PasswordReset,
    RefreshRequest,
    Token,
    UpdatePassword,
    User,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
    UserUpdateMe,
    new_security_stamp,
    utc_now,
)

Row = TypeVar("Row", User, Item, Notification)


def read_page(session: Session, model: type[Row], *conditions: Any, skip: int, limit: int) -> tuple[Sequence[Row], int]:
    """One page of `model` rows ordered by id, and the total count of matching rows."""
    count = session.exec(select(func.count()).select_from(model).where(*conditions)).one()
    rows = session.exec(select(model).where(*conditions).order_by(col(model.id)).offset(skip).limit(limit)).all()
    return rows, count


def get_user_or_404(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


def get_owned_item_or_404(session: Session, item_id: int, user: User) -> Item:
    """The item, if `user` owns it or is a superuser; 404 otherwise, so ids of other
    users' items are not revealed."""
    item = session.get(Item, item_id)
    if item is None or (item.owner_id != user.id and not user.is_superuser):
        raise HTTPException(status_code=404, detail="Item not found")
    return item


def update_user_fields(session: Session, user: User, changes: dict[str, Any]) -> None:
    """Apply `changes` to `user`; 400 for a taken email or username. A new email makes every
    reset token mailed before it useless, for good (SPEC 5)."""
    races.ensure_unique(session, email=changes.get("email"), username=changes.get("username"), user_id=user.id)
    if changes.get("email", user.email) != user.email:
        changes["recovery_stamp"] = new_security_stamp()
    user.sqlmodel_update(changes)
    user.updated_at = utc_now()


ERROR_DESCRIPTIONS = {
    400: "A body that is not UTF-8, a duplicate value, a wrong password or an invalid token",
    401: "Missing, invalid, expired or revoked token",
    403: "Inactive user, or not enough privileges",
    404: "Not found",
    413: "Request body over 64 KiB",
    429: "Too many requests: try again after `Retry-After` seconds",
    503: "Database unavailable",
}


def errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, all with the `{"detail": ...}` body.

    FastAPI documents only the success code and 422; generated clients and contract
    tests need every code an operation can answer.
    """
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorMessage, "description": ERROR_DESCRIPTIONS[code]} for code in status_codes
    }
    if 429 in responses:
        retry_after = {"description": "Seconds until a request may succeed", "schema": {"type": "integer"}}
        responses[429]["headers"] = {"Retry-After": retry_after}
    return responses


# --- Routers --------------------------------------------------------------------------
# A route behind CurrentUser can answer 401 and 403, one that reads a body 413 (over 64 KiB)
# and 400 (not UTF-8): declared on the route, or once on a router whose every route has them.
#
# Every route is a sync `def` but `read_user_me`: the async rule (`config.get_settings`).

auth_router = APIRouter(prefix="/auth", tags=["auth"])
users_router = APIRouter(prefix="/users", tags=["users"])
items_router = APIRouter(prefix="/items", tags=["items"], responses=errors(401, 403))
notifications_router = APIRouter(prefix="/notifications", tags=["notifications"], responses=errors(401, 403))
health_router = APIRouter(tags=["health"])


@auth_router.post("/login", response_model=Token, responses=errors(400, 401, 403, 413, 429), dependencies=[BCRYPT_SLOT])
def login(session: SessionDep, settings: SettingsDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """Log in with username or email and password; starts a session: an access and a refresh token."""
    named = auth.find_login_user(session, form.username)
    key = limits.login_key(form.username, named)
    limits.refuse_throttled_login(session, key, settings)  # before any bcrypt check
    user = auth.authenticate(session, named, password=form.password, rounds=settings.BCRYPT_ROUNDS)
    if user is None:
        limits.record_login_failure(session, key, settings)
        # Same status and body for an unknown user and a wrong password (SPEC 4).
        raise auth.credentials_error("Incorrect username or password")
    if not user.is_active:
        raise HTTPException(status_code=403, detail="Inactive user")
    limits.clear_login_failures(session, key)
    tokens = auth.start_session(session, user, settings)  # commits both
    if tokens is None:  # the password changed, or the account went, while it was checked
        raise auth.credentials_error("Incorrect username or password")
    return tokens


@auth_router.post("/refresh", response_model=Token, responses=errors(400, 401, 413))
def refresh_access_token(body: RefreshRequest, session: SessionDep, settings: SettingsDep) -> Token:
    """Trade a refresh token for a new access and refresh token; the one sent is used up."""
    tokens = auth.rotate_session(session, body.refresh_token, settings)
    if tokens is None:
        raise auth.credentials_error()
    return tokens


@auth_router.post("/logout", status_code=204, responses=errors(400, 401, 413))
def logout(body: RefreshRequest, session: SessionDep, settings: SettingsDep) -> None:
    """End this session: its refresh token and its access tokens stop working at once."""
    if not auth.end_session(session, body.refresh_token, settings):
        raise auth.credentials_error()


@auth_router.post("/logout-all", status_code=204, responses=errors(401, 403))
def logout_all(session: SessionDep, user: CurrentUser) -> None:
    """End every session of the caller, on every device."""
    auth.end_every_session(session, user.id)
    session.commit()


@auth_router.post("/password-recovery", response_model=Message, status_code=202, responses=errors(400, 413))
def recover_password(
    body: PasswordRecovery, engine: EngineDep, settings: SettingsDep, background_tasks: BackgroundTasks
) -> Message:
    """Email a password reset token, if an account has this email."""
    background_tasks.add_task(emails.send_password_reset_later, engine, settings, body.email)
    return Message(message="If an account has this email, a password reset token is on its way")


@auth_router.post("/reset-password", response_model=Message, responses=errors(400, 413), dependencies=[BCRYPT_SLOT])
def reset_password(body: PasswordReset, session: SessionDep, settings: SettingsDep) -> Message:
    """Set a new password with a reset token; the token works once."""
    user = auth.user_from_reset_token(session, body.token, settings)
    if (
        user is None
        or not user.is_active
        # A compare-and-set on the token's stamp: the token works once, even when raced.
        or not auth.set_password(
            session, user, body.new_password, settings.BCRYPT_ROUNDS, from_stamp=user.security_stamp
        )
    ):
        raise HTTPException(status_code=400, detail="Invalid or expired token")
    limits.clear_login_failures(session, limits.account_key(user))  # the owner is back in
    session.commit()
    return Message(message="Password updated")


@users_router.post(
    "/", response_model=UserPublic, status_code=201, responses=errors(400, 413), dependencies=[BCRYPT_SLOT]
)
def create_user(
    body: UserCreate, session: SessionDep, settings: SettingsDep, engine: EngineDep, background_tasks: BackgroundTasks
) -> User:
    """Sign up. Only email, username, password and full name are read from the body."""
    hashed_password = auth.hash_password(body.password, settings.BCRYPT_ROUNDS)
    races.ensure_unique(session, email=body.email, username=body.username)
    user = User.model_validate(body, update={"hashed_password": hashed_password})
    with races.user_change(session, user):
        session.add(user)
    welcome = emails.record_welcome(session, user, settings)
    session.commit()
    background_tasks.add_task(emails.send_later, engine, settings, welcome.id)
    return user


# `async`: it only returns what CurrentUser loaded.
@users_router.get("/me", response_model=UserPublic, responses=errors(401, 403))
async def read_user_me(user: CurrentUser) -> User:
    """The caller's own account."""
    return user


@users_router.patch(
    "/me", response_model=UserPublic, responses=errors(400, 401, 403, 413, 429), dependencies=[BCRYPT_SLOT]
)
def update_user_me(
    body: UserUpdateMe,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    user: CurrentUser,
    background_tasks: BackgroundTasks,
) -> User:
    """Change the caller's email, username or full name; a new email needs the password."""
    limits.refuse_throttled_login(session, limits.account_key(user), settings)  # like a login (SPEC 5)
    changes = body.model_dump(exclude_unset=True, exclude={"current_password"})
    notice = None
    if changes.get("email", user.email) != user.email:
        # A stolen token alone must not take the account over by its email (SPEC 5).
        limits.check_current_password(session, user, body.current_password or "", settings)
        try:  # the notice to the old address, committed with the change
            notice = emails.record_email_change_notice(session, user, user.email, settings)
        except limits.HourlyLimitError as limit:
            raise limits.too_many_requests("Too many notifications, try again later", limit.retry_after) from None
    with races.user_change(session, user):
        update_user_fields(session, user, changes)
    if notice is not None:
        background_tasks.add_task(emails.send_later, engine, settings, notice.id)
    return user


@users_router.patch(
    "/me/password", response_model=Message, responses=errors(400, 401, 403, 413, 429), dependencies=[BCRYPT_SLOT]
)
def update_password_me(body: UpdatePassword, session: SessionDep, settings: SettingsDep, user: CurrentUser) -> Message:
    """Change the caller's password; every token issued before stops working."""
    limits.refuse_throttled_login(session, limits.account_key(user), settings)  # like a login (SPEC 5)
    limits.check_current_password(session, user, body.current_password, settings)
    # A compare-and-set on the stamp of the caller's token: if another change, a reset or the
    # account's deletion came first, that token is revoked by now.
    if not auth.set_password(session, user, body.new_password, settings.BCRYPT_ROUNDS, from_stamp=user.security_stamp):
        raise auth.credentials_error()
    session.commit()
    return Message(message="Password updated")


@users_router.delete("/me", status_code=204, responses=errors(400, 401, 403))
def delete_user_me(session: SessionDep, user: CurrentUser) -> None:
    """Delete the caller's account, with their items and notifications."""
    with races.user_change(session, user):
        races.delete_row(session, user)


@users_router.get("/", response_model=UsersPublic, responses=errors(401, 403))
def read_users(session: SessionDep, _: SuperUser, skip: Skip = 0, limit: Limit = 100) -> UsersPublic:
    """Every user, by id (superusers only)."""
    users, count = read_page(session, User, skip=skip, limit=limit)
    return UsersPublic.model_validate({"data": users, "count": count})


@users_router.get("/{user_id}", response_model=UserPublic, responses=errors(401, 403, 404))
def read_user(user_id: RowId, session: SessionDep, user: CurrentUser) -> User:
    """One user: yourself, or anyone for a superuser."""
    if user.id == user_id:
        return user
    if not user.is_superuser:
        # 403 whether or not the id exists: a non-superuser learns nothing about others.
        raise HTTPException(status_code=403, detail="Not enough privileges")
    return get_user_or_404(session, user_id)


@users_router.patch(
    "/{user_id}", response_model=UserPublic, responses=errors(400, 401, 403, 404, 413), dependencies=[BCRYPT_SLOT]
)
def update_user(user_id: RowId, body: UserUpdate, session: SessionDep, settings: SettingsDep, _: SuperUser) -> User:
    """Change any user, including password, active and superuser flags (superusers only)."""
    changes = body.model_dump(exclude_unset=True)
    if "password" in changes:  # hashed before the user's row is read and locked: no lock waits on bcrypt
        changes["hashed_password"] = auth.hash_password(changes.pop("password"), settings.BCRYPT_ROUNDS)
    user = get_user_or_404(session, user_id)
    with races.user_change(session, user):
        if "hashed_password" in changes or (user.is_active and changes.get("is_active") is False):
            auth.revoke_every_token(session, user.id)  # a new password or a deactivation (SPEC 5)
        update_user_fields(session, user, changes)
    return user


@users_router.delete("/{user_id}", status_code=204, responses=errors(400, 401, 403, 404))
def delete_user(user_id: RowId, session: SessionDep, _: SuperUser) -> None:
    """Delete a user with their items and notifications (superusers only)."""
    user = get_user_or_404(session, user_id)
    with races.user_change(session, user):
        races.delete_row(session, user)


@items_router.post("/", response_model=ItemPublic, status_code=201, responses=errors(400, 413))
def create_item(body: ItemCreate, session: SessionDep, user: CurrentUser) -> Item:
    """Create an item owned by the caller."""
    item = Item.model_validate(body, update={"owner_id": user.id})
    session.add(item)
    session.commit()
    return item


@items_router.get("/", response_model=ItemsPublic)
def read_items(session: SessionDep, user: CurrentUser, skip: Skip = 0, limit: Limit = 100) -> ItemsPublic:
    """The caller's items by id (a superuser's: everyone's)."""
    conditions = [] if user.is_superuser else [Item.owner_id == user.id]
    items, count = read_page(session, Item, *conditions, skip=skip, limit=limit)
    return ItemsPublic.model_validate({"data": items, "count": count})


@items_router.get("/{item_id}", response_model=ItemPublic, responses=errors(404))
def read_item(item_id: RowId, session: SessionDep, user: CurrentUser) -> Item:
    """One item of the caller's."""
    return get_owned_item_or_404(session, item_id, user)


@items_router.patch("/{item_id}", response_model=ItemPublic, responses=errors(400, 404, 413))
def update_item(item_id: RowId, body: ItemUpdate, session: SessionDep, user: CurrentUser) -> Item:
    """Change an item's title or description."""
    item = get_owned_item_or_404(session, item_id, user)
    item.sqlmodel_update(body.model_dump(exclude_unset=True))
    item.updated_at = utc_now()
    session.add(item)
    session.commit()
    return item


@items_router.delete("/{item_id}", status_code=204, responses=errors(404))
def delete_item(item_id: RowId, session: SessionDep, user: CurrentUser) -> None:
    """Delete an item."""
    races.delete_row(session, get_owned_item_or_404(session, item_id, user))
    session.commit()


@notifications_router.post("/", response_model=NotificationPublic, status_code=202, responses=errors(400, 413, 429))
def create_notification(
    body: NotificationCreate,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    user: CurrentUser,
    background_tasks: BackgroundTasks,
) -> Notification:
    """Queue an email; its `status` tells later whether it went out."""
    try:
        notification = emails.record_notification(
            session, owner_id=user.id, **body.model_dump(), kind="message", hourly_limit=settings.NOTIFICATIONS_PER_HOUR
        )
    except limits.HourlyLimitError as limit:
        raise limits.too_many_requests("Too many notifications, try again later", limit.retry_after) from None
    session.commit()
    background_tasks.add_task(emails.send_later, engine, settings, notification.id)
    return notification


@notifications_router.get("/", response_model=NotificationsPublic)
def read_notifications(
    session: SessionDep, user: CurrentUser, skip: Skip = 0, limit: Limit = 100
) -> NotificationsPublic:
    """The caller's notifications by id."""
    notifications, count = read_page(session, Notification, Notification.owner_id == user.id, skip=skip, limit=limit)
    return NotificationsPublic.model_validate({"data": notifications, "count": count})


@notifications_router.get("/{notification_id}", response_model=NotificationPublic, responses=errors(404))
def read_notification(notification_id: RowId, session: SessionDep, user: CurrentUser) -> Notification:
    """One of the caller's notifications, with its current status."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.owner_id != user.id:
        raise HTTPException(status_code=404, detail="Notification not found")
    return notification


@health_router.get("/health", response_model=HealthStatus, responses=errors(503))
def read_health(session: SessionDep) -> HealthStatus:
    """200 when the database answers, 503 when it does not."""
    try:
        session.exec(select(1)).one()
    except SQLAlchemyError:
        raise HTTPException(status_code=503, detail="Database unavailable") from None
    return HealthStatus(status="ok", database="ok")


# --- The application -------------------------------------------------------------------


def operation_id(route: APIRoute) -> str:
    """`users-create_user`: readable, unique method names for generated clients."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def document_login_url(app: FastAPI, api_prefix: str) -> None:
    """Point Swagger UI's Authorize button at this app's own login route.

    `CurrentUser`'s OAuth2 scheme is built once, at import, with the environment's
    API_V1_STR; an app built on other settings (`create_app(settings)`) would send the
    button to a route it does not serve. Wrapped `app.openapi`, whose result FastAPI caches.
    """
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build_schema()
        flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        flows["password"]["tokenUrl"] = f"{api_prefix}/auth/login"
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings = config.settings) -> FastAPI:
    """Build the application on `settings`: logging, database, middleware, routes."""
    middleware.configure_logging(settings.LOG_LEVEL)
    config.log_start_up_warnings(settings)  # now that they get the app's log format (SPEC 7)
    engine = database.create_db_engine(settings.DATABASE_URL)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking work (SQL, bcrypt) goes to a worker thread, never on the event loop.
        started_at = utc_now()
        await to_thread.run_sync(database.migrate_database, engine)
        await to_thread.run_sync(auth.create_first_superuser, engine, settings)
        await to_thread.run_sync(emails.fail_interrupted_notifications, engine, started_at)
        yield
        await to_thread.run_sync(engine.dispose)

    # FastAPIOffline: FastAPI whose /docs and /redoc load their JavaScript and CSS from the
    # app itself (fastapi-offline's static files), not a CDN: the docs work on workshop Wi-Fi.
    app = FastAPIOffline(
        title=settings.PROJECT_NAME,
        version=settings.VERSION,
        openapi_url=f"{settings.API_V1_STR}/openapi.json",
        generate_unique_id_function=operation_id,
        # No badge that would send the schema's URL to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
        exception_handlers=middleware.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine

    # The last added runs first: request log (and 500s) -> CORS -> body size limit -> routes.
    app.add_middleware(middleware.BodySizeLimitMiddleware, max_bytes=middleware.MAX_BODY_BYTES)
    if settings.BACKEND_CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.BACKEND_CORS_ORIGINS),
            # Browsers reject "*" with credentials, and it would be unsafe anyway.
            allow_credentials="*" not in settings.BACKEND_CORS_ORIGINS,
            allow_methods=["*"],
            allow_headers=["*"],
            # What a browser client reads: the request id, and when to retry after a 429.
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(middleware.RequestLogMiddleware)

    for router in (auth_router, users_router, items_router, notifications_router):
        app.include_router(router, prefix=settings.API_V1_STR)
    app.include_router(health_router)
    document_login_url(app, settings.API_V1_STR)
    return app


app = create_app()
