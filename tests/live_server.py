"""Test helpers for running the app for real: a copy of it, a port, a `uvicorn` process.

Holds:
- `copy_app`: the application (non-test modules, `alembic.ini`, `alembic/`) copied into a
  temp dir, so a server or `import main` runs as a fresh checkout would and leaves no
  `.secret_key` or `app.db` in the repository.
- `child_environ`: this process's environment without any app setting, plus the given ones.
- `free_port`: a loopback port nothing listens on.
- `running_server`: `uvicorn main:app` in its own process group, up once its workers
  report start-up and `/health` answers (bounded wait), always stopped on exit (`stop`).

Used by the live-server tests in `tests/`; fixtures stay in those files and in conftest.py.

Imports: config.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2

from config import Settings

APP_DIR = Path(__file__).parent.parent  # the repository root: the application lives there
SETTING_NAMES = set(Settings.model_fields) | {"TEST_DATABASE_URL"}
START_SECONDS = 30
STOP_SECONDS = 15


def copy_app(destination: Path) -> Path:
    """Copy the application (modules and migrations) into `destination`, a new directory.

    With their compiled bytecode, and the modification times it is checked against
    (`copy2`): a process started there imports them without compiling them again."""
    destination.mkdir()
    for module in APP_DIR.glob("*.py"):
        if module.name != "conftest.py" and not module.name.startswith("test_"):
            shutil.copy2(module, destination)
    if (APP_DIR / "__pycache__").is_dir():
        shutil.copytree(
            APP_DIR / "__pycache__", destination / "__pycache__", ignore=shutil.ignore_patterns("test_*", "conftest*")
        )
    shutil.copy(APP_DIR / "alembic.ini", destination)
    shutil.copytree(APP_DIR / "alembic", destination / "alembic")
    return destination


def child_environ(**settings: str) -> dict[str, str]:
    """This process's environment without any app setting, plus `settings`."""
    environ = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    return environ | settings


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks one, we release it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A `uvicorn main:app` process, its URL and the files its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stderr(self) -> str:
        """Where uvicorn and the app log (middleware.configure_logging)."""
        return self.stderr_path.read_text(errors="replace")

    def log(self) -> str:
        """All the server wrote, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr()


def answers(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/health", timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down cleanly, workers included), SIGKILL for anything left."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)
    # The server's own process group (start_new_session): no worker outlives the test.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(app_dir: Path, *args: str, started: int = 1, **settings: str) -> Iterator[Server]:
    """`uvicorn main:app` from `app_dir` on a free port with `settings` as its environment,
    up once `started` workers are; stopped, whatever happened, on leaving the block."""
    port = free_port()
    stdout_path, stderr_path = app_dir / f"uvicorn-{port}.out", app_dir / f"uvicorn-{port}.err"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), *args],
            cwd=app_dir,
            env=child_environ(**settings),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, stdout_path, stderr_path)
    try:
        deadline = time.monotonic() + START_SECONDS
        while server.stderr().count("Application startup complete") < started or not answers(server.url):
            assert process.poll() is None, f"uvicorn exited with {process.returncode}:\n{server.log()}"
            assert time.monotonic() < deadline, f"uvicorn did not start:\n{server.log()}"
            time.sleep(0.05)
        yield server
    finally:
        stop(process)
