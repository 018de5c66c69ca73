"""Tests of the Alembic migrations: they build exactly models.py, on SQLite and PostgreSQL.

Each test gets the empty database of conftest.py's `database_url` fixture.
"""

import subprocess
import sys
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, PrimaryKeyConstraint, Table, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, func, select

from auth import hash_password
from config import Settings
from conftest import login, run_at_once, settings_environ
from database import ALEMBIC_INI, create_db_engine, migrate_database, migration_transaction
from live_server import child_environ, copy_app
from main import create_app
from models import Item, Notification, User

NOW = "2026-01-01 00:00:00"  # as text: sqlite3 deprecates adapting datetimes (Python 3.12+)


def insert_0001_user(connection: Connection, user_id: int, hashed_password: str) -> None:
    """A user row as revision 0001 stored it (with `token_version`); the database picks the
    id, so on a fresh database the users are 1, 2, ... in order."""
    connection.execute(
        text(
            'INSERT INTO "user" (email, username, hashed_password, is_active, is_superuser,'
            " token_version, created_at, updated_at)"
            " VALUES (:email, :username, :hashed_password, true, false, 0, :now, :now)"
        ),
        {
            "email": f"user{user_id}@example.com",
            "username": f"user{user_id}",
            "hashed_password": hashed_password,
            "now": NOW,
        },
    )


@pytest.fixture(name="engine")
def engine_fixture(settings: Settings) -> Iterator[Engine]:
    """The production engine on this test's empty database."""
    engine = create_db_engine(settings.DATABASE_URL)
    yield engine
    engine.dispose()


def alembic_command(engine: Engine, name: str, revision: str) -> None:
    """Run `alembic <name> <revision>` on `engine`, as the CLI would (alembic/env.py)."""
    config = Config(str(ALEMBIC_INI))
    with engine.connect() as connection, migration_transaction(connection):
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
    alembic_command(engine, "upgrade", "head")
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
    """A database made by the pre-migration `create_all` (the schema of revision 0001,
    without Alembic's version table) keeps its rows at start-up."""
    alembic_command(engine, "upgrade", "0001")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        insert_0001_user(connection, 1, hashed_password=hash_password("old password", 4))
        connection.execute(
            text("INSERT INTO item (title, owner_id, created_at, updated_at) VALUES ('kept', 1, :now, :now)"),
            {"now": NOW},
        )
    with TestClient(create_app(settings)) as client:
        items = client.get("/api/v1/items/", headers=login(client, "user1", "old password")).json()
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


def test_upgrade_to_never_reused_ids_keeps_every_row_and_gives_each_user_a_stamp(engine: Engine) -> None:
    """0001 -> 0002 rebuilds the SQLite tables with AUTOINCREMENT: users, items and
    notifications are all kept (no cascade fires), each user gets a stamp of its own, and a
    deleted row's id is not handed out again."""
    alembic_command(engine, "upgrade", "0001")
    with engine.begin() as connection:
        for user_id in (1, 2):
            insert_0001_user(connection, user_id, hashed_password="x")
            connection.execute(
                text("INSERT INTO item (title, owner_id, created_at, updated_at) VALUES ('t', :id, :now, :now)"),
                {"id": user_id, "now": NOW},
            )
            connection.execute(
                text(
                    "INSERT INTO notification (owner_id, email, subject, message, status, created_at)"
                    " VALUES (:id, 'a@example.com', 's', 'm', 'sent', :now)"
                ),
                {"id": user_id, "now": NOW},
            )

    migrate_database(engine)

    with Session(engine) as session:
        users = session.exec(select(User).order_by(col(User.id))).all()
        assert [user.id for user in users] == [1, 2]
        assert len({user.security_stamp for user in users}) == 2
        assert session.exec(select(func.count()).select_from(Item)).one() == 2
        assert session.exec(select(func.count()).select_from(Notification)).one() == 2
        session.delete(users[1])
        session.commit()
        newcomer = User(email="new@example.com", username="newcomer", hashed_password="x")
        session.add(newcomer)
        session.commit()
        assert newcomer.id == 3


def test_every_revision_keeps_sqlite_ids_never_reused(engine: Engine) -> None:
    """On SQLite, the user, item and notification tables keep AUTOINCREMENT at every
    revision from 0002 on, whichever way it was reached (a batch copy loses it unless told)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("AUTOINCREMENT is SQLite's; PostgreSQL's sequences never reuse ids")
    migrate_database(engine)
    revisions = [script.revision for script in ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).walk_revisions()]
    for revision in revisions[: revisions.index("0002") + 1]:
        alembic_command(engine, "downgrade", revision)
        with engine.connect() as connection:
            tables: dict[str, str] = dict(
                connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all()
            )
        assert all("AUTOINCREMENT" in tables[name] for name in ("user", "item", "notification")), revision


def sqlite_tables(engine: Engine) -> dict[str, str]:
    """Each SQLite table's name and its CREATE TABLE statement."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all()
    return {name: sql for name, sql in rows if not name.startswith(("sqlite_", "alembic_"))}


def test_a_batch_rebuild_that_forgets_autoincrement_keeps_it(engine: Engine) -> None:
    """By construction (fieldtypes._never_reuse_ids): a revision that rebuilds a table in batch
    mode, written the way autogenerate writes it (no sqlite_autoincrement), keeps AUTOINCREMENT
    on that table, and every table of a new database has it."""
    if engine.dialect.name != "sqlite":
        pytest.skip("AUTOINCREMENT is SQLite's; PostgreSQL's sequences never reuse ids")
    migrate_database(engine)
    assert all("AUTOINCREMENT" in sql for sql in sqlite_tables(engine).values()), sqlite_tables(engine)
    with engine.connect() as connection, migration_transaction(connection), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")  # lower(username)
        operations = Operations(MigrationContext.configure(connection))
        with operations.batch_alter_table("item", recreate="always") as batch:
            batch.add_column(Column("added_in_a_batch", Integer(), nullable=False, server_default="0"))
    assert "AUTOINCREMENT" in sqlite_tables(engine)["item"]


def insert_at_this_revision(connection: Connection, row: SQLModel) -> Any:
    """Insert `row` with the columns its table has at the database's revision (models.py may
    have more, once the app grows); the new row's id."""
    table = Table(str(type(row).__tablename__), MetaData(), autoload_with=connection)
    values = {name: value for name, value in row.model_dump().items() if name in table.c and value is not None}
    return connection.execute(table.insert().values(values)).inserted_primary_key[0]  # type: ignore[index]


def constraint_names(engine: Engine) -> dict[str, set[str | None]]:
    """Each table's primary key, foreign key and unique constraint names, as the database has
    them (SQLite keeps no name for an AUTOINCREMENT primary key: left out there)."""
    names: dict[str, set[str | None]] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")  # lower(username)
        inspector = inspect(engine)
        for table in set(SQLModel.metadata.tables) & set(inspector.get_table_names()):
            primary_key = {inspector.get_pk_constraint(table)["name"]} - (
                {None} if engine.dialect.name == "sqlite" else set()
            )
            keys = {key["name"] for key in inspector.get_foreign_keys(table)}
            names[table] = primary_key | keys | {unique["name"] for unique in inspector.get_unique_constraints(table)}
    return names


def test_database_made_before_the_naming_convention_gets_its_names_with_rows_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database created before models.py had a naming convention (PostgreSQL's own names,
    none on SQLite) gets the names models.py gives (revision 0006), rows and AUTOINCREMENT kept."""
    named_by_the_models = {
        table.name: {
            constraint.name
            for constraint in table.constraints
            if not (engine.dialect.name == "sqlite" and isinstance(constraint, PrimaryKeyConstraint))
        }
        for table in SQLModel.metadata.sorted_tables
    }
    with monkeypatch.context() as before_the_convention:
        before_the_convention.setattr(SQLModel.metadata, "naming_convention", {"ix": "ix_%(column_0_label)s"})
        alembic_command(engine, "upgrade", "0005")
    assert constraint_names(engine) != named_by_the_models
    with engine.begin() as connection:
        user_id = insert_at_this_revision(
            connection, User(email="ada@example.com", username="ada", hashed_password="x")
        )
        insert_at_this_revision(connection, Item(title="kept", owner_id=user_id))
        insert_at_this_revision(
            connection, Notification(owner_id=user_id, email="a@example.com", subject="s", message="m")
        )

    alembic_command(engine, "upgrade", "head")

    assert constraint_names(engine) == named_by_the_models
    with Session(engine) as session:
        assert session.exec(select(Item.title)).all() == ["kept"]
        assert session.exec(select(func.count()).select_from(Notification)).one() == 1
    if engine.dialect.name == "sqlite":
        assert all("AUTOINCREMENT" in sql for sql in sqlite_tables(engine).values()), sqlite_tables(engine)
    assert schema_differences(engine) == []
    with Session(engine) as session:  # the lower(username) index, which SQLite cannot reflect, is there
        session.add(User(email="ada2@example.com", username="ADA", hashed_password="x"))
        with pytest.raises(IntegrityError):
            session.commit()


# The README's recipe "Add a table with a foreign key", as a team would write it.
PROJECT_MODEL = """

class Project(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True, sa_type=BigId)
    name: str = Field(max_length=100)
    owner_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=BigId)
"""
ITEM_PROJECT_FIELD = (
    '    project_id: int | None = Field(default=None, foreign_key="project.id", ondelete="SET NULL", index=True,'
    " sa_type=BigId)\n"
)


def test_readme_recipe_adds_a_table_with_a_foreign_key_and_keeps_every_row(tmp_path: Path, database_url: str) -> None:
    """On a copy of the app: a new table, and a foreign-key column on `item`; the README's
    `alembic revision --autogenerate` writes the next revision, which upgrades and downgrades with
    every row kept (and AUTOINCREMENT on every SQLite table)."""
    app_dir = copy_app(tmp_path / "app")
    environ = child_environ(**settings_environ(database_url))

    def alembic(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=app_dir,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    alembic("upgrade", "head")
    engine = create_db_engine(database_url)
    with Session(engine) as session:
        session.add(User(email="ada@example.com", username="ada", hashed_password="x"))
        session.commit()
        session.add(Item(title="kept", owner_id=1))
        session.commit()
    models = app_dir / "models.py"
    source = models.read_text()
    if "class Project(" in source:
        pytest.skip("this app followed the recipe already: models.py has its Project")
    owner = '    owner_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=BigId)\n'
    item_start = source.index("class Item(ItemBase, table=True):")
    at = source.index(owner, item_start) + len(owner)
    models.write_text(source[:at] + ITEM_PROJECT_FIELD + source[at:] + PROJECT_MODEL)

    head = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
    alembic("revision", "--autogenerate", "-m", "projects")
    numbered_next = f"{int(head or 0) + 1:04d}_projects.py"
    assert (app_dir / "alembic" / "versions" / numbered_next).exists(), numbered_next
    for step in ("head", "-1", "head"):
        alembic("downgrade" if step == "-1" else "upgrade", step)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT title FROM item")).scalars().all() == ["kept"], step
    columns = {column["name"] for column in inspect(engine).get_columns("item")}
    assert "project_id" in columns and "project" in inspect(engine).get_table_names()
    if engine.dialect.name == "sqlite":
        assert all("AUTOINCREMENT" in sql for sql in sqlite_tables(engine).values()), sqlite_tables(engine)
    engine.dispose()
