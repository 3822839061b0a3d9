"""Hostile inputs and an unlucky operator, at unit level: real files, real folder walks.

Each test pins one hole from the hostile-input and fault round (docs/inputs.md): names that
are not UTF-8, folders the build may not enter, paths over PATH_MAX, float and 32-bit TIFFs,
links out of the input, special files, chained URLs around the overlap check, damaged datasets
and writes that fail.  The end-to-end build over all of them is in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteforge.config import BuildConfig, check_locations
from matteforge.dataset import manifest
from matteforge.dataset.storage import (
    NotRegularFile,
    OutsideInput,
    WriteFailed,
    list_file_sizes,
    locate,
    printable,
    read_input,
    unwire_path,
    wire_path,
    write_bytes_atomic,
)
from matteforge.dataset.unreadable import MACHINE_REASONS, read_failure
from matteforge.dataset.verify import find_damage, verify_dataset
from matteforge.flows.build import _shards
from matteforge.steps.plan import InputFile, plan_build
from matteforge.steps.shard import _stage_failure
from matteforge.tasks.ingest import decode_image

BAD_NAME = os.fsdecode(b"caf\xe9\xff portrait.png")  # Latin-1 bytes: legal on Linux, not UTF-8


def _png(side: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- names that are not UTF-8

def test_a_name_that_is_not_utf8_is_listed_planned_keyed_and_recorded(tmp_path):
    (tmp_path / BAD_NAME).write_bytes(_png())
    [(path, size)] = list_file_sizes(locate(str(tmp_path)), [".png"])
    assert path.endswith(BAD_NAME) and size == len(_png())
    shown = printable(path)
    assert shown.endswith("caf\\xe9\\xff portrait.png")
    shown.encode("utf-8")  # valid text for Parquet, JSON and logs
    [(_key, [item])] = _shards([path], 8, "hash")  # the shard key no longer raises
    item.encode("utf-8")
    assert unwire_path(item) == path and wire_path("/plain/name.png") == "/plain/name.png"
    assert read_input(locate(str(tmp_path)), unwire_path(item)) == _png()
    table = manifest.to_table([{"source_uri": path, "detail": f"x {path}"}], "samples")
    assert table.column("source_uri")[0].as_py() == shown


# ---------------------------------------------------------------- nothing dropped by the walk

def _unprivileged(code: str) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` without the capabilities that let root read any file."""
    if os.geteuid() != 0:
        command = [sys.executable, "-c", code]
    elif shutil.which("capsh"):
        command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--",
                   "-c", f"{sys.executable} -c \"$0\"", code]
    else:
        pytest.skip("running as root without capsh: cannot make a folder unreadable")
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_folder_the_build_may_not_enter_becomes_a_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "inside.png").write_bytes(_png())
    locked.chmod(0)
    try:
        proc = _unprivileged(
            "from matteforge.dataset.storage import list_file_sizes, locate, read_input\n"
            "from matteforge.dataset.unreadable import read_failure\n"
            f"loc = locate({str(tmp_path)!r})\n"
            "for path, size in list_file_sizes(loc, ['.png']):\n"
            "    try:\n"
            "        read_input(loc, path); print(path, 'ok')\n"
            "    except Exception as exc:\n"
            "        print(path, *read_failure(exc)[:2])\n")
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.split("\n"))[1:]
    assert lines == [f"{locked} failed unreadable_folder", f"{tmp_path / 'ok.png'} ok"]


def _deep(base: Path, depth: int = 22) -> Path:
    """Folders nested past PATH_MAX (4096), made relative to open folders, and a file."""
    name = "d" * 200
    fd = os.open(base, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
            fh.write(_png())
    finally:
        os.close(fd)
    return base.joinpath(*[name] * depth)


def test_a_path_over_path_max_becomes_a_row(tmp_path):
    deep = _deep(tmp_path)
    assert len(str(deep)) > 4096
    loc = locate(str(tmp_path))
    listed = list_file_sizes(loc, [".png"])
    assert len(listed) == 1 and listed[0][1] is None  # the folder the walk could not open
    with pytest.raises(OSError) as caught:
        read_input(loc, listed[0][0])
    assert read_failure(caught.value)[:2] == ("failed", "path_too_long")


# ---------------------------------------------------------------- pixels by the data's range

@pytest.mark.parametrize(("array", "scale", "note"), [
    (np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), 255.0, "scaled_from:0..1"),
    (np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64), 1.0, "scaled_from:0..255"),
    (np.linspace(0, 255, 64 * 64).astype(np.int32).reshape(64, 64), 1.0, "scaled_from:0..255"),
    (np.linspace(0, 65535, 64 * 64).astype(np.int32).reshape(64, 64), 255 / 65535,
     "scaled_from:0..65535"),
])
def test_float_and_32_bit_tiffs_convert_by_their_range(array, scale, note):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "TIFF")
    result = decode_image(buf.getvalue())
    assert result.status == "ok" and note in result.notes
    expected = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255)
    assert np.abs(result.image[:, :, 0].astype(float) - expected).max() <= 1
    assert result.image.max() >= 250  # not the all-black image a 0..1 float used to give


# ---------------------------------------------------------------- links out, special files

def test_a_link_out_of_the_input_is_refused_before_it_is_opened(tmp_path):
    outside, inputs = tmp_path / "outside", tmp_path / "inputs"
    outside.mkdir()
    inputs.mkdir()
    (outside / "secret.txt").write_text("PLANTED")
    (outside / "photo.png").write_bytes(_png())
    (inputs / "inner.png").write_bytes(_png())
    os.symlink(outside / "secret.txt", inputs / "secret.jpg")
    os.symlink(outside / "photo.png", inputs / "elsewhere.png")
    os.symlink("/proc/self/environ", inputs / "environ.jpg")
    os.symlink("inner.png", inputs / "inside-link.png")
    loc = locate(str(inputs))
    for name in ("secret.jpg", "elsewhere.png", "environ.jpg"):
        with pytest.raises(OutsideInput) as caught:
            read_input(loc, str(inputs / name))
        status, reason, detail = read_failure(caught.value)
        assert (status, reason) == ("rejected", "outside_input") and "outside" in detail
    assert read_input(loc, str(inputs / "inside-link.png")) == _png()
    assert read_input(loc, str(inputs / "elsewhere.png"), follow_links_outside=True) == _png()
    with pytest.raises(NotRegularFile):  # allowed out, but never into the kernel's files
        read_input(loc, str(inputs / "environ.jpg"), follow_links_outside=True)


def test_a_fifo_is_listed_and_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    assert list_file_sizes(locate(str(tmp_path)), [".jpg"]) == [(str(tmp_path / "pipe.jpg"),
                                                                  None)]
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(result, str(tmp_path)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert read_failure(result[0])[:2] == ("rejected", "not_a_regular_file")


def _catch(into: list[BaseException], root: str) -> None:
    try:
        read_input(locate(root), root + "/pipe.jpg")
    except BaseException as exc:
        into.append(exc)


# ---------------------------------------------------------------- chained URLs and overlap

@pytest.mark.parametrize("spell", ["simplecache::file://{p}", "filecache::file://{p}",
                                   "dir::file://{p}", "local://{p}", "file://{p}/../in",
                                   "simplecache::{p}", "{link}"])
def test_chained_and_aliased_outputs_cannot_write_into_the_input(tmp_path, spell):
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(inputs, tmp_path / "link")
    output = spell.format(p=inputs, link=tmp_path / "link")
    with pytest.raises(ValueError, match="the output is the input"):
        check_locations(BuildConfig(input=str(inputs), backgrounds=str(tmp_path / "bg"),
                                    output=output))
    with pytest.raises(ValueError, match="the output contains the input"):
        check_locations(BuildConfig(input=f"simplecache::file://{inputs}/sub",
                                    backgrounds=str(tmp_path / "bg"), output=str(inputs)))


# ---------------------------------------------------------------- damage and machine failures

def _tiny_dataset(root: Path) -> None:
    loc = locate(str(root))
    row = {"sample_id": "s", "source_uri": "/in/a.png", "status": "ok", "n_composites": 1,
           "reason": ""}
    for kind in manifest.ARTIFACTS:
        data = f"{kind} bytes".encode()
        write_bytes_atomic(loc, loc.path(f"{kind}/s.png"), data)
        row |= {f"{kind}_uri": f"{kind}/s.png", f"{kind}_bytes": len(data),
                f"{kind}_sha256": __import__("hashlib").sha256(data).hexdigest()}
    merged = b"merged"
    write_bytes_atomic(loc, loc.path("merged/s_b.png"), merged)
    manifest.write_table(loc, "composites", "shard-a.parquet", [{
        "composite_id": "s_b", "sample_id": "s", "merged_uri": "merged/s_b.png",
        "merged_bytes": len(merged),
        "merged_sha256": __import__("hashlib").sha256(merged).hexdigest()}])
    manifest.write_table(loc, "samples", "shard-a.parquet", [row])


def test_damage_is_found_by_size_cheaply_and_by_hash_on_request(tmp_path):
    _tiny_dataset(tmp_path)
    loc = locate(str(tmp_path))
    assert find_damage(loc, hashes=True).sources == set()
    alpha = tmp_path / "alpha/s.png"
    alpha.write_bytes(bytes([alpha.read_bytes()[0] ^ 1]) + alpha.read_bytes()[1:])
    assert find_damage(loc).sources == set()  # same size: only the hashes see a flipped bit
    assert find_damage(loc, hashes=True).sources == {"/in/a.png"}
    alpha.write_bytes(b"alpha bytes")
    (tmp_path / "merged/s_b.png").unlink()
    assert find_damage(loc).sources == {"/in/a.png"}  # a lost composite costs its sample


def test_a_truncated_shard_is_named_and_quarantined(tmp_path):
    _tiny_dataset(tmp_path)
    shard = tmp_path / "manifest/samples/shard-a.parquet"
    shard.write_bytes(shard.read_bytes()[:40])
    loc = locate(str(tmp_path))
    with pytest.raises(manifest.CorruptShard, match=r"shard-a\.parquet"):
        manifest.read_shards(loc, "samples")
    problems = verify_dataset(str(tmp_path)).problems
    assert any("manifest/samples/shard-a.parquet cannot be read" in p for p in problems)
    assert find_damage(loc).unreadable == ["manifest/samples/shard-a.parquet"]
    moved = manifest.quarantine(loc, "manifest/samples/shard-a.parquet")
    assert moved == "quarantine/manifest/samples/shard-a.parquet.0"
    assert (tmp_path / moved).exists() and manifest.read_shards(loc, "samples") == {}


def test_a_write_the_disk_refuses_is_a_machine_failure_and_is_redone(tmp_path):
    (tmp_path / "alpha").write_text("a file where a folder must go")
    loc = locate(str(tmp_path))
    with pytest.raises(WriteFailed) as caught:
        write_bytes_atomic(loc, loc.path("alpha/s.png"), b"x")
    assert "alpha/s.png" in str(caught.value)
    assert _stage_failure(caught.value, "composite") == "write_error" in MACHINE_REASONS
    assert _stage_failure(ValueError("bug"), "alpha") == "alpha_error"
    row = {"source_uri": "/in/a.png", "config_hash": "c", "model_sha256": "m", "source_bytes": 1,
           "status": "failed", "reason": "write_error"}
    item = [InputFile("/in/a.png", "/in/a.png", 1)]
    assert len(plan_build(item, {"/in/a.png": row}, "incremental", "c", "m").todo) == 1
    assert plan_build(item, {"/in/a.png": {**row, "reason": "decode_error"}}, "incremental",
                      "c", "m").skipped == 1


# ---------------------------------------------------------------- near-identical photos

def _frame(photo: np.ndarray, shift: int) -> bytes:
    """A clip frame: the photo moved by ``shift`` px and saved as a JPEG (other bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.roll(photo, shift, axis=1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_frames_of_one_clip_share_a_group_and_a_split_across_runs(astronaut, coffee):
    from matteforge.steps.groups import group_inputs, known_groups
    from matteforge.tasks.fingerprint import fingerprint

    frames = {f"/in/frame-{i}.jpg": fingerprint(_frame(astronaut, 2 * i), 10**8)
              for i in range(4)}
    other = {"/in/cup.jpg": fingerprint(_frame(coffee, 0), 10**8)}
    assert len({sid for sid, _ in frames.values()}) == 4  # four different files
    first = group_inputs({**frames, **other}, ({}, {}), 10, seed=0, test_fraction=0.5)
    assert len({first[k][1] for k in frames}) == 1  # one group ...
    assert len({first[k][2] for k in frames}) == 1  # ... and one split
    assert first["/in/cup.jpg"][1] != first["/in/frame-0.jpg"][1]
    # a later run: the group keeps its id and its split, whatever the new frame's own id says
    rows = [{"sample_id": frames[k][0], "phash": first[k][0], "group_id": first[k][1],
             "status": "ok", "split": "test"} for k in frames]
    later = group_inputs({"/in/frame-9.jpg": fingerprint(_frame(astronaut, 9), 10**8)},
                         known_groups(rows),
                         10, seed=0, test_fraction=0.0)
    assert later["/in/frame-9.jpg"][1:] == (first["/in/frame-0.jpg"][1], "test")
    alone = group_inputs({**frames, **other}, ({}, {}), None, seed=0, test_fraction=0.5)
    assert {alone[k][1] for k in frames} == {sid for sid, _ in frames.values()}
