"""A second identical build (nothing to do) against the first, as a user runs them.

    python benchmarks/noop_rebuild.py [--config demo] [--repeat 3]

The demo photos (scikit-image's) are built once with ``matteforge build``; the same command is
then run ``--repeat`` times.  Printed: the first build's wall time, each no-op's, the floor (the
CLI starting and printing its help: Python, imports), and the no-op against the target of 5 s.
A no-op plans before it starts anything (matteforge/steps/preview.py): when every input is
done with this config and model, no Prefect server and no Dask cluster start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matteforge.demo import prepare_demo_data

TARGET_SECONDS = 5.0


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    return time.perf_counter() - started, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        portraits, backgrounds = prepare_demo_data(root / "data")
        env = {**os.environ, "PREFECT_HOME": str(root / "home")}
        env.pop("PREFECT_API_URL", None)
        cli = [sys.executable, "-m", "matteforge.cli"]
        build = [*cli, "build", "--config", args.config, "--input", str(portraits),
                 "--backgrounds", str(backgrounds), "--output", str(root / "out")]
        first, proc = _timed(build, env)
        if proc.returncode != 0:
            sys.exit(f"the first build failed:\n{proc.stderr[-3000:]}")
        floor, _ = _timed([*cli, "build", "--help"], env)
        noops = []
        for _ in range(args.repeat):
            seconds, proc = _timed(build, env)
            if proc.returncode != 0:
                sys.exit(f"a no-op build failed:\n{proc.stderr[-3000:]}")
            noops.append(seconds)
        said = [line for line in proc.stderr.splitlines() if "nothing to do" in line]
        best = min(noops)
        print(f"first build        {first:7.2f} s")
        print(f"CLI floor (--help) {floor:7.2f} s")
        print("no-op rebuilds     " + ", ".join(f"{s:.2f}" for s in noops) + " s")
        print(f"best no-op         {best:7.2f} s = {best / first:.3f}x the first build, "
              f"{best / floor:.1f}x the CLI floor; target <= {TARGET_SECONDS:.0f} s: "
              f"{'met' if best <= TARGET_SECONDS else 'NOT met'}")
        print(f"the no-op said: {said[0] if said else '(no nothing-to-do line)'}")


if __name__ == "__main__":
    main()
