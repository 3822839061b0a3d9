"""The build on a Dask cluster it did not start: a real ``dask scheduler`` and two ``dask worker``
processes on loopback, a real ``prefect server``, and the CLI with ``--dask-address``.

The fault test SIGKILLs one worker (nanny included, as when a node or pod is lost) while it is
processing a shard; Dask reschedules that shard on the surviving worker and, because a shard's
commit is its manifest files written last under a name fixed by its inputs, the rerun replaces
rather than duplicates whatever the dead worker had written.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import loopback
import pandas as pd
import pytest
from PIL import Image
from portraits import light_config

from matteforge.dataset.verify import verify_dataset
from matteforge.demo import prepare_demo_data

pytestmark = pytest.mark.slow

N_VARIANTS = 4  # per demo portrait: enough shards that a kill lands mid-build


@pytest.fixture
def prefect_api_url(prefect_server) -> tuple[str, Path]:
    return prefect_server


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, int]:
    """Demo portraits and negatives plus resized/mirrored portrait variants (distinct bytes)."""
    root = tmp_path_factory.mktemp("inputs")
    portraits, backgrounds = prepare_demo_data(root)
    for name in ("astronaut.png", "camera.png"):
        image = Image.open(portraits / name)
        for i in range(N_VARIANTS):
            variant = image.resize((256 + 32 * i, 256 + 32 * i))
            if i % 2:
                variant = variant.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            variant.save(portraits / f"{Path(name).stem}-{i}.png")
    n_inputs = len(list(portraits.iterdir()))
    return portraits, backgrounds, n_inputs


@pytest.fixture
def cluster(prefect_api_url, tmp_path) -> Iterator[tuple[str, list[loopback.Service]]]:
    """Scheduler + two single-threaded workers that report task runs to the Prefect server."""
    url, home = prefect_api_url
    env = loopback.prefect_env(home, url)
    env.update(OMP_NUM_THREADS="1", DASK_LOGGING__DISTRIBUTED="warning")
    logs = tmp_path / "dask-logs"
    services: list[loopback.Service] = []
    try:
        scheduler, address = loopback.start_dask_scheduler(logs, env)
        services.append(scheduler)
        workers = [loopback.start_dask_worker(address, f"worker-{i}", logs, env) for i in (0, 1)]
        services += workers
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=loopback.STARTUP_SECONDS)
        yield address, workers
    finally:
        for service in reversed(services):
            service.stop()


def _build(inputs: tuple[Path, Path, int], out: Path, address: str, url: str, home: Path,
           ) -> subprocess.Popen[str]:
    portraits, backgrounds, _ = inputs
    config = light_config(out.parent)  # scale-out and a lost worker: the machinery, not the recipe
    argv = [sys.executable, "-m", "matteforge.cli", "build", "--config", str(config), "--input",
            str(portraits), "--backgrounds", str(backgrounds), "--output", str(out),
            "--dask-address", address, "--shard-size", "1"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=loopback.prefect_env(home, url))


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-4000:]
    return output


def _assert_every_input_once(out: Path, inputs: tuple[Path, Path, int]) -> pd.DataFrame:
    portraits, _, n_inputs = inputs
    samples = pd.read_parquet(out / "manifest" / "samples")
    assert len(samples) == n_inputs
    assert samples["source_uri"].is_unique
    assert {Path(u).name for u in samples["source_uri"]} == {p.name for p in portraits.iterdir()}
    assert set(samples["status"]) == {"ok", "rejected"}
    report = verify_dataset(str(out))
    assert report.ok, report.problems
    verify = subprocess.run([sys.executable, "-m", "matteforge.cli", "verify", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    return samples


def test_build_runs_on_an_existing_scheduler_with_two_workers(cluster, inputs, prefect_api_url,
                                                              tmp_path):
    address, _workers = cluster
    url, home = prefect_api_url
    out = tmp_path / "out"
    from distributed import Client

    with Client(address, timeout=60) as client:
        output = _finish(_build(inputs, out, address, url, home))
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    samples = _assert_every_input_once(out, inputs)
    assert f"shards {inputs[2]}/{inputs[2]}" in output
    assert (samples["status"] == "ok").sum() == 2 + 2 * N_VARIANTS
    # both workers ran shards: the work was spread over the cluster, not done in the flow process
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed
    # a task per shard (one input each), and one fingerprint task for them all (flows/build.py)
    assert sum(executed.values()) == inputs[2] + 1


def test_build_survives_a_worker_killed_mid_build(cluster, inputs, prefect_api_url, tmp_path):
    address, workers = cluster
    url, home = prefect_api_url
    out = tmp_path / "out"
    from distributed import Client

    proc = _build(inputs, out, address, url, home)
    killed_while_processing: list[str] = []
    try:
        with Client(address, timeout=60) as client:
            ids = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
            victim = workers[0]
            victim_addr = ids[victim.name]
            deadline = time.monotonic() + 300
            # wait until the victim is busy with a shard after at least one shard has landed
            while time.monotonic() < deadline and proc.poll() is None:
                landed = list((out / "manifest" / "samples").glob("shard-*.parquet"))
                busy = [k for k in client.processing().get(victim_addr, [])
                        if str(k).startswith("process")]
                if landed and busy:
                    killed_while_processing = busy
                    victim.kill()
                    break
                time.sleep(0.1)
            assert killed_while_processing, "the build ended before a worker could be killed"
            while victim_addr in client.scheduler_info()["workers"]:
                assert time.monotonic() < deadline, "the scheduler never noticed the dead worker"
                time.sleep(0.2)
            assert len(client.scheduler_info()["workers"]) == 1  # no nanny brought it back
        output = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_every_input_once(out, inputs)
    assert f"shards {inputs[2]}/{inputs[2]}" in output
    meta = pd.read_json(out / "dataset.json", typ="series")
    assert meta["counts"]["samples"] == inputs[2]


def test_variants_are_distinct_inputs(inputs):
    """The fault test relies on one shard per file: no two inputs may share content."""
    portraits, _, n_inputs = inputs
    digests = {hashlib.sha256(p.read_bytes()).digest() for p in portraits.iterdir()}
    assert len(digests) == n_inputs
