"""Benchmark: the project against a naive baseline (bench/baseline.py), with wrk.

Usage, from anywhere, with the project's dependencies installed:

    python bench/run.py                    # every scenario, 2 rounds of 10 s per server
    python bench/run.py --short            # about 2 s a run: a smoke run for CI
    python bench/run.py --scenarios me,items --duration 5
    python bench/run.py --scenarios login_storm   # reads alone, then during a login storm
    python bench/run.py --scenarios throttle      # a wrong-password login beside a throttled one
    python bench/run.py --scenarios nested_json   # GET /health latency during a nested JSON attack
    python bench/run.py --scenarios mail_storm    # password recovery during logins and sign-ups
    python bench/run.py --workers 2
    python bench/run.py --database-url postgresql+psycopg://user:pw@localhost/postgres   # a database each
    python bench/run.py --project-env LOG_LEVEL=WARNING   # try a setting on the project
    python bench/run.py --against /tmp/old --scenarios me # A/B: this tree against another version

It needs wrk (Debian: `apt-get install wrk`) and installs nothing: without wrk it says
so and exits with status 2.

What it does:
1. Starts the project (`uvicorn main:app`, shipped defaults and logging) and the
   baseline (`uvicorn baseline:app`), each on a fresh SQLite file in a temp dir (or,
   with --database-url, on a fresh database of its own on that PostgreSQL server), with
   the same SECRET_KEY and BCRYPT_ROUNDS=12; the servers create their tables.
2. Seeds each database with three users owning 25 items each, and six more users who
   only log in (the login storm's), all with bcrypt at 12 rounds, through models.py,
   and logs each of the three in for a token.
3. For each scenario, runs wrk (32 connections) against the project and the baseline
   in turn, alternating which goes first, each run at most 15 s.
4. Prints req/s, p50, p99 and server CPU ms per request (utime + stime of the whole
   server process tree from /proc, before and after each run, over the requests), the
   ratio project/baseline, for login the ratio to the bcrypt bound (cores / the time
   of one bcrypt.checkpw at 12 rounds, measured in the same run), and the targets.

The login storm (SPEC 5, "Costly work never starves the rest") measures each server
twice per round, back to back: GET /users/me alone with wrk, then the same wrk run while
8 clients (Python threads, one keep-alive connection each) log in without pause,
rotating over the six storm accounts. It reports the share of req/s the reads keep,
their p99 alone and in the storm, and the logins/s of the storm against the bcrypt bound.
The mail storm is the same with POST /auth/password-recovery as the reads, and 4 more
clients signing up without pause (SPEC 5: "That includes routes that only queue mail").

The nested JSON attack (SPEC 5, "No request holds the event loop") times GET /health with
wrk on one connection, alone, then while one client sends ~1 MiB of nested JSON arrays
without pause and unauthenticated to a route that parses its body before any check, and
reports the status codes the attack got. The mail storm and the attack measure the
project only (the naive baseline has neither route), or both trees with --against.

Absolute figures depend on the machine and on what else runs on it; the ratios, taken
in one run with the two servers alternating, are what to compare.

Exit status: 0 when every run completed without errors (targets met or not), 1 when a
run failed or saw errors, 2 when wrk is missing.
"""

import argparse
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk.lua"

CONNECTIONS = 32
MAX_RUN_SECONDS = 15
# At 32 connections a login waits for up to 32 bcrypt checks, seconds on 2 cores: login
# runs get the longest window (or 5 s with --short), and no warm-up.
LOGIN_SECONDS, SHORT_LOGIN_SECONDS = MAX_RUN_SECONDS, 5
BCRYPT_ROUNDS = 12
PASSWORD = "bench password 123"
ITEMS_PER_USER = 25
# One user per scenario family, so writes never change what the read scenarios read.
READER, WRITER, MIXER = "reader", "writer", "mixer"
# The login storm: 8 clients log in without pause (SPEC 5), rotating over six accounts, so
# that no per-account state (a session row, a failure count) makes one account the
# bottleneck, as real users logging in at once would not share one.
STORM_CLIENTS = 8
STORM_USERS = tuple(f"storm{number}" for number in range(1, 7))
# The storm runs this long before the reads start: every client then has a login in
# flight, and the reads are measured against a storm at full strength.
STORM_LEAD_SECONDS = 1
API_PREFIX = "/api/v1"
LOGIN_MAX_FAILURES = 5  # the project's default (SPEC 2)
# The mail storm's reads ask to recover an account's password: each one looks the account
# up and counts its recent recovery mails; at most 3 an hour are sent (the project's
# RECOVERY_EMAILS_PER_HOUR), the rest send nothing and get the same 202.
RECOVERY_EMAIL = f"{READER}@example.com"
# The mail storm adds these clients, signing up without pause (a bcrypt hash and a welcome
# mail each), to the login storm's.
SIGNUP_CLIENTS = 4
# The nested JSON attack: the worst ~1 MiB body measured on the project, one parse and a
# 422 each, on 2 cores: arrays nested 100 deep, about 560 ms (50 to 900 deep cost the same);
# "[[[]]]," repeated 480 ms; "[]," repeated 300 ms; "0," repeated 25 ms; one array nested
# 5000 deep is refused at once (400: the parser's recursion limit). Just under the
# project's 1 MiB body cap, so that it is parsed; a 64 KiB cap answers it with a 413.
NESTED_DEPTH = 100
NESTED_CHUNK = b"[" * NESTED_DEPTH + b"]" * NESTED_DEPTH + b","
NESTED_BODY = b"[" + NESTED_CHUNK * ((1024 * 1024 - 3) // len(NESTED_CHUNK)) + b"[]]"
NESTED_PATH = f"{API_PREFIX}/auth/password-recovery"  # parses JSON before any check

# scenario -> (label, user whose token it sends)
SCENARIOS = {
    "health": ("GET /health", None),
    "me": ("GET /users/me", READER),
    "items": ("GET /items/?limit=20", READER),
    "create_item": ("POST /items/", WRITER),
    "login": ("POST /auth/login", None),
    "mix": ("90/10 read/write mix", MIXER),
    # GET /users/me alone, then while STORM_CLIENTS log in: see measure_login_storm.
    "login_storm": ("GET /users/me + logins", READER),
    # Wrong-password logins until throttled, then throttled ones: see measure_throttle.
    "throttle": ("POST /auth/login, throttled", None),
    # GET /health alone, then during a nested JSON attack: see measure_nested_json.
    "nested_json": ("GET /health + nested JSON", None),
    # Password recovery alone, then while clients log in and sign up: see measure_storm.
    "mail_storm": ("POST /auth/password-recovery", None),
}
# The environment a server inherits: enough to run, nothing that changes a setting.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


@dataclass
class RunResult:
    """One wrk run against one server."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_seconds: float
    errors: int


@dataclass
class Figures:
    """A scenario's figures for one server, over all its rounds."""

    runs: list[RunResult] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return sum(r.requests for r in self.runs) / sum(r.seconds for r in self.runs)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs)

    @property
    def cpu_ms_per_request(self) -> float:
        requests = sum(r.requests for r in self.runs)
        return 1000 * sum(r.cpu_seconds for r in self.runs) / requests if requests else float("nan")

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


@dataclass
class StormFigures:
    """The login storm's figures for one server, over all its rounds."""

    solo: Figures = field(default_factory=Figures)  # GET /users/me alone
    storm: Figures = field(default_factory=Figures)  # the same wrk run, during the storm
    logins: int = 0  # successful logins that ended while the storm's reads ran
    login_seconds: float = 0.0  # how long those reads ran, summed over the rounds
    login_errors: int = 0  # failed logins, over the whole storm
    signups: int = 0  # the same for sign-ups (the mail storm only)
    signup_errors: int = 0

    @property
    def logins_per_second(self) -> float:
        return self.logins / self.login_seconds if self.login_seconds else float("nan")

    @property
    def signups_per_second(self) -> float:
        return self.signups / self.login_seconds if self.login_seconds else float("nan")

    @property
    def rps_kept(self) -> float:
        """The share of their req/s the reads keep during the storm."""
        return ratio(self.storm.rps, self.solo.rps)

    @property
    def p99_growth(self) -> float:
        """How many times their p99 the reads see during the storm."""
        return ratio(self.storm.p99_ms, self.solo.p99_ms)


@dataclass
class AttackFigures:
    """The nested JSON attack's figures for one server, over all its rounds."""

    solo: Figures = field(default_factory=Figures)  # GET /health alone, one connection
    attacked: Figures = field(default_factory=Figures)  # the same wrk run, during the attack
    answers: int = 0  # attack requests answered while the attacked reads ran
    attack_seconds: float = 0.0  # how long those reads ran, summed over the rounds
    statuses: Counter[int] = field(default_factory=Counter)  # the attack's answers by status; 0: none

    @property
    def answers_per_second(self) -> float:
        return self.answers / self.attack_seconds if self.attack_seconds else float("nan")

    @property
    def errors(self) -> int:
        """Failed health checks, and attack requests with a 5xx or no answer."""
        return self.solo.errors + self.attacked.errors + sum(n for s, n in self.statuses.items() if not 400 <= s < 500)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the project against bench/baseline.py with wrk.")
    parser.add_argument("--short", action="store_true", help="2 s runs, 1 round: a smoke run for CI")
    parser.add_argument("--duration", type=int, help=f"seconds a run (default 10, short 2, at most {MAX_RUN_SECONDS})")
    parser.add_argument("--rounds", type=int, help="runs per server and scenario (default 2, short 1)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for both servers (default 1)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (any database on it, e.g. .../postgres) on which each server gets a fresh"
        " database of its own, created and dropped by the run; default: a fresh SQLite file each",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of: %(default)s")
    parser.add_argument(
        "--project-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the project server only"
    )
    parser.add_argument("--project-dir", type=Path, default=REPO_DIR, help="the project tree to serve (default: here)")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="an A/B of two versions in one run: serve DIR's main:app as the 'baseline' (e.g. a git archive)",
    )
    args = parser.parse_args()
    args.duration = min(args.duration or (2 if args.short else 10), MAX_RUN_SECONDS)
    args.rounds = args.rounds or (1 if args.short else 2)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must name a PostgreSQL server (SQLite files are made per server anyway)")
    return args


# --- Database -------------------------------------------------------------------------


def create_databases(server_url: str, names: list[str]) -> dict[str, str]:
    """A fresh, empty database for each of `names` on the PostgreSQL server of `server_url`,
    so that both servers start alike and neither reads or locks the other's rows. Returns
    each one's URL; `drop_databases` removes them."""
    from sqlalchemy import create_engine, make_url

    url = make_url(server_url)
    suffix = secrets.token_hex(4)
    urls = {name: url.set(database=f"bench_{name}_{suffix}") for name in names}
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for database_url in urls.values():
            connection.exec_driver_sql(f'CREATE DATABASE "{database_url.database}"')
    engine.dispose()
    return {name: database_url.render_as_string(hide_password=False) for name, database_url in urls.items()}


def drop_databases(server_url: str, database_urls: list[str]) -> None:
    """Drop the databases `create_databases` made (the servers have stopped)."""
    from sqlalchemy import create_engine, make_url

    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for database_url in database_urls:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(database_url).database}" WITH (FORCE)')
    engine.dispose()


def create_baseline_tables(database_url: str) -> None:
    """Create the tables before the baseline starts: its `create_all` at import, run by
    `--workers N` processes at once on a new file, lets one fail with "table already
    exists" (seen in 1 start of 5 with 2 workers)."""
    from sqlmodel import SQLModel, create_engine

    import models  # noqa: F401 (registers the tables)

    engine = create_engine(database_url)
    SQLModel.metadata.create_all(engine)
    if engine.dialect.name == "sqlite":
        # Kept in the file: the workers need not race to switch it to WAL either.
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    engine.dispose()


def seed_database(database_url: str) -> None:
    """Add the bench users to a served database: the three scenario users own
    `ITEMS_PER_USER` items each, the storm users own nothing (they only log in).

    Called once the server has started, so its own start-up has created the tables. The
    tables are read from the database, not from a models.py: an `--against` version may
    have other columns. Passwords are hashed with bcrypt at 12 rounds, as
    `auth.hash_password` does. Every server has a database of its own, so none of them exists yet.
    """
    import bcrypt
    from sqlalchemy import MetaData, create_engine, insert

    engine = create_engine(database_url)
    tables = MetaData()
    with warnings.catch_warnings():  # the lower(username) index is not reflected; not needed here
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
        tables.reflect(engine, only=["user", "item"])
    user, item = tables.tables["user"], tables.tables["item"]
    hashed_password = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    now = datetime.now(UTC).replace(tzinfo=None)  # UTC, as the app stores it on SQLite
    with engine.begin() as connection:
        for username in (READER, WRITER, MIXER, *STORM_USERS):
            row = {
                "email": f"{username}@example.com",
                "username": username,
                "hashed_password": hashed_password,
                "is_active": True,
                "is_superuser": False,
                "security_stamp": secrets.token_hex(16),
                "created_at": now,
                "updated_at": now,
            }
            user_id = connection.execute(insert(user).values(row).returning(user.c.id)).scalar_one()
            if username in STORM_USERS:
                continue
            items = [
                {"title": f"Item {number}", "description": "Seeded by bench/run.py", "owner_id": user_id}
                | {"created_at": now, "updated_at": now}
                for number in range(ITEMS_PER_USER)
            ]
            connection.execute(insert(item), items)
    engine.dispose()


# --- Servers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One uvicorn server, its log file, and the CPU time of its process tree."""

    def __init__(self, name: str, app: str, cwd: Path, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.name = name
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until GET /health answers 200, or raise with the end of the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:  # noqa: S310 (http://127.0.0.1)
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        log_tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} server did not start:\n{log_tail}")

    def token(self, username: str) -> str:
        """Log in as `username` and return the access token."""
        body = urllib.parse.urlencode({"username": username, "password": PASSWORD}).encode()
        url = f"{self.url}{API_PREFIX}/auth/login"
        with urllib.request.urlopen(url, data=body, timeout=30) as response:  # noqa: S310 (http://127.0.0.1)
            token: str = json.load(response)["access_token"]
            return token

    def cpu_seconds(self) -> float:
        """utime + stime of the server and every descendant (uvicorn workers), in seconds."""
        return sum(process_cpu_ticks(pid) for pid in process_tree(self.process.pid)) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the server uses less than a tenth of a core: a run's requests that
        were still in flight when wrk stopped (a bcrypt check takes a while) must not
        count against the next run."""
        deadline = time.monotonic() + timeout
        before = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            after = self.cpu_seconds()
            if after - before < 0.05:
                return
            before = after

    def stop(self) -> None:
        """Ctrl-C the server (uvicorn then stops its workers); kill it after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def read_stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat, from field 3 (state) on: the command name may hold spaces."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        fields = read_stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found through the parent id in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(read_stat_fields(int(entry))[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def server_env(database_url: str, secret_key: str, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: shipped defaults but for the database, key and bcrypt cost."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(DATABASE_URL=database_url, SECRET_KEY=secret_key, BCRYPT_ROUNDS=str(BCRYPT_ROUNDS))
    env.update(extra)
    return env


# --- Measuring ------------------------------------------------------------------------


def run_wrk(
    server: Server, scenario: str, token: str, seconds: int, wait_idle: bool = True, connections: int = CONNECTIONS
) -> RunResult:
    """One wrk run of `scenario` against `server`, once the server is idle (unless
    `wait_idle` is false: during a login storm it never is)."""
    env = dict(os.environ, BENCH_SCENARIO=scenario, BENCH_PREFIX=API_PREFIX, BENCH_TOKEN=token)
    env["BENCH_LOGIN"] = urllib.parse.urlencode({"username": READER, "password": PASSWORD})
    env["BENCH_RECOVERY"] = json.dumps({"email": RECOVERY_EMAIL})
    threads = min(2, os.cpu_count() or 1, connections)
    # A 30 s timeout: at 32 connections a bcrypt-bound login waits several seconds.
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(WRK_SCRIPT)]
    if wait_idle:
        server.wait_idle()
    cpu_before = server.cpu_seconds()
    output = subprocess.run(
        [*command, server.url], env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    cpu_after = server.cpu_seconds()
    line = next((line for line in output.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result for {scenario} on {server.name}:\n{output}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    # wrk reports 0 ms percentiles when no request completed: say "no figure" instead.
    no_requests = result["requests"] == 0
    return RunResult(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        p50_ms=float("nan") if no_requests else result["p50_us"] / 1000,
        p99_ms=float("nan") if no_requests else result["p99_us"] / 1000,
        cpu_seconds=cpu_after - cpu_before,
        errors=result["socket_errors"] + result["http_errors"],
    )


def checkpw_seconds(samples: int = 3) -> float:
    """The median time of one bcrypt.checkpw at `BCRYPT_ROUNDS`, on this machine, now."""
    import bcrypt

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        bcrypt.checkpw(PASSWORD.encode(), hashed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_scenario(
    scenario: str,
    servers: list[Server],
    tokens: dict[str, dict[str, str]],
    seconds: int,
    rounds: int,
    checkpw_times: list[float],
) -> dict[str, Figures]:
    """Warm each server up, then run `rounds` runs per server, alternating who goes first.

    Login runs get no warm-up, and a bcrypt timing before each (into `checkpw_times`).
    """
    user = SCENARIOS[scenario][1]
    figures = {server.name: Figures() for server in servers}
    token = {server.name: tokens[server.name][user] if user else "" for server in servers}
    if scenario != "login":
        for server in servers:
            run_wrk(server, scenario, token[server.name], 1 if seconds <= 2 else 2)
    for round_number in range(rounds):
        order = servers if round_number % 2 == 0 else servers[::-1]
        for server in order:
            if scenario == "login":
                checkpw_times.append(checkpw_seconds())
            result = run_wrk(server, scenario, token[server.name], seconds)
            figures[server.name].runs.append(result)
            rps = result.requests / result.seconds
            print(f"  {scenario:<12} {server.name:<9} round {round_number + 1}: {rps:8.1f} req/s", file=sys.stderr)
    return figures


class Storm:
    """Clients that send requests to `server` without pause, for as long as the `with`
    block lasts: the base of the login storm, the sign-up storm and the nested JSON
    attack, which say what a request is (`request`) and which answers count (`ok`).

    Each client is a thread with its own keep-alive connection, like a wrk connection.
    Threads are enough here: a client waits on the server almost all of the time (a login
    takes a bcrypt check, a quarter second of CPU), and Python releases the GIL while it
    waits. The end time of every answer `ok` accepts is kept, so that `count_between` can
    count those of exactly the window in which the reads ran; the others are `errors`.
    `statuses` counts every answer by status, 0 for a request that got none.
    """

    def __init__(self, server: Server, clients: int) -> None:
        self.server = server
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.ended: list[float] = []  # time.monotonic() at the end of each answer `ok` accepts
        self.errors = 0
        self.statuses: Counter[int] = Counter()
        self.threads = [threading.Thread(target=self.client, args=(number,)) for number in range(clients)]

    def __enter__(self) -> "Storm":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Each client finishes the request it has in flight, then stops.
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def request(self, turn: int) -> tuple[str, bytes, dict[str, str]]:
        """The path, body and headers of a client's POST; `turn` counts from the client's number."""
        raise NotImplementedError

    def ok(self, status: int) -> bool:
        """Whether an answer counts as a success."""
        return status == 200

    def client(self, number: int) -> None:
        """Send requests, one after another, until the storm stops."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            for turn in itertools.count(number):
                if self.stopping.is_set():
                    return
                path, body, headers = self.request(turn)
                try:
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()  # the whole body, so the connection can carry the next request
                    status = response.status
                except (OSError, http.client.HTTPException):
                    status = 0
                    connection.close()  # the next request opens a new connection
                with self.lock:
                    self.statuses[status] += 1
                    if self.ok(status):
                        self.ended.append(time.monotonic())
                    else:
                        self.errors += 1
        finally:
            connection.close()

    def count_between(self, start: float, end: float) -> int:
        """How many answers `ok` accepted between two `time.monotonic()` readings."""
        with self.lock:
            return sum(start <= moment <= end for moment in self.ended)


class LoginStorm(Storm):
    """`STORM_CLIENTS` clients logging in, each rotating over `STORM_USERS`, starting one
    account further than the previous client."""

    def __init__(self, server: Server) -> None:
        super().__init__(server, STORM_CLIENTS)

    def request(self, turn: int) -> tuple[str, bytes, dict[str, str]]:
        username = STORM_USERS[turn % len(STORM_USERS)]
        body = urllib.parse.urlencode({"username": username, "password": PASSWORD}).encode()
        return f"{API_PREFIX}/auth/login", body, {"Content-Type": "application/x-www-form-urlencoded"}


class SignUpStorm(Storm):
    """`clients` clients signing up, each time as a new user (201, a bcrypt hash, a welcome mail)."""

    def request(self, turn: int) -> tuple[str, bytes, dict[str, str]]:
        username = f"signup-{secrets.token_hex(8)}"
        body = json.dumps({"email": f"{username}@example.com", "username": username, "password": PASSWORD})
        return f"{API_PREFIX}/users/", body.encode(), {"Content-Type": "application/json"}

    def ok(self, status: int) -> bool:
        return status == 201


class NestedJsonAttack(Storm):
    """One client sending `NESTED_BODY`, unauthenticated, to `NESTED_PATH`. Any 4xx is the
    expected answer (422 when the body is parsed, 413 when it is refused unread); a 5xx or
    no answer is an error."""

    def __init__(self, server: Server) -> None:
        super().__init__(server, 1)

    def request(self, turn: int) -> tuple[str, bytes, dict[str, str]]:
        return NESTED_PATH, NESTED_BODY, {"Content-Type": "application/json"}

    def ok(self, status: int) -> bool:
        return 400 <= status < 500


def measure_storm(
    scenario: str,
    servers: list[Server],
    read_tokens: dict[str, str],
    seconds: int,
    rounds: int,
    checkpw_times: list[float],
) -> dict[str, StormFigures]:
    """The reads alone, then during a storm, per server and round: for `login_storm`,
    GET /users/me while `STORM_CLIENTS` log in; for `mail_storm`, POST
    /auth/password-recovery while they log in and `SIGNUP_CLIENTS` more sign up.

    Both runs of a round follow each other on the same server, so that the machine's
    other load changes least between them; servers alternate who goes first, as in
    `measure_scenario`. Before each storm, while the server is idle, a bcrypt timing goes
    into `checkpw_times`: the bound the storm's logins/s are compared with.
    `read_tokens` holds the reads' token for each server ("" for none).
    """
    read = "me" if scenario == "login_storm" else "recovery"  # the wrk.lua scenario
    signup_clients = SIGNUP_CLIENTS if scenario == "mail_storm" else 0
    figures = {server.name: StormFigures() for server in servers}
    for server in servers:
        run_wrk(server, read, read_tokens[server.name], 1 if seconds <= 2 else 2)  # warm-up
    for round_number in range(rounds):
        order = servers if round_number % 2 == 0 else servers[::-1]
        for server in order:
            token = read_tokens[server.name]
            f = figures[server.name]
            solo = run_wrk(server, read, token, seconds)
            f.solo.runs.append(solo)

            server.wait_idle()
            checkpw_times.append(checkpw_seconds())
            with LoginStorm(server) as logins, SignUpStorm(server, signup_clients) as signups:
                time.sleep(STORM_LEAD_SECONDS)
                started = time.monotonic()
                reads = run_wrk(server, read, token, seconds, wait_idle=False)
                ended = time.monotonic()
            f.storm.runs.append(reads)
            # Only the logins that ended while the reads ran: those shared the server with them.
            f.logins += logins.count_between(started, ended)
            f.signups += signups.count_between(started, ended)
            f.login_seconds += ended - started
            f.login_errors += logins.errors
            f.signup_errors += signups.errors

            signed_up = f" and {signups.count_between(started, ended) / (ended - started):5.1f} sign-ups/s"
            print(
                f"  {scenario:<12} {server.name:<9} round {round_number + 1}:"
                f" {solo.requests / solo.seconds:8.1f} req/s alone, {reads.requests / reads.seconds:8.1f} req/s"
                f" and {logins.count_between(started, ended) / (ended - started):5.1f} logins/s"
                f"{signed_up if signup_clients else ''} in the storm",
                file=sys.stderr,
            )
    return figures


def measure_nested_json(servers: list[Server], seconds: int, rounds: int) -> dict[str, AttackFigures]:
    """GET /health alone, then while `NestedJsonAttack` runs, per server and round, in
    the order of `measure_storm`.

    wrk times GET /health on one connection, one request at a time: each figure is how
    long one request waits for the event loop, with no queue of other reads behind it.
    """
    figures = {server.name: AttackFigures() for server in servers}
    for server in servers:
        run_wrk(server, "health", "", 1 if seconds <= 2 else 2, connections=1)  # warm-up
    for round_number in range(rounds):
        order = servers if round_number % 2 == 0 else servers[::-1]
        for server in order:
            f = figures[server.name]
            solo = run_wrk(server, "health", "", seconds, connections=1)
            f.solo.runs.append(solo)

            server.wait_idle()
            with NestedJsonAttack(server) as attack:
                time.sleep(STORM_LEAD_SECONDS)
                started = time.monotonic()
                attacked = run_wrk(server, "health", "", seconds, wait_idle=False, connections=1)
                ended = time.monotonic()
            f.attacked.runs.append(attacked)
            f.answers += attack.count_between(started, ended)
            f.attack_seconds += ended - started
            f.statuses.update(attack.statuses)

            print(
                f"  {'nested_json':<12} {server.name:<9} round {round_number + 1}: GET /health p50"
                f" {solo.p50_ms:.2f} ms alone, {attacked.p50_ms:.2f} ms during the attack"
                f" ({dict(attack.statuses)})",
                file=sys.stderr,
            )
    return figures


# --- Report ---------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing (a run with no request)."""
    if not denominator or numerator != numerator:
        return float("nan")
    return numerator / denominator


def print_table(results: dict[str, dict[str, Figures]], bcrypt_bound: float | None) -> None:
    """The figures of both servers per scenario, and the project/baseline ratios."""
    header = f"{'scenario':<22} {'server':<9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms/req':>11} {'errors':>7}"
    print(header)
    print("-" * len(header))
    for scenario, figures in results.items():
        label = SCENARIOS[scenario][0]
        for name in ("project", "baseline"):
            f = figures[name]
            print(
                f"{label:<22} {name:<9} {f.rps:9.1f} {f.p50_ms:9.2f} {f.p99_ms:9.2f}"
                f" {f.cpu_ms_per_request:11.3f} {f.errors:7d}"
            )
            label = ""
        project, baseline = figures["project"], figures["baseline"]
        print(
            f"{'':<22} {'ratio':<9} {ratio(project.rps, baseline.rps):8.2f}x"
            f" {ratio(project.p50_ms, baseline.p50_ms):8.2f}x {ratio(project.p99_ms, baseline.p99_ms):8.2f}x"
            f" {ratio(project.cpu_ms_per_request, baseline.cpu_ms_per_request):10.2f}x"
        )
        if scenario == "login" and bcrypt_bound:
            print(
                f"{'':<22} {'bound':<9} {bcrypt_bound:9.1f}   project/bound {ratio(project.rps, bcrypt_bound):.2f}x,"
                f" baseline/bound {ratio(baseline.rps, bcrypt_bound):.2f}x"
            )
    print("ratio = project / baseline. Project p99/p50:", end="")
    print("".join(f" {s} {ratio(f['project'].p99_ms, f['project'].p50_ms):.1f}" for s, f in results.items()))


def time_logins(server: Server, username: str, count: int) -> tuple[list[int], float]:
    """`count` wrong-password logins of `username`, one after another: their statuses and
    the median time of one, in ms."""
    body = urllib.parse.urlencode({"username": username, "password": "not the password"}).encode()
    statuses, seconds = [], []
    for _ in range(count):
        started = time.perf_counter()
        try:
            urllib.request.urlopen(f"{server.url}{API_PREFIX}/auth/login", data=body, timeout=30)  # noqa: S310
            statuses.append(200)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
        seconds.append(time.perf_counter() - started)
    return statuses, 1000 * statistics.median(seconds)


def measure_throttle(project: Server, rounds: int) -> tuple[float, float]:
    """The project's answer to a guesser (SPEC 5): the median time of a wrong-password login
    (401, a bcrypt check at cost 12) beside a throttled one (429, no bcrypt check), for an
    unknown login text, which is counted just like an account. Returns both, in ms."""
    wrong, throttled = [], []
    for round_number in range(rounds):
        username = f"guessed-{round_number}-{secrets.token_hex(4)}"
        statuses, wrong_ms = time_logins(project, username, LOGIN_MAX_FAILURES)
        throttled_statuses, throttled_ms = time_logins(project, username, LOGIN_MAX_FAILURES)
        if set(statuses) != {401} or set(throttled_statuses) != {429}:
            raise RuntimeError(f"expected 401s then 429s, got {statuses} then {throttled_statuses}")
        wrong.append(wrong_ms)
        throttled.append(throttled_ms)
        print(
            f"  throttle     project   round {round_number + 1}: {wrong_ms:.1f} ms / {throttled_ms:.1f} ms",
            file=sys.stderr,
        )
    return statistics.median(wrong), statistics.median(throttled)


def print_storm_table(scenario: str, storm: dict[str, StormFigures], bcrypt_bound: float | None) -> None:
    """A storm's figures for each server: the reads alone and in the storm, and the
    storm's logins/s (and sign-ups/s for the mail storm)."""
    read = SCENARIOS["me" if scenario == "login_storm" else "mail_storm"][0]
    signups = scenario == "mail_storm"
    also = f" and {SIGNUP_CLIENTS} sign up" if signups else ""
    print(f"\n{read}, {CONNECTIONS} connections, alone and while {STORM_CLIENTS} clients log in{also}:")
    header = (
        f"{'server':<9} {'solo req/s':>10} {'storm req/s':>11} {'kept':>6} {'solo p99 ms':>11}"
        f" {'storm p99 ms':>12} {'p99 x':>6} {'logins/s':>8} {'of bound':>8}"
        + (f" {'sign-ups/s':>10}" if signups else "")
        + f" {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, f in storm.items():
        of_bound = ratio(f.logins_per_second, bcrypt_bound or float("nan"))
        errors = f.solo.errors + f.storm.errors + f.login_errors + f.signup_errors
        print(
            f"{name:<9} {f.solo.rps:10.1f} {f.storm.rps:11.1f} {f.rps_kept:5.2f}x {f.solo.p99_ms:11.2f}"
            f" {f.storm.p99_ms:12.2f} {f.p99_growth:5.2f}x {f.logins_per_second:8.1f} {of_bound:7.2f}x"
            + (f" {f.signups_per_second:10.1f}" if signups else "")
            + f" {errors:6d}"
        )
    print("kept = storm req/s / solo req/s; p99 x = storm p99 / solo p99; of bound = logins/s / bcrypt bound.")


def print_attack_table(attack: dict[str, AttackFigures]) -> None:
    """GET /health alone and during the nested JSON attack, for each server, and what the
    attack got."""
    print(f"\nGET /health, 1 connection, alone and while 1 client sends {len(NESTED_BODY)} bytes of nested JSON:")
    header = (
        f"{'server':<9} {'solo p50 ms':>11} {'solo p99 ms':>11} {'attack p50 ms':>13} {'attack p99 ms':>13}"
        f" {'p50 x':>7} {'attacks/s':>9} {'errors':>6}  attack statuses"
    )
    print(header)
    print("-" * len(header))
    for name, f in attack.items():
        statuses = ", ".join(f"{status or 'none'} x{count}" for status, count in sorted(f.statuses.items()))
        print(
            f"{name:<9} {f.solo.p50_ms:11.2f} {f.solo.p99_ms:11.2f} {f.attacked.p50_ms:13.2f} {f.attacked.p99_ms:13.2f}"
            f" {ratio(f.attacked.p50_ms, f.solo.p50_ms):6.1f}x {f.answers_per_second:9.2f} {f.errors:6d}  {statuses}"
        )
    print("p50 x = attack p50 / solo p50; attacks/s = attack requests answered while GET /health ran.")


def print_targets(
    results: dict[str, dict[str, Figures]],
    storm: dict[str, StormFigures],
    mail: dict[str, StormFigures],
    attack: dict[str, AttackFigures],
    bcrypt_bound: float | None,
) -> None:
    """Issue 22's targets, each with its measured ratio (they do not change the exit status).

    The login storm's targets are the project's; the baseline's figure is shown beside them.
    """
    print("\nTargets (ratios in this run):")

    def report(name: str, value: float, target: str, met: bool, baseline: float | None = None, unit: str = "x") -> None:
        beside = "" if baseline is None else f"  (baseline {baseline:.2f}x)"
        print(f"  {name:<44} {value:5.2f}{unit}  (target {target})  {'met' if met else 'MISSED'}{beside}")

    # Against the tutorial way: never slower.
    for scenario in ("me", "items", "create_item"):
        if scenario in results:
            project, baseline = results[scenario]["project"], results[scenario]["baseline"]
            speedup = ratio(project.rps, baseline.rps)
            report(f"{SCENARIOS[scenario][0]} req/s vs baseline", speedup, ">= 1.0x", speedup >= 1.0)
            spread = ratio(project.p99_ms, project.p50_ms)
            report(f"{SCENARIOS[scenario][0]} p99/p50", spread, "<= 5x", spread <= 5)
    if "login" in results and bcrypt_bound:
        share = ratio(results["login"]["project"].rps, bcrypt_bound)
        report("POST /auth/login req/s vs bcrypt bound", share, ">= 0.9x", share >= 0.9)
    if storm:
        stormed, baseline_stormed = storm["project"], storm["baseline"]
        kept = stormed.rps_kept
        report("login storm: GET /users/me req/s kept", kept, ">= 0.5x", kept >= 0.5, baseline_stormed.rps_kept)
        growth = stormed.p99_growth
        report("login storm: GET /users/me p99 vs alone", growth, "<= 5x", growth <= 5, baseline_stormed.p99_growth)
        if bcrypt_bound:
            share = ratio(stormed.logins_per_second, bcrypt_bound)
            baseline_share = ratio(baseline_stormed.logins_per_second, bcrypt_bound)
            report("login storm: logins/s vs bcrypt bound", share, ">= 0.8x", share >= 0.8, baseline_share)
    if mail:  # the project only: the baseline has no password recovery
        kept = mail["project"].rps_kept
        report("mail storm: password recovery req/s kept", kept, "> 0.5x", kept > 0.5)
    if attack:
        median = attack["project"].attacked.p50_ms
        report("nested JSON: GET /health p50 during the attack", median, "< 100 ms", median < 100, unit=" ms")


# --- Main -----------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    project_dir = args.project_dir.resolve()
    # The seed imports the project's models module.
    sys.path.insert(0, str(project_dir))
    if (project_dir / ".env").exists():
        print(f"note: {project_dir / '.env'} exists; its settings apply to the project server", file=sys.stderr)
    project_env = dict(item.split("=", 1) for item in args.project_env)
    cores = os.cpu_count() or 1
    secret_key = secrets.token_urlsafe(48)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp_dir = Path(tmp)
        # name -> (ASGI app, its directory, extra environment); the naive baseline imports
        # models.py from project_dir, an --against version runs from its own tree.
        apps = {
            "project": ("main:app", project_dir, project_env),
            "baseline": ("baseline:app", project_dir, {"PYTHONPATH": str(BENCH_DIR)}),
        }
        if args.against:
            apps["baseline"] = ("main:app", args.against.resolve(), project_env)
        servers: list[Server] = []
        database_urls = {name: f"sqlite:///{tmp_dir / name}.db" for name in apps}
        if args.database_url:
            database_urls = create_databases(args.database_url, list(apps))
        try:
            for name, (app, app_dir, extra_env) in apps.items():
                database_url = database_urls[name]
                if app == "baseline:app":
                    create_baseline_tables(database_url)
                env = server_env(database_url, secret_key, extra_env)
                server = Server(name, app, app_dir, env, args.workers, tmp_dir / f"{name}.log")
                servers.append(server)
                server.wait_ready()
                seed_database(database_url)
            tokens = {s.name: {user: s.token(user) for user in (READER, WRITER, MIXER)} for s in servers}
            database = "PostgreSQL" if args.database_url else "SQLite"
            database += ", one database per server, seeded alike"
            print(
                f"wrk: {CONNECTIONS} connections, {args.duration} s x {args.rounds} round(s) per server;"
                f" workers {args.workers}; {cores} cores; database {database}",
                file=sys.stderr,
            )
            results: dict[str, dict[str, Figures]] = {}
            storm: dict[str, StormFigures] = {}
            mail: dict[str, StormFigures] = {}
            attack: dict[str, AttackFigures] = {}
            throttle: tuple[float, float] | None = None
            checkpw_times: list[float] = []
            for scenario in args.scenarios:
                if scenario == "throttle":
                    throttle = measure_throttle(next(s for s in servers if s.name == "project"), args.rounds)
                    continue
                if scenario == "login_storm":
                    read_tokens = {s.name: tokens[s.name][READER] for s in servers}
                    storm = measure_storm(scenario, servers, read_tokens, args.duration, args.rounds, checkpw_times)
                    continue
                # The naive baseline has neither password recovery nor sign-up: these two
                # measure the project, and the other tree of --against.
                projects = [s for s in servers if s.app == "main:app"]
                if scenario == "mail_storm":
                    no_tokens = {s.name: "" for s in projects}
                    mail = measure_storm(scenario, projects, no_tokens, args.duration, args.rounds, checkpw_times)
                    continue
                if scenario == "nested_json":
                    attack = measure_nested_json(projects, args.duration, args.rounds)
                    continue
                seconds = args.duration
                if scenario == "login":
                    seconds = SHORT_LOGIN_SECONDS if args.short else LOGIN_SECONDS
                results[scenario] = measure_scenario(scenario, servers, tokens, seconds, args.rounds, checkpw_times)
        finally:
            for server in servers:
                server.stop()
            if args.database_url:
                drop_databases(args.database_url, list(database_urls.values()))

    bcrypt_bound = cores / statistics.median(checkpw_times) if checkpw_times else None
    print()
    if checkpw_times:
        print(
            f"bcrypt.checkpw at {BCRYPT_ROUNDS} rounds: {1000 * statistics.median(checkpw_times):.1f} ms"
            f" (median of {len(checkpw_times)}, {1000 * min(checkpw_times):.0f}-{1000 * max(checkpw_times):.0f});"
            f" bound = {cores} cores / that = {bcrypt_bound:.1f} logins/s"
        )
    if results:
        print_table(results, bcrypt_bound)
    if storm:
        print_storm_table("login_storm", storm, bcrypt_bound)
    if mail:
        print_storm_table("mail_storm", mail, bcrypt_bound)
    if attack:
        print_attack_table(attack)
    if throttle:
        wrong_ms, throttled_ms = throttle
        print(
            f"\nA guesser, one login at a time (project): wrong password {wrong_ms:.1f} ms (401),"
            f" throttled {throttled_ms:.1f} ms (429, no bcrypt check): {ratio(wrong_ms, throttled_ms):.0f}x"
        )
    if not args.against:  # the targets are against the naive baseline
        print_targets(results, storm, mail, attack, bcrypt_bound)
    # No login may complete in a short window at 32 connections: only errors count there.
    failed = [
        scenario
        for scenario, figures in results.items()
        for f in figures.values()
        if f.errors or (scenario != "login" and not all(run.requests for run in f.runs))
    ]
    # The storm's reads must all get through; a storm with no login at all is a failure too.
    failed += [
        "login_storm"
        for f in storm.values()
        if f.solo.errors + f.storm.errors + f.login_errors
        or not all(run.requests for run in f.solo.runs + f.storm.runs)
        or not f.logins
    ]
    # The mail storm's reads may starve (that is what it measures), but none may fail, nor a
    # login or sign-up. A sign-up takes seconds in the storm: in a short window, none may end.
    failed += [
        "mail_storm"
        for f in mail.values()
        if f.solo.errors + f.storm.errors + f.login_errors + f.signup_errors
        or not all(run.requests for run in f.solo.runs)
        or not f.logins
    ]
    # No health check may fail, and the attack must get only 4xx answers. During the attack
    # a health check may take longer than a short window: none ending there is a figure.
    failed += [
        "nested_json"
        for f in attack.values()
        if f.errors or not all(run.requests for run in f.solo.runs) or not f.answers
    ]
    if failed:
        print(f"\nruns with errors or no requests: {', '.join(sorted(set(failed)))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
