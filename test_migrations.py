"""Tests of the Alembic migrations: they build exactly models.py, on SQLite and PostgreSQL.

Each test gets the empty database of conftest.py's `database_url` fixture.
"""

import warnings
from collections.abc import Iterator
from functools import partial

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from auth import hash_password
from config import Settings
from conftest import login, run_at_once
from database import ALEMBIC_INI, create_db_engine, migrate_database
from main import create_app
from models import Item, User


@pytest.fixture(name="engine")
def engine_fixture(settings: Settings) -> Iterator[Engine]:
    """The production engine on this test's empty database."""
    engine = create_db_engine(settings.DATABASE_URL)
    yield engine
    engine.dispose()


def alembic_command(engine: Engine, name: str, revision: str) -> None:
    """Run `alembic <name> <revision>` on `engine`, as the CLI would."""
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, name)(config, revision)


def schema_differences(engine: Engine) -> list[object]:
    """What `alembic revision --autogenerate` would write: empty when in step."""
    with engine.connect() as connection, warnings.catch_warnings():
        # SQLite cannot reflect the lower(username) index; SQLAlchemy and Alembic warn and skip it.
        warnings.filterwarnings("ignore", message="autogenerate skipping")
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_upgrade_to_head_matches_the_models(engine: Engine) -> None:
    """An empty database upgraded to head has no difference from models.py."""
    migrate_database(engine)
    assert schema_differences(engine) == []
    assert {"user", "item", "notification", "alembic_version"} <= set(inspect(engine).get_table_names())


def test_every_revision_downgrades_and_upgrades_again(engine: Engine) -> None:
    """Walking each revision down and up again leaves the schema as the models say."""
    migrate_database(engine)
    for script in ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).walk_revisions():
        down_revision = script.down_revision
        assert down_revision is None or isinstance(down_revision, str), "no merge revisions yet"
        alembic_command(engine, "downgrade", down_revision or "base")
        alembic_command(engine, "upgrade", script.revision)
    assert schema_differences(engine) == []


def test_downgrade_to_base_removes_every_table(engine: Engine) -> None:
    """`alembic downgrade base` leaves only Alembic's own version table."""
    migrate_database(engine)
    alembic_command(engine, "downgrade", "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_migrated_database_refuses_usernames_differing_only_in_case(engine: Engine) -> None:
    """The lower(username) unique index, which autogenerate cannot write, is created."""
    migrate_database(engine)
    with Session(engine) as session:
        session.add(User(email="a@example.com", username="Ada", hashed_password="x"))
        session.commit()
        session.add(User(email="b@example.com", username="ADA", hashed_password="x"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_database_from_create_all_is_adopted_with_its_data(settings: Settings, engine: Engine) -> None:
    """A database made by the pre-migration `create_all` keeps its rows at start-up."""
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        user = User(email="old@example.com", username="old", hashed_password=hash_password("old password", 4))
        session.add(user)
        session.commit()
        session.add(Item(title="kept", owner_id=user.id))
        session.commit()
    with TestClient(create_app(settings)) as client:
        items = client.get("/api/v1/items/", headers=login(client, "old", "old password")).json()
    assert [item["title"] for item in items["data"]] == ["kept"]
    with engine.connect() as connection:
        assert (
            MigrationContext.configure(connection).get_current_revision()
            == ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
        )


def test_workers_migrating_at_once_neither_crash_nor_repeat(settings: Settings) -> None:
    """Four engines (as four workers would) migrate one fresh database concurrently."""
    engines = [create_db_engine(settings.DATABASE_URL) for _ in range(4)]
    run_at_once([partial(migrate_database, engine) for engine in engines])
    assert schema_differences(engines[0]) == []
    for engine in engines:
        engine.dispose()
