"""Passwords behind the API: what bcrypt is asked to do, and what is stored (SPEC 5).

Patterns shown:
- `bcrypt_checks` (conftest.py) records the cost of every bcrypt check a request spends,
  where bcrypt is called: timing promises become exact assertions, not stopwatch readings.
- A look at the stored hash through a session of the test's own, and a patched
  `bcrypt.hashpw` that lands a change in the middle of a login.

Imports: auth, models, database, main, conftest.
"""

import bcrypt
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select, update

import auth
from conftest import DEFAULT_PASSWORD, MakeSettings, engine_of, login, signup
from database import create_db_engine
from main import create_app
from models import User

API = "/api/v1"


def test_login_unknown_user_still_spends_a_bcrypt_check(client: TestClient, bcrypt_checks: list[bytes]) -> None:
    """An unknown user costs one bcrypt check at BCRYPT_ROUNDS, as a known one does:
    timing does not reveal accounts."""
    response = client.post(f"{API}/auth/login", data={"username": "nobody", "password": "wrong password"})
    assert response.status_code == 401, response.text
    assert bcrypt_checks == [b"$2b$04$"]


def test_login_rehashes_a_password_stored_at_another_cost(make_settings: MakeSettings) -> None:
    """Raising BCRYPT_ROUNDS takes effect at each user's next login, no migration needed."""
    with TestClient(create_app(make_settings(BCRYPT_ROUNDS="4"))) as client:
        signup(client, "ada")
    settings = make_settings(BCRYPT_ROUNDS="5")
    with TestClient(create_app(settings)) as client:
        headers = login(client, "ada")
        assert client.get(f"{API}/users/me", headers=headers).status_code == 200
    with Session(create_db_engine(settings.DATABASE_URL)) as session:
        user = session.exec(select(User).where(User.username == "ada")).one()
        assert user.hashed_password.startswith("$2b$05$")


def test_passwords_are_hashed_at_bcrypt_rounds_and_kept_when_the_cost_matches(client: TestClient) -> None:
    """Sign-up hashes at BCRYPT_ROUNDS (4 in tests); a login at that cost re-hashes nothing."""
    signup(client, "ada")
    engine = engine_of(client)

    def stored_hash() -> str:
        with Session(engine) as session:
            hashed: str = session.exec(select(User).where(User.username == "ada")).one().hashed_password
            return hashed

    signed_up = stored_hash()
    assert signed_up.startswith("$2b$04$")
    login(client, "ada")
    assert stored_hash() == signed_up


def test_login_with_a_hash_of_lower_cost_spends_a_check_at_bcrypt_rounds(
    make_settings: MakeSettings, bcrypt_checks: list[bytes]
) -> None:
    """A wrong password for an account still hashed at a lower cost costs as much as any
    other login: a check at BCRYPT_ROUNDS follows the cheap one."""
    with TestClient(create_app(make_settings(BCRYPT_ROUNDS="4"))) as client:
        signup(client, "ada")
    with TestClient(create_app(make_settings(BCRYPT_ROUNDS="5"))) as client:
        response = client.post(f"{API}/auth/login", data={"username": "ada", "password": "wrong password"})
    assert response.status_code == 401, response.text
    assert bcrypt_checks == [b"$2b$04$", b"$2b$05$"]


def test_login_rehash_never_overwrites_a_password_changed_meanwhile(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-hash after a cost change replaces only the hash it verified: a password
    reset landing between the check and the re-hash is kept (compare-and-set)."""
    with TestClient(create_app(make_settings(BCRYPT_ROUNDS="4"))) as client:
        signup(client, "ada")
    settings = make_settings(BCRYPT_ROUNDS="5")
    changed_hash = auth.hash_password("changed meanwhile", 4)
    hashpw = bcrypt.hashpw

    def password_changed_during_rehash(password: bytes, salt: bytes) -> bytes:
        with Session(create_db_engine(settings.DATABASE_URL)) as other:
            other.exec(update(User).where(User.username == "ada").values(hashed_password=changed_hash))  # type: ignore[arg-type]
            other.commit()
        return hashpw(password, salt)

    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(bcrypt, "hashpw", password_changed_during_rehash)
        login(client, "ada")
        monkeypatch.setattr(bcrypt, "hashpw", hashpw)
        login(client, "ada", "changed meanwhile")
        response = client.post(f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
        assert response.status_code == 401, response.text


def test_update_user_profile_and_password_is_one_transaction(
    client: TestClient, superuser_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while setting the password leaves the profile change undone too."""
    user = signup(client, "ada")

    def failing_hash(password: str, rounds: int) -> str:
        raise RuntimeError("hashing failed")

    monkeypatch.setattr(auth, "hash_password", failing_hash)
    with TestClient(client.app, raise_server_exceptions=False) as failing:
        response = failing.patch(
            f"{API}/users/{user['id']}", headers=superuser_headers, json={"username": "ada2", "password": "new pass 1"}
        )
    assert response.status_code == 500, response.text
    assert client.get(f"{API}/users/{user['id']}", headers=superuser_headers).json()["username"] == "ada"
