"""Concurrency, crash safety and start-up with several workers, against a live server;
and, in process, bcrypt bounded so that logins never starve other requests.

Patterns shown:
- A real `uvicorn main:app` subprocess per test: a copy of the app in a temp dir, a free
  loopback port, stopped by the fixture's finalizer whatever the test did. It runs on
  conftest's `database_url` (a fresh SQLite file, or the emptied PostgreSQL database that
  `TEST_DATABASE_URL` names), so CI's second pass checks PostgreSQL the same way.
- An async client with one connection per concurrent task (`httpx2.AsyncClient`).
- Everything bounded: request timeouts, polling with a deadline, capped loops. No test
  asserts a duration: a stall shows up as client timeouts or 500s (the pool's timeout).

Imports: limits, conftest, live_server.
"""

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import httpx2
import pytest
from fastapi.testclient import TestClient

from conftest import DEFAULT_PASSWORD, SUPERUSER_EMAIL, SUPERUSER_PASSWORD, login, settings_environ, signup
from limits import BCRYPT_CONCURRENCY
from live_server import STOP_SECONDS, Server, copy_app, running_server

API = "/api/v1"
# Generous: under load on two cores a request may queue; only a stall takes this long.
REQUEST_SECONDS = 20
LOAD_SECONDS = 60

StartServer = Callable[..., Server]


@pytest.fixture(name="start_server")
def start_server_fixture(tmp_path: Path, database_url: str) -> Iterator[StartServer]:
    """Start `uvicorn main:app` on this test's database; every server stops after the test."""
    app_dir = copy_app(tmp_path / "app")
    # No line per request: the load tests would spend their time logging.
    settings = settings_environ(database_url, LOG_LEVEL="WARNING")
    with contextlib.ExitStack() as servers:

        def start(workers: int = 1) -> Server:
            server = running_server(app_dir, "--workers", str(workers), started=workers, **settings)
            return servers.enter_context(server)

        yield start


def sign_up_users(url: str, count: int) -> list[dict[str, str]]:
    """Sign up `user0`, `user1`... on a live server; return their `Authorization` headers."""
    headers = []
    with httpx2.Client(base_url=url, timeout=REQUEST_SECONDS) as http:
        for n in range(count):
            signup(http, f"user{n}")
            headers.append(login(http, f"user{n}"))
    return headers


def read_all_items(url: str) -> list[dict[str, Any]]:
    """Every item in the database, page by page, as the superuser sees them."""
    items: list[dict[str, Any]] = []
    with httpx2.Client(base_url=url, timeout=REQUEST_SECONDS) as http:
        headers = login(http, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
        for _ in range(1000):
            response = http.get(f"{API}/items/", params={"skip": len(items), "limit": 100}, headers=headers)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["data"]
            if not page["data"]:
                break
    assert len(items) == page["count"]
    return items


def run_tasks(url: str, tasks: int, task: Callable[[httpx2.AsyncClient, int], Awaitable[None]]) -> None:
    """Run `task(client, n)` for n in range(tasks) at once, each with its own connection."""

    async def main() -> None:
        limits = httpx2.Limits(max_connections=tasks, max_keepalive_connections=tasks)
        async with httpx2.AsyncClient(base_url=f"{url}{API}", timeout=REQUEST_SECONDS, limits=limits) as client:
            try:
                await asyncio.wait_for(asyncio.gather(*(task(client, n) for n in range(tasks))), LOAD_SECONDS)
            except TimeoutError:
                pytest.fail(f"{tasks} concurrent tasks still running after {LOAD_SECONDS} s: the server stalled")

    # The client logs every request at INFO: under load that would cost more than the requests.
    client_logger = logging.getLogger("httpx2")
    level = client_logger.level
    client_logger.setLevel(logging.WARNING)
    try:
        asyncio.run(main())
    finally:
        client_logger.setLevel(level)


def assert_no_server_error(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log and "database is locked" not in log, log


def test_32_concurrent_writers_store_every_item_exactly_once(start_server: StartServer) -> None:
    """32 connections writing at once: every write gets 201 and is stored once."""
    server = start_server()
    users = sign_up_users(server.url, 4)
    writers, writes = 32, 8
    acknowledged: dict[str, int] = {}
    failures: list[str] = []

    async def write(client: httpx2.AsyncClient, writer: int) -> None:
        for n in range(writes):
            title = f"writer {writer} item {n}"
            response = await client.post("/items/", json={"title": title}, headers=users[writer % len(users)])
            if response.status_code == 201:
                acknowledged[title] = response.json()["id"]
            else:
                failures.append(f"{response.status_code} {response.text}")

    run_tasks(server.url, writers, write)

    assert failures == []
    items = read_all_items(server.url)
    assert len(items) == writers * writes
    assert {item["title"]: item["id"] for item in items} == acknowledged
    assert_no_server_error(server)


def test_concurrent_duplicate_signups_get_one_201_and_400s(start_server: StartServer) -> None:
    """32 sign-ups at once, 4 for each of 8 accounts: one 201 each, the rest a 400, no 500
    from the unique index."""
    server = start_server()
    outcomes: Counter[tuple[int, str]] = Counter()

    async def sign_up(client: httpx2.AsyncClient, n: int) -> None:
        name = f"racer{n % 8}"
        body = {"email": f"{name}@example.com", "username": name, "password": DEFAULT_PASSWORD}
        response = await client.post("/users/", json=body)
        outcomes[response.status_code, response.json().get("detail", "")] += 1

    run_tasks(server.url, 32, sign_up)

    # Both are taken: which one a loser hears depends on when the winner committed.
    duplicate = {"Email already registered", "Username already taken"}
    assert sorted(status for status, _ in outcomes.elements()) == [201] * 8 + [400] * 24, outcomes
    assert {detail for status, detail in outcomes if status == 400} <= duplicate, outcomes
    assert_no_server_error(server)


def test_128_concurrent_connections_mixing_reads_and_writes_all_complete(start_server: StartServer) -> None:
    """128 connections at once, far more than threads (40) and pool connections (15):
    every request completes, none waits out the pool timeout, none gets a 5xx."""
    server = start_server()
    users = sign_up_users(server.url, 8)
    connections, rounds = 128, 1  # every connection at once is the point; a second round adds only time
    statuses: Counter[str] = Counter()
    latencies: list[float] = []

    async def request(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx2.Response | None:
        """The response, or None after an error or an error status (both counted)."""
        kind = f"{method} {path.split('/')[1]}"
        started = time.monotonic()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx2.HTTPError as error:
            statuses[f"{kind} {type(error).__name__}"] += 1
            return None
        latencies.append(time.monotonic() - started)
        statuses[f"{kind} {response.status_code}"] += 1
        return response if response.status_code < 400 else None

    async def mix(client: httpx2.AsyncClient, n: int) -> None:
        headers = users[n % len(users)]
        for round_ in range(rounds):
            created = await request(client, "POST", "/items/", json={"title": f"{n}.{round_}"}, headers=headers)
            if created is None:
                return  # a stalled server: stop, the statuses tell what happened
            item = f"/items/{created.json()['id']}"
            for method, path, body in [
                ("GET", "/items/", None),
                ("GET", item, None),
                ("PATCH", item, {"description": "changed"}),
                ("GET", "/users/me", None),
            ]:
                if await request(client, method, path, json=body, headers=headers) is None:
                    return

    run_tasks(server.url, connections, mix)

    per_kind = connections * rounds
    assert statuses == {
        "POST items 201": per_kind,
        "GET items 200": 2 * per_kind,
        "PATCH items 200": per_kind,
        "GET users 200": per_kind,
    }
    print(f"{sum(statuses.values())} requests on {connections} connections, slowest {max(latencies):.2f}s")
    assert_no_server_error(server)


def test_server_killed_under_write_load_loses_no_acknowledged_item(start_server: StartServer) -> None:
    """SIGKILL in the middle of concurrent writes, restart on the same database: every
    item acknowledged with 201 is there exactly once."""
    server = start_server()
    users = sign_up_users(server.url, 2)
    writers, kill_after = 16, 150
    acknowledged: dict[str, int] = {}
    failures: list[str] = []

    async def write(client: httpx2.AsyncClient, writer: int) -> None:
        for n in range(1000):
            title = f"writer {writer} item {n}"
            try:
                response = await client.post("/items/", json={"title": title}, headers=users[writer % 2])
            except httpx2.TransportError:
                return  # the server is gone: this write was never acknowledged
            if response.status_code != 201:
                failures.append(f"{response.status_code} {response.text}")
                return
            acknowledged[title] = response.json()["id"]
            if len(acknowledged) == kill_after:
                # Not a clean shutdown: the other 15 writers have requests in flight.
                server.process.send_signal(signal.SIGKILL)

    run_tasks(server.url, writers, write)
    assert server.process.wait(timeout=STOP_SECONDS) == -signal.SIGKILL

    restarted = start_server()
    items = read_all_items(restarted.url)
    stored = Counter(item["title"] for item in items)
    assert failures == []
    assert len(acknowledged) >= kill_after
    assert [title for title, count in stored.items() if count > 1] == []
    assert {item["title"]: item["id"] for item in items if item["title"] in acknowledged} == acknowledged
    assert_no_server_error(restarted)


def test_four_workers_start_on_a_fresh_database_and_create_one_superuser(start_server: StartServer) -> None:
    """`--workers 4` on an empty database: all four migrate and seed at once, cleanly, and
    the first superuser exists exactly once."""
    server = start_server(workers=4)
    assert server.log().count("Application startup complete") == 4
    assert_no_server_error(server)

    with httpx2.Client(base_url=server.url, timeout=REQUEST_SECONDS) as http:
        headers = login(http, SUPERUSER_EMAIL, SUPERUSER_PASSWORD)
        response = http.get(f"{API}/users/", headers=headers)
    assert response.status_code == 200, response.text
    assert [(user["email"], user["is_superuser"]) for user in response.json()["data"]] == [(SUPERUSER_EMAIL, True)]

    statuses: Counter[int] = Counter()

    async def use_api(client: httpx2.AsyncClient, n: int) -> None:
        # 32 connections spread over the workers: a token from one works on every other.
        response = await client.post("/items/", json={"title": f"item {n}"}, headers=headers)
        statuses[response.status_code] += 1
        response = await client.get("/users/me", headers=headers)
        statuses[response.status_code] += 1

    run_tasks(server.url, 32, use_api)

    assert statuses == {201: 32, 200: 32}
    assert len(read_all_items(server.url)) == 32
    assert_no_server_error(server)


# --- bcrypt never starves the rest (in process: bcrypt held on an event) -----------------


@pytest.fixture(name="held_bcrypt")
def held_bcrypt_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator["HeldBcrypt"]:
    """bcrypt's check made to wait until the test lets it go; the most running at once."""
    held = HeldBcrypt(bcrypt.checkpw)
    monkeypatch.setattr(bcrypt, "checkpw", held.checkpw)
    yield held
    held.release.set()


class HeldBcrypt:
    def __init__(self, checkpw: Callable[[bytes, bytes], bool]) -> None:
        self.real_checkpw = checkpw
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = self.most_at_once = 0

    def checkpw(self, password: bytes, hashed_password: bytes) -> bool:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.release.wait(timeout=REQUEST_SECONDS)
        with self.lock:
            self.running -= 1
        return self.real_checkpw(password, hashed_password)


def test_logins_waiting_for_bcrypt_hold_no_thread_and_no_session(
    client: TestClient, user_headers: dict[str, str], held_bcrypt: HeldBcrypt
) -> None:
    """While more logins than there are worker threads and request sessions wait on
    bcrypt, other requests are answered at once; bcrypt runs at most BCRYPT_CONCURRENCY
    checks at a time."""
    logins = 48  # more than anyio's 40 threads and the 10 request sessions
    with ThreadPoolExecutor(max_workers=logins + 1) as pool:
        pending = [
            pool.submit(client.post, f"{API}/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD})
            for _ in range(logins)
        ]
        deadline = time.monotonic() + REQUEST_SECONDS
        while held_bcrypt.running < BCRYPT_CONCURRENCY and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # let the other logins queue up

        def read_and_write() -> list[int]:
            return [
                client.get(f"{API}/users/me", headers=user_headers).status_code,
                client.post(f"{API}/items/", headers=user_headers, json={"title": "t"}).status_code,
            ]

        # Answered while every login is still held: a stall would last until the release.
        assert pool.submit(read_and_write).result(timeout=REQUEST_SECONDS / 2) == [200, 201]
        held_bcrypt.release.set()
        assert [future.result().status_code for future in pending] == [200] * logins
    assert held_bcrypt.most_at_once == BCRYPT_CONCURRENCY
