"""The output lock: one build per output, stale locks taken over, on local disks and on S3.

Second builds are real ones where it matters (a ``python -c`` subprocess, a process killed while
it holds the lock), and S3 is moto's server on loopback, reached through s3fs as a build does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from s3server import moto_endpoint

from matteforge.dataset import lock
from matteforge.dataset.lock import LOCK_NAME, OutputLocked, output_lock
from matteforge.dataset.storage import Location, locate

HOST = socket.gethostname()
# A process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD = """
import sys
from matteforge.dataset.lock import output_lock
from matteforge.dataset.storage import locate
with output_lock(locate(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""
# A process that tries to take the lock and prints what it was told.
TRY = """
import sys
from matteforge.dataset.lock import OutputLocked, output_lock
from matteforge.dataset.storage import locate
try:
    with output_lock(locate(sys.argv[1])):
        print("acquired")
except OutputLocked as exc:
    print(exc)
"""


def _record(**changes: object) -> dict[str, object]:
    """A lock record as another build would write it, with ``changes`` applied."""
    return {**lock._new_record(), "token": uuid.uuid4().hex, **changes}


def _refusal(loc: Location, **kwargs: float) -> OutputLocked:
    """What a second build is told when it tries to take ``loc``'s lock."""
    with pytest.raises(OutputLocked) as refused, output_lock(loc, **kwargs):
        pass
    return refused.value


def _ago(seconds: float) -> str:
    return lock._iso(datetime.now(UTC) - timedelta(seconds=seconds))


def _read(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def _hold_in_child(output: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_acquire_in_this_process_is_refused_naming_the_holder(tmp_path):
    loc = locate(str(tmp_path / "out"))
    with output_lock(loc) as held:
        assert held.took_over is None and held.record["pid"] == os.getpid()
        with pytest.raises(OutputLocked) as refused, output_lock(loc):
            pass
    message = str(refused.value)
    assert f"@{HOST} pid {os.getpid()} started " in message
    assert "heartbeat 0 s ago" in message and "\n" not in message
    assert f"after 120 s without a heartbeat (or delete {loc.root}/{LOCK_NAME})" in message
    assert refused.value.holder["token"] == held.token


def test_a_second_process_is_refused_while_this_one_holds_the_lock(tmp_path):
    with output_lock(locate(str(tmp_path))):
        proc = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"is locked by a build of {lock._user()}@{HOST} pid {os.getpid()} " in proc.stdout


def test_this_process_is_refused_while_a_second_process_holds_the_lock(tmp_path):
    child = _hold_in_child(tmp_path)
    try:
        assert f"@{HOST} pid {child.pid} started" in str(_refusal(locate(str(tmp_path))))
    finally:
        child.communicate("\n", timeout=60)
    assert not (tmp_path / LOCK_NAME).exists()  # the child released it on its way out


def test_the_lock_is_released_after_the_block_and_after_an_exception(tmp_path):
    loc = locate(str(tmp_path / "new" / "folder"))  # the root is made first
    with output_lock(loc):
        assert (tmp_path / "new" / "folder" / LOCK_NAME).exists()
    assert not (tmp_path / "new" / "folder" / LOCK_NAME).exists()
    with pytest.raises(ZeroDivisionError), output_lock(loc):
        _ = 1 / 0
    assert os.listdir(tmp_path / "new" / "folder") == []
    with output_lock(loc) as again:
        assert again.took_over is None


def test_a_lock_left_by_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path):
    child = _hold_in_child(tmp_path)
    child.kill()
    child.communicate(timeout=60)
    assert _read(tmp_path / LOCK_NAME)["pid"] == child.pid  # its heartbeat is seconds old
    with output_lock(locate(str(tmp_path))) as held:
        assert held.took_over["pid"] == child.pid
        assert held.took_over["reason"] == f"process {child.pid} on {HOST} is gone"
        assert _read(tmp_path / LOCK_NAME)["token"] == held.token
    assert not list(tmp_path.iterdir())  # nothing left of either lock


def test_a_lock_with_an_old_heartbeat_is_taken_over_and_a_fresh_one_is_not(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(_record(host="other-host", pid=1, heartbeat=_ago(5))))
    refused = _refusal(locate(str(tmp_path)), stale_after=60, heartbeat=1)
    assert re.search(r"other-host pid 1 .*heartbeat [56] s ago", str(refused))
    path.write_text(json.dumps(_record(host="other-host", pid=1, heartbeat=_ago(90))))
    with output_lock(locate(str(tmp_path)), stale_after=60, heartbeat=1) as held:
        assert held.took_over["host"] == "other-host"
        assert re.fullmatch(r"no heartbeat for 9[01] s", held.took_over["reason"])


def test_an_unreadable_lock_file_is_refused_until_it_is_old(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"{not json")
    refused = _refusal(locate(str(tmp_path)), stale_after=60, heartbeat=1)
    assert re.search(r"locked by an unreadable lock file written [01] s ago", str(refused))
    old = time.time() - 600
    os.utime(path, (old, old))
    with output_lock(locate(str(tmp_path)), stale_after=60, heartbeat=1) as held:
        assert re.fullmatch(r"unreadable lock file unchanged for 60[01] s",
                            held.took_over["reason"])


def test_the_heartbeat_advances_while_the_lock_is_held(tmp_path):
    with output_lock(locate(str(tmp_path)), stale_after=5, heartbeat=0.2) as held:
        first = _read(tmp_path / LOCK_NAME)
        time.sleep(0.7)
        later = _read(tmp_path / LOCK_NAME)
        assert later["token"] == first["token"] == held.token
        assert later["started"] == first["started"]
        assert later["heartbeat"] > first["heartbeat"]
        assert held.lost is False
    assert sorted(os.listdir(tmp_path)) == []  # no temporary file left beside it


def test_a_lock_whose_token_changed_is_left_alone_by_the_previous_holder(tmp_path):
    path = tmp_path / LOCK_NAME
    with output_lock(locate(str(tmp_path)), stale_after=5, heartbeat=0.1) as held:
        other = _record()
        path.write_text(json.dumps(other))  # another build took it over
        deadline = time.monotonic() + 10
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost
    assert _read(path) == other  # neither rewritten by a heartbeat nor removed on exit


def test_racers_for_one_stale_lock_let_exactly_one_in(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps(_record(host="gone", heartbeat=_ago(999))))
    start, outcomes = threading.Barrier(8), []
    stacks = [ExitStack() for _ in range(8)]

    def race(stack: ExitStack) -> None:
        start.wait()
        try:
            outcomes.append(stack.enter_context(output_lock(locate(str(tmp_path)))))
        except OutputLocked as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=race, args=(s,)) for s in stacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, lock.LockInfo)]
    assert len(outcomes) == 8 and len(winners) == 1
    assert _read(tmp_path / LOCK_NAME)["token"] == winners[0].token
    for stack in stacks:
        stack.close()
    assert not list(tmp_path.iterdir())


def test_a_claim_left_by_a_build_that_died_taking_over_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "_CLAIM_TIMEOUT", 0.2)
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(_record(host="gone", heartbeat=_ago(999))))
    claim = f"{path}.stale-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    os.link(path, claim)  # that build claimed the stale lock, then died before removing it
    time.sleep(0.3)
    with output_lock(locate(str(tmp_path))) as held:
        assert held.took_over["host"] == "gone"
    assert not list(tmp_path.iterdir())


def test_heartbeat_must_come_well_within_stale_after(tmp_path):
    with pytest.raises(ValueError, match="below stale_after"):
        output_lock(locate(str(tmp_path)), stale_after=10, heartbeat=10).__enter__()


def test_memory_filesystem_gets_the_best_effort_lock():
    loc = locate(f"memory://lock-test-{uuid.uuid4().hex}/out")
    with output_lock(loc, stale_after=5, heartbeat=0.1) as held:
        assert f"pid {os.getpid()} started" in str(_refusal(loc))
        first = json.loads(loc.fs.cat_file(held.path))["heartbeat"]
        time.sleep(0.4)
        assert json.loads(loc.fs.cat_file(held.path))["heartbeat"] > first
    assert not loc.fs.exists(held.path)


# --- S3: moto's server on loopback (started as in tests/test_s3.py) ---------------------------

BUCKET = "mf-lock"


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, object]]:
    with moto_endpoint() as endpoint:
        options = {"endpoint_url": endpoint, "key": "testing",
                   "secret": "testing", "client_kwargs": {"region_name": "eu-west-1"},
                   "skip_instance_cache": True}
        locate(f"s3://{BUCKET}", options).fs.mkdir(BUCKET)
        yield options


def _s3(options: dict[str, object], name: str):
    """A location with its own s3fs client, as a second build (process) would have."""
    return locate(f"s3://{BUCKET}/{name}", options)


def test_s3_second_conditional_create_is_refused_and_the_lock_released(s3_options):
    loc = _s3(s3_options, "refused")
    with output_lock(loc) as held:
        assert held.path == f"{BUCKET}/refused/{LOCK_NAME}"
        with pytest.raises(FileExistsError):  # moto answers If-None-Match: * with 412
            loc.fs.pipe_file(held.path, b"{}", mode="create")
        refused = str(_refusal(_s3(s3_options, "refused")))
        assert f"@{HOST} pid {os.getpid()} started" in refused
        assert f"(or delete s3://{BUCKET}/refused/{LOCK_NAME})" in refused
        assert json.loads(loc.fs.cat_file(held.path))["token"] == held.token
    assert not _s3(s3_options, "refused").fs.exists(held.path)


def test_s3_stale_lock_is_taken_over_by_heartbeat_age_only(s3_options):
    loc = _s3(s3_options, "stale")
    path = loc.path(LOCK_NAME)
    dead_here = _record(pid=2**22 + 1)  # no such process, this host: still not stale on S3
    loc.fs.pipe_file(path, json.dumps(dead_here).encode())
    assert f"pid {2**22 + 1} started" in str(_refusal(loc, stale_after=60, heartbeat=1))
    loc.fs.pipe_file(path, json.dumps(_record(heartbeat=_ago(300))).encode())
    with output_lock(_s3(s3_options, "stale"), stale_after=60, heartbeat=1) as held:
        assert re.fullmatch(r"no heartbeat for 30[01] s", held.took_over["reason"])
    assert not loc.fs.exists(path)


def test_s3_heartbeat_advances_and_a_changed_token_is_left_alone(s3_options):
    loc = _s3(s3_options, "beat")
    with output_lock(loc, stale_after=5, heartbeat=0.2) as held:
        first = json.loads(loc.fs.cat_file(held.path))
        time.sleep(0.8)
        assert json.loads(loc.fs.cat_file(held.path))["heartbeat"] > first["heartbeat"]
        other = _record()
        loc.fs.pipe_file(held.path, json.dumps(other).encode())
        deadline = time.monotonic() + 10
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost
    assert json.loads(loc.fs.cat_file(held.path)) == other


def test_s3_takeover_delete_is_conditional_on_the_etag_it_judged(s3_options):
    loc = _s3(s3_options, "etag")
    store = lock._lock_file(loc, loc.path(LOCK_NAME))
    loc.fs.pipe_file(loc.path(LOCK_NAME), json.dumps(_record(heartbeat=_ago(300))).encode())
    judged = store.read()
    fresh = _record()
    loc.fs.pipe_file(loc.path(LOCK_NAME), json.dumps(fresh).encode())  # a racer's new lock
    assert store.remove(judged) is False  # 412: If-Match no longer holds
    assert json.loads(loc.fs.cat_file(loc.path(LOCK_NAME))) == fresh
    assert store.remove(store.read()) is True
    assert not loc.fs.exists(loc.path(LOCK_NAME))
