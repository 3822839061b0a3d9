"""Transient storage errors are retried with backoff; persistent ones end as rows or errors.

The faults come from a real fsspec filesystem (an in-memory one) that fails calls on purpose:
it is the fault, the code under test is everything above it.
"""

from __future__ import annotations

import errno
import io
from collections import Counter
from typing import Any, ClassVar

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from matteforge.config import load_config
from matteforge.dataset import manifest
from matteforge.dataset.retry import RetryPolicy, is_transient, with_retries
from matteforge.dataset.storage import WriteFailed, locate, read_bytes, write_bytes_atomic
from matteforge.steps.shard import BackgroundRef, ShardJob, run_shard
from matteforge.tasks.ingest import content_hash

NO_WAIT = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)


class FaultyFileSystem(MemoryFileSystem):
    """A memory filesystem whose opens and single-call reads/writes fail as configured.

    ``every_other``: every odd-numbered call fails once with a transient error, so each
    operation succeeds on its second attempt.  ``always``: calls whose path contains one of these
    strings always fail.  ``error`` is the exception class raised.  Calls are counted per kind.
    """

    protocol = ("faulty",)
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    every_other: ClassVar[bool] = False
    always: ClassVar[tuple[str, ...]] = ()
    error: ClassVar[type[OSError]] = ConnectionResetError
    calls: ClassVar[Counter[str]] = Counter()
    failures: ClassVar[Counter[str]] = Counter()

    @classmethod
    def reset(cls) -> None:
        """An empty store and no faults."""
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.inject()

    @classmethod
    def inject(cls, *, every_other: bool = False, always: tuple[str, ...] = (),
               error: type[OSError] = ConnectionResetError) -> None:
        """Faults from now on (the store is kept); the counters start again."""
        cls.every_other, cls.always, cls.error = every_other, always, error
        cls.calls.clear()
        cls.failures.clear()

    def _fault(self, kind: str, path: str) -> None:
        self.calls[kind] += 1
        n = sum(self.calls.values())
        if any(marker in path for marker in self.always) or (self.every_other and n % 2):
            self.failures[kind] += 1
            raise self.error(f"injected fault on {kind} {path}")

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self._fault("write" if "w" in mode else "read", path)
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        self._fault("write", path)
        super().pipe_file(path, value, *args, **kwargs)


fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)


@pytest.fixture
def faulty() -> type[FaultyFileSystem]:
    FaultyFileSystem.reset()
    yield FaultyFileSystem
    FaultyFileSystem.reset()


def test_backoff_doubles_from_the_first_wait_up_to_the_cap():
    assert RetryPolicy(attempts=6, backoff=0.5, max_backoff=3.0).delays() == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(attempts=1).delays() == []
    waits: list[float] = []
    calls = iter([TimeoutError("slow"), ConnectionResetError("reset"), "done"])

    def flaky() -> str:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    assert with_retries(flaky, RetryPolicy(3, 0.5, 8.0), sleep=waits.append) == "done"
    assert waits == [0.5, 1.0]


@pytest.mark.parametrize("error", [
    FileNotFoundError("x"), PermissionError("x"), IsADirectoryError("x"), ValueError("x"),
    OSError(errno.ELOOP, "Too many levels of symbolic links"), OSError(errno.ENOSPC, "full"),
])
def test_answers_are_not_retried(error):
    assert not is_transient(error)
    assert is_transient(OSError(errno.EIO, "I/O error")) and is_transient(TimeoutError())
    tries: list[int] = []

    def refuse() -> None:
        tries.append(1)
        raise error

    with pytest.raises(type(error)):
        with_retries(refuse, RetryPolicy(5, 0.0, 0.0), sleep=lambda _: None)
    assert tries == [1]


def test_reads_and_writes_survive_a_fault_on_every_first_attempt(faulty):
    loc = locate("faulty://ds", retry=NO_WAIT)
    faulty.inject(every_other=True)
    write_bytes_atomic(loc, loc.path("alpha/a.png"), b"alpha bytes")
    assert read_bytes(loc, loc.path("alpha/a.png")) == b"alpha bytes"
    assert faulty.failures == {"write": 1, "read": 1}  # each retried once
    assert faulty.calls == {"write": 2, "read": 2}
    assert [p for p in faulty.store if ".tmp-" in p] == []  # a failed attempt leaves nothing


def test_a_fault_that_persists_ends_after_the_configured_attempts(faulty):
    loc = locate("faulty://ds", retry=RetryPolicy(attempts=4, backoff=0.0, max_backoff=0.0))
    faulty.inject(always=("manifest/",), error=TimeoutError)
    with pytest.raises(WriteFailed, match="injected fault") as caught:
        manifest.write_table(loc, "samples", "shard-x.parquet", [{"sample_id": "x"}])
    assert isinstance(caught.value.__cause__, TimeoutError)  # named as the machine's failure
    assert faulty.calls["write"] == 4
    faulty.inject(always=("gone",), error=PermissionError)
    with pytest.raises(PermissionError):
        read_bytes(loc, loc.path("gone.png"))
    assert faulty.calls["read"] == 1


def _png(image: np.ndarray, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def _shard(faulty: type[FaultyFileSystem], astronaut: np.ndarray, coffee: np.ndarray,
           **faults: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One shard of two portraits and a background on the faulty store, run in-process.

    Returns the committed samples and composites rows.
    """
    faulty.reset()
    store = locate("faulty://")
    for i, side in enumerate((128, 160)):
        store.fs.pipe_file(f"/in/p{i}.png", _png(astronaut, side))
    bg = _png(coffee, 128)
    store.fs.pipe_file("/bg/coffee.png", bg)
    faulty.inject(**faults)
    cfg = load_config("demo", **{"run.io_backoff": 0.0})
    refs = [BackgroundRef(content_hash(bg)[:20], "/bg/coffee.png", "faulty://bg/coffee.png")]
    run_shard(ShardJob("s", ["/in/p0.png", "/in/p1.png"], cfg.model_dump(mode="json"),
                       "faulty://in", "faulty://bg", "faulty://out", refs))
    calls, failures = Counter(faulty.calls), Counter(faulty.failures)
    faulty.inject()
    out = locate("faulty://out")
    rows = (manifest.read_table(out, "samples").to_pylist(),
            manifest.read_table(out, "composites").to_pylist())
    faulty.calls, faulty.failures = calls, failures  # what the shard met, not these reads
    return rows


@pytest.mark.usefixtures("one_torch_thread")
def test_a_shard_completes_although_every_storage_call_fails_once(faulty, astronaut, coffee):
    samples, composites = _shard(faulty, astronaut, coffee, every_other=True)
    assert [r["status"] for r in samples] == ["ok", "ok"], [r["detail"] for r in samples]
    assert len(composites) == sum(r["n_composites"] for r in samples) > 0
    # inputs, background, 5 artifacts per sample, composites, 2 manifest files: each retried
    assert faulty.failures["read"] >= 3 and faulty.failures["write"] >= 2 * 5 + 2
    assert faulty.calls["write"] == 2 * faulty.failures["write"]
    out = locate("faulty://out")
    for row in samples:
        for kind in manifest.ARTIFACTS:
            assert content_hash(out.fs.cat_file(out.path(row[f"{kind}_uri"]))) == \
                row[f"{kind}_sha256"]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("where", "statuses", "reason", "faults"), [
    ("/alpha/", ["failed", "failed"], "write_error", 2 * 3),  # two samples, three tries each
    ("/in/p0.png", ["failed", "ok"], "read_error", 3),
])
def test_a_persistent_fault_costs_the_sample_a_failed_row(faulty, astronaut, coffee, where,
                                                          statuses, reason, faults):
    samples, composites = _shard(faulty, astronaut, coffee, always=(where,))
    assert [r["status"] for r in samples] == statuses
    failed = [r for r in samples if r["status"] == "failed"]
    assert {r["reason"] for r in failed} == {reason}
    assert all("injected fault" in r["detail"] for r in failed)
    assert len(composites) == sum(r["n_composites"] for r in samples)
    assert sum(faulty.failures.values()) == faults  # tried io_attempts times, then given up
