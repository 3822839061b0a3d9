"""Ctrl-C and SIGTERM stop a build in order, and none of a build's processes outlives it.

A build is several processes: the CLI, its temporary Prefect server, the Dask workers and
multiprocessing's resource tracker.  Two things went wrong without this module:

* The CLI killed with SIGKILL (its pid alone) left the server running, every time; Dask's
  workers and the resource tracker exit on their own (they watch a pipe to their parent).
* Ctrl-C reached the whole foreground process group, the server included: with the server
  gone first, the flow's shutdown retried against it, printed a traceback and hung, deaf to a
  second Ctrl-C and to SIGTERM.

:func:`stoppable` wraps a build.  Every process started inside it carries a token in its
environment, and a watchdog process sweeps every carrier away once the CLI is gone, however it
went.  The first SIGINT or SIGTERM raises ``KeyboardInterrupt`` in the main thread, so the
build unwinds as code normally does (Prefect marks the runs crashed, Dask closes, then the
server stops) and arms a deadline that ends a stuck unwinding; a second signal ends it at once.
Either way one line goes to stderr and the exit code is 128 + the signal's number (130, 143).
Nothing committed is lost: shards commit atomically, and the next incremental run redoes the
uncommitted ones.

:func:`owned_child` gives the Popen options for a helper the build starts itself (the server):
its own session, so a terminal's Ctrl-C reaches only the CLI, which stops it in order; and on
Linux the parent-death signal, so it dies with the thread that started it even without the
watchdog.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

TOKEN_VAR = "MATTEFORGE_BUILD_TOKEN"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The orderly stop of a 1-worker build mid-shard took 6 s (measured on a loaded 2-core machine:
# 4 s of it Dask's nanny waiting for the busy worker, then Prefect marking the runs crashed and
# the server stopping); past this the processes are killed instead, so the CLI still exits
# within the 15 s a user is promised.
SHUTDOWN_SECONDS = 12.0
# How often the watchdog checks its parent, and how long a swept process gets between SIGTERM
# and SIGKILL (the resource tracker needs a moment to unlink the semaphores it tracks).
WATCH_SECONDS = 0.2
GRACE_SECONDS = 3.0
_PR_SET_PDEATHSIG = 1
_RESUME = "the shards committed so far are kept, run the same command again to resume"


@contextmanager
def stoppable() -> Iterator[None]:
    """Run a build so a signal stops it in order and no process it starts outlives it.

    Raises ``SystemExit(128 + signal)`` after the first SIGINT/SIGTERM, once the block has
    unwound.  Signal handlers need the main thread; elsewhere only the watchdog is armed.
    """
    previous = os.environ.get(TOKEN_VAR)
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token  # every process started from here on inherits it
    watchdog = _start_watchdog()
    stop = _Stop()
    handlers = stop.install()
    try:
        with _workers_leave_ctrl_c_to_us():
            yield
    except BaseException:
        if stop.signum is None:
            raise
    finally:
        _restore_env(TOKEN_VAR, previous)
        if stop.signum is None:  # the block closed what it started: the process may go on
            _restore_handlers(handlers)
            _stand_down(watchdog)
    if stop.signum is not None:  # the watchdog stays, to sweep whatever survives the exit
        _flush_stdio()
        stop.announce("stopped")
        atexit.register(_skip_teardown, stop.exit_code)
        raise SystemExit(stop.exit_code)


class _Stop:
    """The first signal's number, and the deadline it armed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._announced = False

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def install(self) -> dict[int, Any]:
        """Our handler for SIGINT and SIGTERM; returns the ones replaced (none off-main).

        A signal ignored from the start stays ignored: a shell runs ``build &`` with SIGINT
        ignored, so that a Ctrl-C meant for the foreground leaves the background build alone.
        """
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {int(s): signal.signal(s, self._on_signal) for s in SIGNALS
                if signal.getsignal(s) is not signal.SIG_IGN}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.exit_now("stopped at once on the second signal")
        self.signum = signum
        deadline = threading.Timer(SHUTDOWN_SECONDS, self.exit_now,
                                   (f"shutdown took over {SHUTDOWN_SECONDS:g} s, killed",))
        deadline.daemon = True  # it must not keep a process that exited in order alive
        deadline.start()
        raise KeyboardInterrupt

    def exit_now(self, how: str) -> None:
        """Exit without unwinding; the watchdog sweeps the processes left behind."""
        self.announce(how)
        os._exit(self.exit_code)

    def announce(self, how: str) -> None:
        """The one line a user sees, once; written past the lock of ``sys.stderr``, which the
        main thread may hold (stuck on a full pipe, or interrupted mid-write by the handler)."""
        if self._announced:
            return
        self._announced = True
        name = signal.Signals(self.signum).name if self.signum else "signal"
        os.write(2, f"matteforge: interrupted by {name}: {how}; {_RESUME}\n".encode())


def _skip_teardown(code: int) -> None:
    """End an interrupted process before the interpreter tears its modules down.

    Registered last, this runs first among the exit handlers, after the non-daemon threads
    are joined (the deadline still runs meanwhile).  The build already stopped its server and
    flushed its logs; what is left is freeing torch's and Prefect's modules one by one
    (measured: 3-4 s on a loaded 2-core machine), during which no deadline can fire.
    """
    _flush_stdio()
    os._exit(code)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a broken pipe: nothing to save
            stream.flush()


def _restore_handlers(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextmanager
def _workers_leave_ctrl_c_to_us() -> Iterator[None]:
    """Dask workers started inside ignore SIGINT; the CLI closes them in order instead.

    A terminal's Ctrl-C reaches the workers too, and an idle one died of it with a traceback
    on the build's stderr.  This module is their preload (:func:`dask_setup`); a LocalCluster's
    workers take the config of the process that starts them.  A Ctrl-C while a worker is still
    starting (before its preload runs) can still end that worker: it is simply lost.
    """
    try:
        import dask.config
    except ImportError:  # no Dask here: no workers to tell
        yield
        return
    preload = dask.config.get("distributed.worker.preload", default=[])
    preload = [preload] if isinstance(preload, str) else list(preload)
    argv = list(dask.config.get("distributed.worker.preload-argv", default=[]))
    if argv and isinstance(argv[0], list):  # one list per preload: ours takes none
        argv.append([])
    with dask.config.set({"distributed.worker.preload": [*preload, "matteforge.interrupt"],
                          "distributed.worker.preload-argv": argv}):
        yield


def dask_setup(worker: object) -> None:
    """Dask's preload hook, run in a worker's main thread as it starts: ignore SIGINT, and
    report a heartbeat lost to a closed scheduler in one line."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    heartbeat = logging.getLogger("distributed.worker")
    if not any(isinstance(f, HeartbeatLossInOneLine) for f in heartbeat.filters):
        heartbeat.addFilter(HeartbeatLossInOneLine())


class HeartbeatLossInOneLine(logging.Filter):
    """A worker's failed heartbeat, as one line with the error instead of a traceback.

    When a build stops, the cluster closes its scheduler while a busy worker may still be
    sending a heartbeat (seen on a loaded machine); Dask then logs the closed connection with
    a 20-line traceback through tornado, on the build's stderr after the user's Ctrl-C.  The
    line and the error's text say all there is to say, here and when a scheduler is really lost.
    """

    PREFIX = "Failed to communicate with scheduler during heartbeat"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None \
                and str(record.msg).startswith(self.PREFIX):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def owned_child() -> dict[str, Any]:
    """Popen options for a helper process the build owns: own session, parent-death signal.

    The parent-death signal fires when the *thread* that started the child ends, so start it
    from the thread that waits for it (the CLI's main thread runs the whole build).
    """
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent()
    return options


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux for SIGKILL when the parent thread ends.

    libc is looked up here, before the fork: the child may only make the call, since another
    thread of the parent may have held the loader's lock at the moment of the fork.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # it died before the request: no signal would come
            os._exit(1)

    return arm


def _start_watchdog() -> subprocess.Popen[bytes] | None:
    """A process that sweeps this build's processes away once this one is gone.

    Its own session keeps a terminal's Ctrl-C (and a kill of the CLI's group) off it.
    """
    if not os.path.isdir("/proc"):
        return None
    command = [sys.executable, "-m", "matteforge.interrupt", str(os.getpid())]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)


def _stand_down(watchdog: subprocess.Popen[bytes] | None) -> None:
    """Tell the watchdog the build ended in order (a byte, not EOF), and reap it."""
    if watchdog is None or watchdog.stdin is None:
        return
    with contextlib.suppress(OSError):
        watchdog.stdin.write(b".")
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def carriers(token: str) -> list[int]:
    """Live processes (this one aside) whose environment holds ``token``.

    A zombie's environment reads empty, so the dead are not counted.
    """
    needle = f"\0{TOKEN_VAR}={token}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                environ = b"\0" + fh.read()
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in environ:
            found.append(int(name))
    return found


def sweep(token: str, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every carrier of ``token``, then SIGKILL those still there after ``grace``."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        for pid in carriers(token):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while carriers(token) and time.monotonic() < deadline:
            time.sleep(0.1)


def _watch(parent: int, token: str) -> None:
    """Wait for the parent to stand us down (a byte) or to go (EOF, or a new parent)."""
    fd = sys.stdin.fileno()
    while os.getppid() == parent:
        readable, _, _ = select.select([fd], [], [], WATCH_SECONDS)
        if readable:
            if os.read(fd, 1):
                return
            break
    sweep(token)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only its parent's end ends it
    _watch(int(sys.argv[1]), os.environ[TOKEN_VAR])
