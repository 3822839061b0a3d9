"""How a build's progress events (:mod:`matteforge.steps.progress`) look on the command line.

* a terminal: a live bar (rich, which Prefect already brings): images done / to do, rate, ETA,
  and the counts by status;
* not a terminal (CI logs, ``| tee``): plain lines: the plan, then the flow's line per shard;
* ``--log-format json``: one JSON object per event on stdout, for log shippers.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO


def reporter(log_format: str, stream: TextIO | None = None) -> Any:
    """The listener for this run: JSON lines, a live bar on a terminal, or plain lines."""
    if log_format == "json":
        return JsonLines(sys.stdout)
    stream = stream or sys.stderr
    return Bar(stream) if stream.isatty() else Lines(stream)


def _counts(counts: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"


class JsonLines:
    """One JSON object per event: ``{"event": ..., "time": ..., ...}``."""

    def close(self) -> None:
        return None

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        record = {"event": event, "time": datetime.now(UTC).isoformat(timespec="seconds"),
                  **data}
        self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self.stream.flush()


class Lines:
    """Plain lines: the plan, at once; the flow's own log line per shard (images, rate, ETA,
    counts) follows, so the shard events add nothing here."""

    def close(self) -> None:
        return None

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "plan" and data == getattr(self, "last_plan", None):
            return  # the CLI's plan, then the flow's: the same answer once
        if event == "plan":
            self.last_plan = data
            line = (f"plan: {data['inputs']} input(s), {data['todo']} to process, "
                    f"{data['skipped']} already done")
        else:
            return
        print(f"matteforge: {line}", file=self.stream, flush=True)


class Bar:
    """A live rich progress bar on the terminal, closed when the build is done."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=stream)
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        if event == "plan" and (self.progress is not None
                                or data == getattr(self, "last_plan", None)):
            return  # the CLI's plan, then the flow's: one bar
        if event == "plan":
            self.last_plan = data
            self.console.print(f"plan: {data['inputs']} input(s), {data['todo']} to process, "
                               f"{data['skipped']} already done", highlight=False)
            if not data["todo"]:
                return
            self.progress = Progress(
                TextColumn("images"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"), console=self.console, transient=False)
            self.task = self.progress.add_task("images", total=data["todo"], rate="",
                                               counts="")
            self.started = time.monotonic()
            self.progress.start()
        elif event == "shard" and self.progress is not None:
            rate = data["images"] / max(time.monotonic() - self.started, 1e-9)
            self.progress.update(self.task, completed=data["images"],
                                 rate=f"{rate:.2f} img/s", counts=_counts(data["counts"]))
        elif event == "done":
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
