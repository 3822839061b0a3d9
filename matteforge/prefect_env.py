"""Prefect's local mode, shared by the flow process and its Dask workers.

Without an API URL Prefect starts a temporary server *per process*: every LocalCluster worker
would boot its own (measured here: ~6 s each, and the flow's runs split across databases).
Starting one temporary server up front and exporting its URL before the cluster exists makes
the workers inherit it, so the whole build reports to one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

MIN_STARTUP_SECONDS = 120


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or run one temporary local server for this build."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=_startup_timeout())
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _flush_prefect_logs()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


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
