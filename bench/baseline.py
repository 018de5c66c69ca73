"""The naive baseline that bench/run.py measures the project against.

The same work as the project's benchmarked endpoints, written the way a first FastAPI
app usually is: sync `def` endpoints, a yield `get_session` dependency, a sync
`get_current_user` dependency that decodes the JWT and calls `session.get`, a
`response_model` on every route, no middleware, uvicorn's own access log.

It shares with the project what makes the comparison fair: the tables (`models.py`),
the SQLite pragmas (WAL, synchronous=FULL, foreign keys, busy timeout), `SECRET_KEY`,
HS256, and the seeded bcrypt hashes (12 rounds). Nothing else of the project is imported.

Run by bench/run.py as `uvicorn baseline:app` from the repository root (for models.py)
with bench/ on PYTHONPATH, and `DATABASE_URL` and `SECRET_KEY` in the environment.
"""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import bcrypt
import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from sqlalchemy import event
from sqlmodel import Session, SQLModel, create_engine, func, select

from models import Item, ItemCreate, ItemPublic, ItemsPublic, User, UserPublic

DATABASE_URL = os.environ["DATABASE_URL"]
SECRET_KEY = os.environ["SECRET_KEY"]
ALGORITHM = "HS256"

if DATABASE_URL.startswith("sqlite"):
    engine = create_engine(DATABASE_URL, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def set_sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

else:
    engine = create_engine(DATABASE_URL)

SQLModel.metadata.create_all(engine)


class Token(SQLModel):
    """A tutorial app's login answer: an access token, no session."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


app = FastAPI()
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login")


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def get_current_user(
    token: Annotated[str, Depends(oauth2_scheme)], session: Annotated[Session, Depends(get_session)]
) -> User:
    try:
        claims = jwt.decode(token, SECRET_KEY, algorithms=[ALGORITHM])
    except jwt.InvalidTokenError:
        raise HTTPException(status_code=401, detail="Could not validate credentials") from None
    user = session.get(User, int(claims["sub"]))
    if user is None or not user.is_active:
        raise HTTPException(status_code=401, detail="Could not validate credentials")
    return user


@app.get("/health")
def health(session: Annotated[Session, Depends(get_session)]) -> dict[str, str]:
    session.exec(select(1)).one()
    return {"status": "ok"}


@app.post("/api/v1/auth/login", response_model=Token)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: Annotated[Session, Depends(get_session)]
) -> Token:
    user = session.exec(select(User).where(User.username == form.username)).first()
    if user is None or not bcrypt.checkpw(form.password.encode(), user.hashed_password.encode()):
        raise HTTPException(status_code=401, detail="Incorrect username or password")
    now = datetime.now(UTC)
    claims = {"sub": str(user.id), "iat": now, "exp": now + timedelta(minutes=30)}
    return Token(access_token=jwt.encode(claims, SECRET_KEY, algorithm=ALGORITHM), expires_in=1800)


@app.get("/api/v1/users/me", response_model=UserPublic)
def read_user_me(user: Annotated[User, Depends(get_current_user)]) -> User:
    return user


@app.post("/api/v1/items/", response_model=ItemPublic, status_code=201)
def create_item(
    body: ItemCreate,
    user: Annotated[User, Depends(get_current_user)],
    session: Annotated[Session, Depends(get_session)],
) -> Item:
    item = Item.model_validate(body, update={"owner_id": user.id})
    session.add(item)
    session.commit()
    session.refresh(item)
    return item


@app.get("/api/v1/items/", response_model=ItemsPublic)
def read_items(
    user: Annotated[User, Depends(get_current_user)],
    session: Annotated[Session, Depends(get_session)],
    skip: int = 0,
    limit: int = 100,
) -> dict[str, Any]:
    conditions = [Item.owner_id == user.id]
    count = session.exec(select(func.count()).select_from(Item).where(*conditions)).one()
    items = session.exec(select(Item).where(*conditions).order_by(Item.id).offset(skip).limit(limit)).all()
    return {"data": items, "count": count}
