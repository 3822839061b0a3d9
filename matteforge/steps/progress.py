"""Build progress as events, for whoever runs the flow in this process to show.

The flow's own log lines reach Prefect (and its UI); a person at a terminal wants a live bar and
a log shipper one JSON object per event.  Both come from the same events: the flow calls
:func:`emit`, and the CLI, which runs the flow in its own process, listens
(:func:`listening`).  A deployment run has no listener, and an event costs nothing.

Events: ``plan`` (inputs, todo, skipped), ``shard`` (shards_done, shards, images,
images_total, counts), ``done`` (the summary).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def emit(event: str, **data: Any) -> None:
    """Tell every listener; a listener that fails never fails the build."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event, data)
        except Exception:  # a broken terminal must not stop a build
            continue


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
