"""A Prefect server, a Dask scheduler and Dask workers as loopback subprocesses.

The same commands a person types on a laptop (``prefect server start``, ``dask scheduler``,
``dask worker``), started from Python so the deployment and cluster tests and
``benchmarks/scale.py`` exercise the real services rather than in-process stand-ins.  Each
service runs in its own session (process group) so stopping it also stops what it spawned (the
Dask nanny's worker, the server's uvicorn), and its output goes to a log file that is quoted when
a service fails to come up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

STARTUP_SECONDS = 120.0  # a Prefect server migrating its SQLite database on a loaded 2-core box


def venv_command(name: str) -> str:
    """The console script installed beside this interpreter (``prefect``, ``dask``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One started command: its process (group leader) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole group at once: a machine or pod lost, nothing shuts down cleanly."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self._signal(signal.SIGKILL)  # children of a leader that already exited
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def start(name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Service:
    """Start ``argv`` in a new session with stdout and stderr going to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ if env is None else env), cwd=cwd,
                                start_new_session=True)
    return Service(name, proc, log)


def wait_for(ready: Callable[[], bool], service: Service, what: str,
             timeout: float = STARTUP_SECONDS) -> None:
    """Poll ``ready`` until true; fail early with the log if the service exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not service.alive():
            raise RuntimeError(f"{service.name} exited ({service.proc.returncode}) before {what}:"
                               f"\n{service.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service.name}: no {what} after {timeout:.0f} s:"
                               f"\n{service.log_tail()}")
        time.sleep(0.25)


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """This process's environment with its own PREFECT_HOME (profiles, SQLite) and API URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(home: Path, log_dir: Path) -> tuple[Service, str]:
    """``prefect server start`` on a free loopback port with its own SQLite; returns its API URL.

    The UI is off (it is the slow part of startup and nothing here looks at it).
    """
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    argv = [venv_command("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-ui", "--analytics-off"]
    service = start("prefect-server", argv, log_dir, env=prefect_env(home))
    try:
        wait_for(lambda: _healthy(api_url), service, "healthy API")
    except BaseException:
        service.stop()
        raise
    return service, api_url


def start_dask_scheduler(log_dir: Path, env: Mapping[str, str] | None = None,
                         ) -> tuple[Service, str]:
    """``dask scheduler`` on a free loopback port; returns its ``tcp://`` address."""
    scheduler_file = log_dir / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    argv = [venv_command("dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
            "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    service = start("dask-scheduler", argv, log_dir, env=env)
    try:
        wait_for(scheduler_file.exists, service, "scheduler file")
        wait_for(lambda: _address(scheduler_file) is not None, service, "scheduler address")
    except BaseException:
        service.stop()
        raise
    address = _address(scheduler_file)
    assert address is not None
    return service, address


def _address(scheduler_file: Path) -> str | None:
    try:
        return str(json.loads(scheduler_file.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return None  # written but not flushed yet


def start_dask_worker(address: str, name: str, log_dir: Path,
                      env: Mapping[str, str] | None = None, nthreads: int = 1) -> Service:
    """``dask worker`` (with its nanny) for ``address``; callers wait for it via a Client."""
    argv = [venv_command("dask"), "worker", address, "--name", name, "--nthreads", str(nthreads),
            "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
            "--local-directory", str(log_dir / f"{name}-space")]
    return start(name, argv, log_dir, env=env)
