"""Show that a change of code leaves the data unchanged: build the same inputs with two
versions of matteforge and compare the datasets.

    python tools/same_output.py --before 48f578e            # that commit vs the working tree
    python tools/same_output.py --before main --after HEAD --inputs DIR --backgrounds DIR

Each version is installed into a folder of its own (``pip install --target``, no
dependencies: the current environment's are used) and run as a user runs it, through the CLI,
with that folder first on ``PYTHONPATH`` so the Dask workers and the Prefect server run the
same version.  Every alpha, foreground, trimap, mask and composite must be byte-identical,
the manifests equal row for row (save the ``seconds_*`` timings), and ``dataset.json`` equal
save what describes the run rather than the data (timings, versions, manifest checksums).
Exit status 0 when the two datasets are the same, 1 when not.

Why a script and not a test: it needs the old code, which a test of the new code cannot hold.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# Files that describe a run (timings, versions, the report) rather than the data.
RUN_RECORDS = {"dataset.json", "stats.json", "README.md", ".matteforge.lock"}
RUN_FOLDERS = ("report/", "hf/", "manifest/", ".tmp/", "quarantine/")
VOLATILE_KEYS = ("last_run", "versions", "checksums")


def install(rev: str | None, into: Path) -> Path:
    """The package at ``rev`` (None: the working tree) installed into ``into``.

    Installed from a copy, so the build leaves no ``build/`` folder in the checkout."""
    source = into.with_name(into.name + "-src")
    shutil.rmtree(source, ignore_errors=True)
    if rev is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                        str(source), rev], check=True, capture_output=True)
    else:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co",
                                 "--exclude-standard"], check=True, capture_output=True)
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(into), str(source)],
                   check=True, capture_output=True)
    if rev is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(source)],
                       check=True, capture_output=True)
    else:
        shutil.rmtree(source)
    return into


def build(site: Path, args: argparse.Namespace, out: Path, home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-c", "import sys; from matteforge.cli import main; "
               "sys.exit(main())", "build", "--input", args.inputs, "--backgrounds",
               args.backgrounds, "--output", str(out), "--log-format", "json"]
    if args.config:
        command += ["--config", args.config]
    if args.limit:
        command += ["--limit", str(args.limit)]
    done = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the build with {site} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and str(p.relative_to(root)) not in RUN_RECORDS
            and not str(p.relative_to(root)).startswith(RUN_FOLDERS)}


def manifest_rows(root: Path, table: str) -> dict[str, list[dict[str, Any]]]:
    """Rows of each shard file, timings left out."""
    shards = {}
    for path in sorted((root / "manifest" / table).glob("shard-*.parquet")):
        rows = pq.read_table(path).to_pylist()
        shards[path.name] = [{k: v for k, v in r.items() if not k.startswith("seconds_")}
                             for r in rows]
    return shards


def record(root: Path) -> dict[str, Any]:
    data = json.loads((root / "dataset.json").read_text())
    return {k: v for k, v in data.items() if k not in VOLATILE_KEYS}


def compare(a: Path, b: Path) -> list[str]:
    """What differs between two datasets, one line each."""
    problems = []
    files_a, files_b = data_files(a), data_files(b)
    problems += [f"only in before: {f}" for f in sorted(files_a - files_b)]
    problems += [f"only in after: {f}" for f in sorted(files_b - files_a)]
    same = sorted(files_a & files_b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, same, shallow=False)
    problems += [f"bytes differ: {f}" for f in mismatch + errors]
    for table in ("samples", "composites", "backgrounds"):
        rows_a, rows_b = manifest_rows(a, table), manifest_rows(b, table)
        if rows_a.keys() != rows_b.keys():
            problems.append(f"manifest/{table}: other shard files "
                            f"{sorted(rows_a)} vs {sorted(rows_b)}")
        for name in sorted(rows_a.keys() & rows_b.keys()):
            for i, (ra, rb) in enumerate(zip(rows_a[name], rows_b[name], strict=False)):
                diff = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
                if diff:
                    problems.append(f"manifest/{table}/{name} row {i}: {', '.join(diff)}")
            if len(rows_a[name]) != len(rows_b[name]):
                problems.append(f"manifest/{table}/{name}: {len(rows_a[name])} vs "
                                f"{len(rows_b[name])} rows")
    rec_a, rec_b = record(a), record(b)
    problems += [f"dataset.json: {k} differs" for k in sorted(rec_a.keys() | rec_b.keys())
                 if rec_a.get(k) != rec_b.get(k)]
    print(f"compared {len(same)} data files and "
          f"{sum(len(r) for t in ('samples', 'composites') for r in manifest_rows(a, t).values())}"
          " manifest rows", file=sys.stderr)
    return problems


def add_bad_inputs(folder: Path) -> None:
    """Rows of every status: the same bytes twice, a cut file, an empty one, a text file."""
    photo = (folder / "astronaut.png").read_bytes()
    (folder / "astronaut-again.png").write_bytes(photo)
    (folder / "cut.png").write_bytes(photo[: len(photo) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision (default HEAD)")
    parser.add_argument("--after", default=None,
                        help="git revision (default: the working tree, uncommitted changes too)")
    parser.add_argument("--inputs", help="portraits folder (default: the demo's photos)")
    parser.add_argument("--backgrounds", help="backgrounds folder (default: the demo's)")
    parser.add_argument("--config", help="config name or YAML (default: the default recipe)")
    parser.add_argument("--limit", type=int, help="only the first N inputs")
    parser.add_argument("--keep", type=Path, help="build here and keep the datasets")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="same-output-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.inputs or not args.backgrounds:
        from matteforge.demo import prepare_demo_data

        inputs, backgrounds = prepare_demo_data(work / "demo-data")
        add_bad_inputs(inputs)
        args.inputs = args.inputs or str(inputs)
        args.backgrounds = args.backgrounds or str(backgrounds)
    outs = {}
    for side, rev in (("before", args.before), ("after", args.after)):
        site = install(rev, work / f"site-{side}")
        outs[side] = work / f"out-{side}"
        build(site, args, outs[side], work / f"prefect-{side}")
        print(f"{side} ({rev or 'working tree'}): built {outs[side]}", file=sys.stderr)
    problems = compare(outs["before"], outs["after"])
    for line in problems:
        print(line)
    print("same output" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
