"""One build at a time per output: an exclusive lock file, ``<root>/.matteforge.lock``.

Two builds writing one output would interleave shards, overwrite each other's manifests and
each discard the other's "uncommitted" files, so a build takes this lock before it writes.  The
file holds JSON: ``owner``, ``host``, ``pid``, ``started``, ``heartbeat`` (UTC ISO 8601) and a
random ``token`` that tells our lock from another build's that took its place.

How the lock is created, per kind of storage:

* local disks: ``os.open(O_CREAT | O_EXCL)``, which only one process can win;
* S3 (``s3://``, ``s3a://``): a PutObject with ``If-None-Match: *`` (``pipe_file`` passes
  ``IfNoneMatch="*"`` through to botocore); the store refuses a second one with 412, which s3fs
  raises as ``FileExistsError``.  Checked against moto's server in tests/test_lock.py;
* any other filesystem (gs, az, memory ...): ``pipe_file(mode="create")`` too, after an explicit
  existence check.  gcsfs and adlfs implement that mode as a conditional write in recent
  releases (not tested here); elsewhere it is only the check, so two builds starting in the same
  instant can both get in.  Each reads the file back and keeps the lock only if its token is
  there, and the one overwritten finds out at its next heartbeat (``LockInfo.lost``).

While held, a daemon thread rewrites ``heartbeat`` every ``heartbeat`` seconds.  A lock is stale,
and is taken over, when its heartbeat is older than ``stale_after`` (a build killed hard, a
machine gone), or at once when it names a process on this machine (host name and pid namespace)
that no longer exists; on object stores the holder may be any machine, so only the heartbeat
counts there.  Lock files that do not
parse go stale by modification time.  Heartbeats compare clocks of different machines, so
``stale_after`` must stay well above any clock skew between them.

Taking over: on local disks the remover claims the stale file with a hard link named after its
bytes before unlinking it, so of several builds racing for one stale lock exactly one gets in
(a plain rename aside would let a slow racer move the winner's fresh lock away; see
``_LocalLockFile.remove``).  On S3 the delete is conditional on the stale object's ETag
(``If-Match``), which moto honours; a store that ignores it makes that delete unconditional.

Races that remain, all needing a holder that was already stale (stalled past ``stale_after``):
a heartbeat reads "still ours" and then rewrites the file (on object stores an unconditional
PUT), so it can overwrite a lock taken over in between, or be removed by the taker just after
it wrote.  Either way one of the two builds finds another token at its next heartbeat and sets
``LockInfo.lost``; the flow should stop writing when it sees that.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from matteforge.dataset.retry import with_retries
from matteforge.dataset.storage import Location, _protocols, is_local, redact_uri

log = logging.getLogger(__name__)

LOCK_NAME = ".matteforge.lock"
# Stores whose PutObject honours ``If-None-Match: *`` (a real conditional create).
_CONDITIONAL_CREATE = frozenset({"s3", "s3a"})
# Attempts at create-or-take-over before giving up: each lost race costs one.
_ROUNDS = 20
# A lock file that does not parse yet may be one created an instant ago and not yet written:
# re-read it this many times, this far apart, before judging it.
_PARTIAL_READS, _PARTIAL_WAIT = 10, 0.05
# A takeover claim (see _LocalLockFile.remove) lives milliseconds; one this old lost its taker.
_CLAIM_TIMEOUT = 10.0


class OutputLocked(RuntimeError):
    """Another build holds the output's lock; ``holder`` is what its lock file says."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


@dataclass
class LockInfo:
    """The lock this build holds.

    ``took_over`` is the stale holder's record (plus ``reason``) when we replaced one, else None.
    ``lost`` turns True when a heartbeat finds another build's token in the file: the flow should
    then stop writing, since that build believes the output is its own.
    """

    path: str
    record: dict[str, Any]
    took_over: dict[str, Any] | None = None
    lost: bool = False

    @property
    def token(self) -> str:
        return self.record["token"]


@dataclass(frozen=True)
class _Holder:
    """A lock file as read: its bytes, its record (None when unreadable), age hints, ETag."""

    raw: bytes
    record: dict[str, Any] | None
    modified: datetime | None = None
    etag: str | None = None

    @property
    def token(self) -> str | None:
        return self.record.get("token") if self.record else None


class _LockFile(Protocol):
    """One lock file on one kind of storage; see the module docstring for each."""

    check_pids: bool

    def create(self, data: bytes) -> bool: ...
    def read(self) -> _Holder | None: ...
    def remove(self, holder: _Holder) -> bool: ...
    def rewrite(self, token: str, data: bytes) -> bool: ...


@contextmanager
def output_lock(
    loc: Location, *, stale_after: float = 120.0, heartbeat: float = 15.0
) -> Iterator[LockInfo]:
    """Hold ``<loc.root>/.matteforge.lock`` for the with-block, or raise :class:`OutputLocked`.

    A stale lock (see the module docstring) is taken over and logged; the yielded
    :class:`LockInfo` says so.  The lock is removed on exit, exception or not, unless another
    build has taken it over meanwhile.
    """
    if not 0 < heartbeat < stale_after:
        raise ValueError(f"heartbeat ({heartbeat} s) must be positive and below stale_after "
                         f"({stale_after} s), or a live build would look stale between beats")
    path = loc.path(LOCK_NAME)
    store = _lock_file(loc, path)
    record = _new_record()
    info = LockInfo(path=path, record=record,
                    took_over=_acquire(loc, store, record, stale_after))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(store, info, heartbeat, stop),
                            name="matteforge-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield info
    finally:
        stop.set()
        beat.join()  # no heartbeat may land after the release below and recreate the file
        _release(loc, store, info, stale_after)


def _lock_file(loc: Location, path: str) -> _LockFile:
    if is_local(loc):
        loc.fs.makedirs(loc.root, exist_ok=True)
        return _LocalLockFile(path)
    return _ObjectLockFile(loc, path, conditional=bool(_protocols(loc) & _CONDITIONAL_CREATE))


def _acquire(
    loc: Location, store: _LockFile, record: dict[str, Any], stale_after: float
) -> dict[str, Any] | None:
    """Create the lock, or take over a stale one; returns what was taken over.

    After each create attempt the file is read back: it holds our token only if we won (on
    stores without a conditional create a racer may have overwritten ours, and on S3 a create
    whose answer was lost shows up here as a 412 over our own object).
    """
    data, took_over = _encode(record), None
    for _ in range(_ROUNDS):
        store.create(data)
        holder = store.read()
        if holder is None:  # released between our create and our read: try again
            continue
        if holder.token == record["token"]:
            return took_over
        reason = _stale_reason(holder, stale_after, _now(), check_pids=store.check_pids)
        if reason is None:
            raise _refusal(loc, holder, stale_after)
        if store.remove(holder):
            took_over = {**(holder.record or {}), "reason": reason}
            log.warning("output %s: took over a stale lock (%s): %s", redact_uri(loc.uri),
                        reason, json.dumps(holder.record))
    raise OutputLocked(f"output {redact_uri(loc.uri)}: the lock changed hands {_ROUNDS} times "
                       "while this build tried to take it; try again")


def _heartbeat_loop(
    store: _LockFile, info: LockInfo, interval: float, stop: threading.Event
) -> None:
    """Rewrite our heartbeat every ``interval`` s until stopped or until the lock is not ours."""
    while not stop.wait(interval):
        record = {**info.record, "heartbeat": _iso(_now())}
        try:
            ours = store.rewrite(info.token, _encode(record))
        except OSError as exc:  # a storage hiccup: the next beat tries again
            log.warning("lock %s: heartbeat failed: %s", info.path, exc)
            continue
        if not ours:
            info.lost = True
            log.error("lock %s was taken over by another build: this build no longer holds its "
                      "output", info.path)
            return
        info.record = record


def _release(loc: Location, store: _LockFile, info: LockInfo, stale_after: float) -> None:
    """Remove the lock if it still holds our token; a failure only delays the next build."""
    try:
        holder = store.read()
        if holder is not None and holder.token == info.token:
            store.remove(holder)
    except OSError as exc:
        log.warning("output %s: could not remove the lock (%s); it goes stale after %g s",
                    redact_uri(loc.uri), exc, stale_after)


class _LocalLockFile:
    """A lock file on a local (or POSIX network) disk: O_EXCL create, claimed takeover."""

    check_pids = True

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            os.unlink(self.path)  # an empty lock would refuse every build until it went stale
            raise
        return True

    def read(self) -> _Holder | None:
        for _ in range(_PARTIAL_READS):
            try:
                raw = Path(self.path).read_bytes()
                modified = datetime.fromtimestamp(os.stat(self.path).st_mtime, UTC)
            except FileNotFoundError:
                return None
            holder = _Holder(raw, _parse(raw), modified)
            if holder.record is not None or _age(modified, _now()) > 1.0:
                return holder
            time.sleep(_PARTIAL_WAIT)
        return holder

    def remove(self, holder: _Holder) -> bool:
        """Remove exactly ``holder``'s file, with other builds racing to take it over too.

        Renaming the stale file aside is not enough: a racer slower to rename would move away
        the fresh lock the winner has just created, and leave the path free for a third build.
        So a remover first claims the holder with a hard link named after its bytes (``link``
        never overwrites, so one claim per holder exists at a time), checks that the claim
        holds the bytes it judged (else a newer lock is there: left alone), and only then
        unlinks the lock.
        """
        claim = f"{self.path}.stale-{hashlib.sha256(holder.raw).hexdigest()[:16]}"
        try:
            os.link(self.path, claim)
        except FileNotFoundError:
            return False
        except FileExistsError:
            self._drop_dead_claim(claim)
            return False
        except OSError:  # no hard links on this filesystem (some FUSE or SMB mounts)
            return self._remove_unclaimed(holder)
        try:
            if Path(claim).read_bytes() != holder.raw:
                return False
            Path(self.path).unlink(missing_ok=True)
            return True
        finally:
            Path(claim).unlink(missing_ok=True)

    def _drop_dead_claim(self, claim: str) -> None:
        """A claim lives milliseconds; one older than ``_CLAIM_TIMEOUT`` lost its remover."""
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(claim).st_ctime > _CLAIM_TIMEOUT:  # link() sets ctime
                log.warning("lock %s: removing %s, left by a build that died taking it over",
                            self.path, claim)
                os.unlink(claim)
        time.sleep(_PARTIAL_WAIT)  # another build is taking it over: give it a moment

    def _remove_unclaimed(self, holder: _Holder) -> bool:
        """Without hard links: re-read, then unlink (two racers may both get in, rarely)."""
        current = self.read()
        if current is None or current.raw != holder.raw:
            return False
        Path(self.path).unlink(missing_ok=True)
        return True

    def rewrite(self, token: str, data: bytes) -> bool:
        current = self.read()
        if current is None or current.token != token:
            return False
        tmp = f"{self.path}.{token}.tmp"
        Path(tmp).write_bytes(data)
        os.replace(tmp, self.path)
        return True


class _ObjectLockFile:
    """A lock object: conditional create where the store has one (S3), best effort elsewhere."""

    check_pids = False

    def __init__(self, loc: Location, path: str, conditional: bool) -> None:
        self.loc, self.path, self.conditional = loc, path, conditional

    def create(self, data: bytes) -> bool:
        try:
            with_retries(lambda: self._put_new(data), self.loc.retry)
        except FileExistsError:  # S3 answered 412 PreconditionFailed, or the check found one
            return False
        return True

    def _put_new(self, data: bytes) -> None:
        if self.conditional:  # s3fs hands extra keywords to PutObject: the If-None-Match header
            self.loc.fs.pipe_file(self.path, data, IfNoneMatch="*")
            return
        if self.loc.fs.exists(self.path):
            raise FileExistsError(self.path)
        self.loc.fs.pipe_file(self.path, data, mode="create")

    def read(self) -> _Holder | None:
        return with_retries(self._read_once, self.loc.retry)

    def _read_once(self) -> _Holder | None:
        fs = self.loc.fs
        fs.invalidate_cache(self.path)
        try:  # the ETag first: a delete conditional on it then cannot remove a newer object
            etag = fs.info(self.path).get("ETag")
            raw = fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        record = _parse(raw)
        return _Holder(raw, record, None if record else self._modified(), etag)

    def _modified(self) -> datetime | None:
        with contextlib.suppress(NotImplementedError, OSError):
            stamp = self.loc.fs.modified(self.path)
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        return None

    def remove(self, holder: _Holder) -> bool:
        """Delete the lock object, on S3 only if it is still ``holder`` (``If-Match`` ETag)."""
        fs = self.loc.fs
        try:
            if self.conditional and holder.etag:
                bucket, key, _ = fs.split_path(self.path)
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=holder.etag)
            else:
                fs.rm_file(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _http_status(exc) == 412:  # PreconditionFailed: replaced since we read it
                return False
            raise
        finally:
            fs.invalidate_cache(self.path)
        return True

    def rewrite(self, token: str, data: bytes) -> bool:
        """Check the token, then overwrite unconditionally (the race: module docstring)."""
        current = self.read()
        if current is None or current.token != token:
            return False
        self.loc.fs.pipe_file(self.path, data)
        return True


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error s3fs translated (it keeps botocore's as the cause)."""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _stale_reason(
    holder: _Holder, stale_after: float, now: datetime, *, check_pids: bool
) -> str | None:
    """Why ``holder`` may be taken over, or None while it counts as alive."""
    record = holder.record
    if record is None:
        idle = _age(holder.modified, now) if holder.modified else None
        if idle is not None and idle > stale_after:
            return f"unreadable lock file unchanged for {idle:.0f} s"
        return None
    beat = _parse_time(record.get("heartbeat"))
    silent = _age(beat, now) if beat else None
    if silent is not None and silent > stale_after:
        return f"no heartbeat for {silent:.0f} s"
    if check_pids and _same_machine(record) and not _pid_alive(record.get("pid")):
        return f"process {record.get('pid')} on {record.get('host')} is gone"
    return None


def _refusal(loc: Location, holder: _Holder, stale_after: float) -> OutputLocked:
    now, record = _now(), holder.record
    if record is None:
        when = f"{_age(holder.modified, now):.0f} s ago" if holder.modified else "at some time"
        who = f"an unreadable lock file written {when}"
    else:
        beat = _parse_time(record.get("heartbeat"))
        ago = f"{_age(beat, now):.0f} s ago" if beat else "unknown"
        who = (f"a build of {record.get('owner', '?')}@{record.get('host', '?')} pid "
               f"{record.get('pid', '?')} started {record.get('started', '?')}, heartbeat {ago}")
    return OutputLocked(
        f"output {redact_uri(loc.uri)} is locked by {who}; if that build is gone the lock is "
        f"taken over after {stale_after:g} s without a heartbeat "
        f"(or delete {redact_uri(loc.url(loc.path(LOCK_NAME)))})", record)


def _new_record() -> dict[str, Any]:
    now = _now()
    return {"owner": _user(), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_namespace": _pid_namespace(), "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "heartbeat": _iso(now), "token": uuid.uuid4().hex}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _pid_namespace() -> str | None:
    """Which pids ours is comparable with: containers sharing a host name have their own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _same_machine(record: dict[str, Any]) -> bool:
    return (record.get("host") == socket.gethostname()
            and record.get("pid_namespace") == _pid_namespace())


def _pid_alive(pid: Any) -> bool:
    """False only when no such process exists; anything unclear counts as alive."""
    if not isinstance(pid, int) or pid <= 0:  # 0 and negatives name process groups in kill()
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1).encode() + b"\n"


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("token"), str) else None


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(moment: datetime, now: datetime) -> float:
    return (now - moment).total_seconds()

