"""Benchmark: the project against a naive baseline (bench/baseline.py), with wrk.

Usage, from anywhere, with the project's dependencies installed:

    python bench/run.py                    # every scenario, 2 rounds of 10 s per server
    python bench/run.py --short            # about 2 s a run: a smoke run for CI
    python bench/run.py --scenarios me,items --duration 5
    python bench/run.py --workers 2
    python bench/run.py --database-url postgresql+psycopg://user:pw@localhost/bench
    python bench/run.py --project-env THREADPOOL_SIZE=8   # try a setting on the project

It needs wrk (Debian: `apt-get install wrk`) and installs nothing: without wrk it says
so and exits with status 2.

What it does:
1. Starts the project (`uvicorn main:app`, shipped defaults and logging) and the
   baseline (`uvicorn baseline:app`), each on a fresh SQLite file in a temp dir, with
   the same SECRET_KEY and BCRYPT_ROUNDS=12; the servers create their tables.
2. Seeds each database with three users owning 25 items each (bcrypt at 12 rounds),
   through models.py, and logs each user in for a token.
3. For each scenario, runs wrk (32 connections) against the project and the baseline
   in turn, alternating which goes first, each run at most 15 s.
4. Prints req/s, p50, p99 and server CPU ms per request (utime + stime of the whole
   server process tree from /proc, before and after each run, over the requests), the
   ratio project/baseline, for login the ratio to the bcrypt bound (cores / the time
   of one bcrypt.checkpw at 12 rounds, measured in the same run), and the targets.

Absolute figures depend on the machine and on what else runs on it; the ratios, taken
in one run with the two servers alternating, are what to compare.

Exit status: 0 when every run completed without errors (targets met or not), 1 when a
run failed or saw errors, 2 when wrk is missing.
"""

import argparse
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
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
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
API_PREFIX = "/api/v1"

# scenario -> (label, user whose token it sends)
SCENARIOS = {
    "health": ("GET /health", None),
    "me": ("GET /users/me", READER),
    "items": ("GET /items/?limit=20", READER),
    "create_item": ("POST /items/", WRITER),
    "login": ("POST /auth/login", None),
    "mix": ("90/10 read/write mix", MIXER),
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the project against bench/baseline.py with wrk.")
    parser.add_argument("--short", action="store_true", help="2 s runs, 1 round: a smoke run for CI")
    parser.add_argument("--duration", type=int, help=f"seconds a run (default 10, short 2, at most {MAX_RUN_SECONDS})")
    parser.add_argument("--rounds", type=int, help="runs per server and scenario (default 2, short 1)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for both servers (default 1)")
    parser.add_argument(
        "--database-url",
        help="one database shared by both servers (e.g. PostgreSQL) instead of a fresh SQLite file each",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of: %(default)s")
    parser.add_argument(
        "--project-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the project server only"
    )
    parser.add_argument("--project-dir", type=Path, default=REPO_DIR, help="the project tree to serve (default: here)")
    args = parser.parse_args()
    args.duration = min(args.duration or (2 if args.short else 10), MAX_RUN_SECONDS)
    args.rounds = args.rounds or (1 if args.short else 2)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    return args


# --- Database -------------------------------------------------------------------------


def create_baseline_tables(database_url: str) -> None:
    """Create the tables before the baseline starts: its `create_all` at import, run by
    `--workers N` processes at once on a new file, lets one fail with "table already
    exists" (seen in 1 start of 5 with 2 workers). On a shared database they exist already."""
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
    """Add the bench users, each owning `ITEMS_PER_USER` items, to a served database.

    Called once the server has started, so its own start-up has created the tables.
    Passwords are hashed with bcrypt at 12 rounds, as `auth.hash_password` does (`auth`
    itself is not imported: it reads the settings). Users that exist are skipped, so a
    database shared by both servers is seeded once.
    """
    import bcrypt
    from sqlmodel import Session, create_engine, select

    from models import Item, User

    engine = create_engine(database_url)
    hashed_password = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    with Session(engine) as session:
        for username in (READER, WRITER, MIXER):
            if session.exec(select(User).where(User.username == username)).first() is not None:
                continue
            user = User(email=f"{username}@example.com", username=username, hashed_password=hashed_password)
            session.add(user)
            session.flush()
            for number in range(ITEMS_PER_USER):
                session.add(Item(title=f"Item {number}", description="Seeded by bench/run.py", owner_id=user.id))
        session.commit()
    engine.dispose()


# --- Servers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One uvicorn server, its log file, and the CPU time of its process tree."""

    def __init__(self, name: str, app: str, cwd: Path, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.name = name
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
            return json.load(response)["access_token"]

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


def run_wrk(server: Server, scenario: str, token: str, seconds: int) -> RunResult:
    """One wrk run of `scenario` against `server`."""
    env = dict(os.environ, BENCH_SCENARIO=scenario, BENCH_PREFIX=API_PREFIX, BENCH_TOKEN=token)
    env["BENCH_LOGIN"] = urllib.parse.urlencode({"username": READER, "password": PASSWORD})
    threads = min(2, os.cpu_count() or 1)
    # A 30 s timeout: at 32 connections a bcrypt-bound login waits several seconds.
    command = ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s", "-s", str(WRK_SCRIPT)]
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
    if scenario != "login":
        for server in servers:
            run_wrk(server, scenario, tokens[server.name].get(user, ""), 1 if seconds <= 2 else 2)
    for round_number in range(rounds):
        order = servers if round_number % 2 == 0 else servers[::-1]
        for server in order:
            if scenario == "login":
                checkpw_times.append(checkpw_seconds())
            result = run_wrk(server, scenario, tokens[server.name].get(user, ""), seconds)
            figures[server.name].runs.append(result)
            rps = result.requests / result.seconds
            print(f"  {scenario:<12} {server.name:<9} round {round_number + 1}: {rps:8.1f} req/s", file=sys.stderr)
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


def print_targets(results: dict[str, dict[str, Figures]], bcrypt_bound: float | None) -> None:
    """The issue's targets, each with its measured ratio (they do not change the exit status)."""
    print("\nTargets (ratios in this run):")

    def report(name: str, value: float, target: str, met: bool) -> None:
        print(f"  {name:<44} {value:5.2f}x  (target {target})  {'met' if met else 'MISSED'}")

    for scenario in ("me", "items"):
        if scenario in results:
            project, baseline = results[scenario]["project"], results[scenario]["baseline"]
            speedup = ratio(project.rps, baseline.rps)
            report(f"{SCENARIOS[scenario][0]} req/s vs baseline", speedup, ">= 1.5x, goal 2x", speedup >= 1.5)
            spread = ratio(project.p99_ms, project.p50_ms)
            report(f"{SCENARIOS[scenario][0]} p99/p50", spread, "<= 5x", spread <= 5)
    if "create_item" in results:
        speedup = ratio(results["create_item"]["project"].rps, results["create_item"]["baseline"].rps)
        report("POST /items/ req/s vs baseline", speedup, ">= 1.2x", speedup >= 1.2)
    if "login" in results and bcrypt_bound:
        share = ratio(results["login"]["project"].rps, bcrypt_bound)
        report("POST /auth/login req/s vs bcrypt bound", share, ">= 0.9x", share >= 0.9)


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
        # name -> (ASGI app, extra environment); the baseline imports models.py from project_dir.
        apps = {
            "project": ("main:app", project_env),
            "baseline": ("baseline:app", {"PYTHONPATH": str(BENCH_DIR)}),
        }
        servers: list[Server] = []
        try:
            # One after the other: on a shared database the project's migrations run first.
            for name, (app, extra_env) in apps.items():
                database_url = args.database_url or f"sqlite:///{tmp_dir / name}.db"
                if name == "baseline":
                    create_baseline_tables(database_url)
                env = server_env(database_url, secret_key, extra_env)
                server = Server(name, app, project_dir, env, args.workers, tmp_dir / f"{name}.log")
                servers.append(server)
                server.wait_ready()
                seed_database(database_url)
            tokens = {s.name: {user: s.token(user) for user in (READER, WRITER, MIXER)} for s in servers}
            database = "shared" if args.database_url else "SQLite, one per server"
            print(
                f"wrk: {CONNECTIONS} connections, {args.duration} s x {args.rounds} round(s) per server;"
                f" workers {args.workers}; {cores} cores; database {database}",
                file=sys.stderr,
            )
            results: dict[str, dict[str, Figures]] = {}
            checkpw_times: list[float] = []
            for scenario in args.scenarios:
                seconds = args.duration
                if scenario == "login":
                    seconds = SHORT_LOGIN_SECONDS if args.short else LOGIN_SECONDS
                results[scenario] = measure_scenario(scenario, servers, tokens, seconds, args.rounds, checkpw_times)
        finally:
            for server in servers:
                server.stop()

    bcrypt_bound = cores / statistics.median(checkpw_times) if checkpw_times else None
    print()
    if checkpw_times:
        print(
            f"bcrypt.checkpw at {BCRYPT_ROUNDS} rounds: {1000 * statistics.median(checkpw_times):.1f} ms"
            f" (median of {len(checkpw_times)}, {1000 * min(checkpw_times):.0f}-{1000 * max(checkpw_times):.0f});"
            f" bound = {cores} cores / that = {bcrypt_bound:.1f} logins/s"
        )
    print_table(results, bcrypt_bound)
    print_targets(results, bcrypt_bound)
    # No login may complete in a short window at 32 connections: only errors count there.
    failed = [
        scenario
        for scenario, figures in results.items()
        for f in figures.values()
        if f.errors or (scenario != "login" and not all(run.requests for run in f.runs))
    ]
    if failed:
        print(f"\nruns with errors or no requests: {', '.join(sorted(set(failed)))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
