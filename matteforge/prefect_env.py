"""Prefect's local mode, shared by the flow process and its Dask workers.

Without an API URL Prefect starts a temporary server *per process*: every LocalCluster worker
would boot its own (measured here: ~6 s each, and the flow's runs split across databases).
Starting one temporary server up front and exporting its URL before the cluster exists makes
the workers inherit it, so the whole build reports to one place.

The server is this build's own helper process (see :mod:`matteforge.interrupt`): started in its
own session, so a terminal's Ctrl-C does not kill it while the flow still reports to it, and
tied to the thread that started it, so it does not outlive a killed build.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from matteforge.interrupt import owned_child

MIN_STARTUP_SECONDS = 120


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or run one temporary local server for this build."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = _server_class()()
    try:
        server.start(timeout=_startup_timeout())
        with _exported(server.api_url):
            yield server.api_url
    finally:  # also when Ctrl-C lands during startup: the server is running by then
        _flush_prefect_logs()
        server.stop()


@contextmanager
def _exported(api_url: str) -> Iterator[None]:
    """The API URL in this process's settings and in the environment children inherit."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@functools.cache
def _server_class() -> type:
    """Prefect's temporary server, its process started with :func:`owned_child`'s options.

    Prefect builds the command and its environment (they change between releases); only the
    Popen options are ours, added by showing Prefect's module a ``subprocess`` whose Popen
    takes them, for the one call.  Its own instance registry, too: Prefect hands out one
    server per port, and ``None`` (any port) would be shared with plain servers.
    """
    from prefect.server.api import server as prefect_server

    class OwnedServer(prefect_server.SubprocessASGIServer):
        _instances: dict[int | None, Any] = {}  # noqa: RUF012 (Prefect's own registry)

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            real = prefect_server.subprocess
            prefect_server.subprocess = _SubprocessWith(owned_child())  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real

    return OwnedServer


class _SubprocessWith:
    """The ``subprocess`` module, with extra keyword arguments for every Popen."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(*args, **{**kwargs, **self._options})


def _startup_timeout() -> int:
    """Prefect's startup wait, at least ``MIN_STARTUP_SECONDS``.

    Prefect's default (20 s, counted in sleep steps) ran out on a loaded 2-core machine while
    the server's database migrations were still running, failing a build that would have worked.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(MIN_STARTUP_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _flush_prefect_logs() -> None:
    """Send buffered run logs and events before the server they go to stops.

    Otherwise the senders retry against a dead server at interpreter exit (measured: ~80 s).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # best effort: losing a log line must not fail a build
            continue
