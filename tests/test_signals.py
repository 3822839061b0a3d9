"""Ctrl-C, SIGTERM and SIGKILL stop a build cleanly: no process outlives it, a rerun resumes.

Real processes and real signals, sent the way their senders send them: a terminal's Ctrl-C is
SIGINT to the whole foreground process group, a supervisor's stop is SIGTERM to the pid, the
OOM killer's is SIGKILL to the pid alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from portraits import light_config, resized_copies

from matteforge.dataset.verify import verify_dataset

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="needs Linux /proc")

N_INPUTS = 12  # a stopped run may commit a shard or two more while it stops: keep work left
STOP_SECONDS = 15  # what the CLI promises after the first signal
AT_ONCE_SECONDS = 3  # ... and after a second one
MESSAGE = re.compile(r"^matteforge: interrupted by (SIGINT|SIGTERM): .+; the shards committed "
                     r"so far are kept, run the same command again to resume$", re.MULTILINE)


@dataclass
class Build:
    """One ``matteforge build`` in its own session, with its own Prefect home and stderr."""

    process: subprocess.Popen[bytes]
    home: Path
    stderr: Path

    def processes(self) -> list[int]:
        """Live processes of this build: its process group, and anything with its Prefect home
        (the server and the watchdog run in sessions of their own)."""
        return _live(lambda pid, pgid, environ: pgid == self.process.pid
                     or f"\0PREFECT_HOME={self.home}\0".encode() in environ)

    def server_started(self) -> bool:
        return bool(_live(lambda pid, pgid, environ: f"\0PREFECT_HOME={self.home}\0".encode()
                          in environ and b"uvicorn" in _cmdline(pid)))

    def gone_within(self, seconds: float) -> list[int]:
        """What is left of the build after up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


def _live(match: Callable[[int, int, bytes], bool]) -> list[int]:
    """Running processes (zombies aside) that ``match(pid, pgid, environ)``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = b"\0" + (stat.parent / "environ").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and pid != os.getpid() and match(pid, int(fields[2]), environ):
            found.append(pid)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _portraits(folder: Path, astronaut: np.ndarray) -> list[Path]:
    return resized_copies(folder, astronaut, N_INPUTS)


def _start(tmp_path: Path, command: list[str], name: str) -> Build:
    home, stderr = tmp_path / f"home-{name}", tmp_path / f"stderr-{name}.txt"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with stderr.open("wb") as err:
        process = subprocess.Popen(command, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=err)
    return Build(process, home, stderr)


def _committed(out: Path) -> int:
    return len(list((out / "manifest" / "samples").glob("shard-*.parquet")))


def _when(build: Build, ready: Callable[[], bool]) -> None:
    """Wait for ``ready()``, the build still running."""
    deadline = time.monotonic() + 600
    while not ready() and build.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert build.process.poll() is None, "the build ended before the signal: " + \
        build.stderr.read_text()[-2000:]


def _exits(build: Build, code: int, within: float, since: float) -> float:
    """Assert the exit code and how soon after ``since`` it came; returns the seconds."""
    try:
        build.process.wait(timeout=within + 30)
    except subprocess.TimeoutExpired:
        os.killpg(build.process.pid, signal.SIGKILL)
        raise
    seconds = time.monotonic() - since
    print(f"{build.home.name}: exit {build.process.returncode} after {seconds:.1f} s")
    assert build.process.returncode == code, build.stderr.read_text()[-3000:]
    assert seconds < within
    return seconds


def _stopped_in_order(build: Build, name: str, code: int, within: float, since: float) -> None:
    """Exit code, time, the one line, no retry noise against a dead server, nothing left."""
    _exits(build, code, within, since)
    text = build.stderr.read_text()
    assert MESSAGE.findall(text) == [name], text[-3000:]
    assert "Unable to connect" not in text and "Traceback" not in text, text[-3000:]
    assert build.gone_within(10) == []


@pytest.mark.slow
def test_ctrl_c_sigterm_and_sigkill_stop_a_build_cleanly_and_the_next_run_completes(
    tmp_path, astronaut
):
    """One dataset, stopped five ways in turn, then finished by a sixth run:

    Ctrl-C while the Prefect server starts; Ctrl-C, SIGTERM, Ctrl-C twice and SIGKILL (pid
    only) each once a new shard is committed.  Every signal ends the build within 15 s (a
    second Ctrl-C within 3 s) with 130/143 and one line; no process of the build is left; no
    committed row is lost or doubled.
    """
    from matteforge.demo import prepare_demo_data

    _, backgrounds = prepare_demo_data(tmp_path / "data")
    inputs = _portraits(tmp_path / "portraits", astronaut)
    out = tmp_path / "out"
    config = light_config(tmp_path)  # signals stop the machinery; the recipe is not the subject
    command = [sys.executable, "-m", "matteforge.cli", "build", "--config", str(config),
               "--input", str(tmp_path / "portraits"), "--backgrounds", str(backgrounds),
               "--output", str(out), "--workers", "1", "--shard-size", "1"]

    build = _start(tmp_path, command, "ctrl-c-at-startup")
    _when(build, build.server_started)
    sent = time.monotonic()
    os.killpg(build.process.pid, signal.SIGINT)
    _stopped_in_order(build, "SIGINT", 130, STOP_SECONDS, sent)
    assert _committed(out) == 0

    for name, signum, target in (("ctrl-c", signal.SIGINT, os.killpg),
                                 ("sigterm", signal.SIGTERM, os.kill)):
        before = _committed(out)
        build = _start(tmp_path, command, name)
        _when(build, lambda n=before: _committed(out) > n)
        sent = time.monotonic()
        target(build.process.pid, signum)
        _stopped_in_order(build, signum.name, 128 + signum, STOP_SECONDS, sent)

    before = _committed(out)
    build = _start(tmp_path, command, "ctrl-c-twice")
    _when(build, lambda: _committed(out) > before)
    sent = time.monotonic()
    os.killpg(build.process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(build.process.pid, signal.SIGINT)
    _exits(build, 130, AT_ONCE_SECONDS, sent)
    assert "stopped at once" in build.stderr.read_text()
    assert build.gone_within(10) == []

    before = _committed(out)
    build = _start(tmp_path, command, "sigkill")
    _when(build, lambda: _committed(out) > before)
    build.process.kill()  # the pid alone: its server and workers must go by themselves
    assert build.process.wait(timeout=60) == -signal.SIGKILL
    assert build.gone_within(20) == []
    samples = pd.read_parquet(out / "manifest/samples")
    assert len(samples) >= 4 and samples["source_uri"].is_unique  # nothing lost or doubled

    final = _start(tmp_path, command, "final")
    assert final.process.wait(timeout=900) == 0, final.stderr.read_text()[-3000:]
    assert final.gone_within(10) == []
    report = verify_dataset(str(out))
    assert report.ok, report.problems
    samples = pd.read_parquet(out / "manifest/samples")
    assert sorted(samples["source_uri"]) == sorted(str(p) for p in inputs)  # each exactly once


def _script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    """A Python process running ``body``, in its own session, stdout piped."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _live(lambda p, pgid, environ: p == pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _live(lambda p, pgid, environ: p == pid)


def test_an_owned_child_runs_in_its_own_session_and_dies_with_its_parent(tmp_path):
    parent = _script(tmp_path, """
        import subprocess, time
        from matteforge.interrupt import owned_child
        child = subprocess.Popen(["sleep", "60"], **owned_child())
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert os.getsid(child) == child != os.getsid(parent.pid)  # Ctrl-C does not reach it
    parent.kill()
    parent.wait()
    assert _gone_within(child, 2)  # the parent-death signal, not the watchdog (none here)


def test_the_watchdog_sweeps_what_a_sigkilled_build_started(tmp_path):
    """A plain child (no parent-death signal, no pipe of its own to watch) is still swept."""
    parent = _script(tmp_path, """
        import subprocess, time
        from matteforge.interrupt import stoppable
        with stoppable():
            child = subprocess.Popen(["sleep", "60"])
            print(child.pid, flush=True)
            time.sleep(60)
    """)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert _gone_within(child, 5)


def test_a_shutdown_that_hangs_is_cut_at_the_deadline(tmp_path):
    parent = _script(tmp_path, """
        import subprocess, time
        from matteforge import interrupt
        interrupt.SHUTDOWN_SECONDS = 1.0
        with interrupt.stoppable():
            child = subprocess.Popen(["sleep", "60"])
            told = False
            while True:
                try:  # the pid is printed inside: the signal it invites is always caught
                    if not told:
                        told = True
                        print(child.pid, flush=True)
                    time.sleep(60)
                except KeyboardInterrupt:  # a shutdown that never ends
                    pass
    """)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    sent = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=10)
    assert parent.returncode == 143 and time.monotonic() - sent < 5
    assert MESSAGE.findall(stderr) == ["SIGTERM"] and "took over 1 s, killed" in stderr
    assert _gone_within(child, 5)


def test_a_build_that_ends_normally_restores_handlers_and_environment_and_reaps_its_watchdog(
    tmp_path,
):
    """What a caller in the same process (a test, a notebook) gets back after a build."""
    parent = _script(tmp_path, """
        import os, signal
        from matteforge.interrupt import TOKEN_VAR, stoppable
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with stoppable():
            assert TOKEN_VAR in os.environ
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        assert TOKEN_VAR not in os.environ
        stats = [f"/proc/{p}/stat" for p in os.listdir("/proc") if p.isdigit()]
        children = []
        for stat in stats:
            try:
                ppid = open(stat).read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            children += [stat] if int(ppid) == os.getpid() else []
        print(children)
    """)
    stdout, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 0, stderr
    assert stdout.strip() == "[]"  # the watchdog stood down and was reaped, no zombie


def test_a_signal_ignored_from_the_start_stays_ignored(tmp_path):
    """``matteforge build ... &`` from a script: the shell's Ctrl-C is not for it."""
    parent = _script(tmp_path, """
        import os, signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from matteforge.interrupt import stoppable
        with stoppable():
            os.kill(os.getpid(), signal.SIGINT)
            print("still running", flush=True)
    """)
    stdout, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 0 and stdout == "still running\n", stderr


def test_a_worker_heartbeat_lost_to_a_closed_scheduler_is_one_line_without_a_traceback():
    """Seen on a loaded machine after Ctrl-C: the scheduler closed while a busy worker was
    sending its heartbeat, and Dask's 20-line traceback landed on the build's stderr."""
    import inspect
    import io
    import logging

    import distributed.worker
    from distributed.comm.core import CommClosedError

    from matteforge.interrupt import HeartbeatLossInOneLine, dask_setup

    assert HeartbeatLossInOneLine.PREFIX in inspect.getsource(distributed.worker.Worker.heartbeat)
    logger = logging.getLogger("distributed.worker")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        dask_setup(object())
        dask_setup(object())  # a second preload run adds no second filter
        assert sum(isinstance(f, HeartbeatLossInOneLine) for f in logger.filters) == 1
        try:
            raise CommClosedError("in <TCP (closed) heartbeat_worker>: Stream is closed")
        except OSError:
            logger.exception("Failed to communicate with scheduler during heartbeat.")
        try:
            raise ValueError("not a heartbeat")
        except ValueError:
            logger.exception("Something else")
    finally:
        logger.removeHandler(handler)
        for f in [f for f in logger.filters if isinstance(f, HeartbeatLossInOneLine)]:
            logger.removeFilter(f)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    first, *rest = stream.getvalue().splitlines()
    assert first == ("Failed to communicate with scheduler during heartbeat. (CommClosedError: "
                     "in <TCP (closed) heartbeat_worker>: Stream is closed)")
    assert rest[0] == "Something else" and rest[1] == "Traceback (most recent call last):"
