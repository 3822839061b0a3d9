"""Bad inputs never crash a build and nothing is lost: every input file ends as a manifest row.

The catalogue (tests/badinputs.py) is generated here from a portrait; docs/inputs.md is the same
table.  Unit tests pin each kind at ingest, listing, read and duplicate level; one slow
end-to-end build runs the whole catalogue, plus the file-system kinds, through the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import loopback
import numpy as np
import pandas as pd
import pytest
from badinputs import CATALOGUE, Kind, declared_size_png, encode, exif_rotated, write_catalogue
from PIL import Image

from matteforge.config import IngestConfig
from matteforge.dataset import manifest
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import FileTooLarge, list_file_sizes, locate, read_bytes
from matteforge.dataset.unreadable import read_failure
from matteforge.steps.duplicates import DUPLICATE, resolve_duplicates
from matteforge.steps.plan import InputFile, plan_build
from matteforge.tasks.ingest import decode_image

INGEST = IngestConfig()


@pytest.fixture(scope="module")
def portrait(astronaut: np.ndarray) -> np.ndarray:
    """160 wide, 192 tall: not square, so a missed EXIF rotation shows in the shape."""
    return np.asarray(Image.fromarray(astronaut).resize((160, 192), Image.Resampling.LANCZOS))


def _decode(item: Kind, portrait: np.ndarray):
    return decode_image(item.make(portrait), max_pixels=INGEST.max_pixels,
                        min_side=INGEST.min_side, name=item.filename)


@pytest.mark.parametrize("item", CATALOGUE, ids=lambda k: k.kind)
def test_each_kind_ingests_to_its_status_reason_and_note(item: Kind, portrait: np.ndarray):
    result = _decode(item, portrait)
    assert (result.status, result.reason) == (item.status, item.reason), result.detail
    assert not item.note or any(n.startswith(item.note) for n in result.notes), result.notes
    if item.status == "ok":
        assert result.image is not None and result.image.dtype == np.uint8
        assert result.image.shape == (192, 160, 3)
    else:
        assert result.image is None and result.detail


def test_exif_rotated_jpeg_comes_out_upright(portrait):
    image = decode_image(exif_rotated(portrait)).image
    assert image is not None and image.shape == portrait.shape
    upright = np.abs(image.astype(int) - portrait).mean()
    assert upright < 6, upright  # JPEG noise only; any wrong rotation is tens of levels off
    assert np.abs(image.astype(int) - portrait[::-1, ::-1]).mean() > 5 * upright


def test_rgba_keeps_colours_and_drops_the_alpha(portrait):
    item = next(k for k in CATALOGUE if k.kind == "rgba")
    result = _decode(item, portrait)
    np.testing.assert_array_equal(result.image, portrait)  # not premultiplied, not composited
    assert "source_alpha_ignored" in result.notes


def test_cmyk_and_palette_keep_the_picture(portrait):
    for kind in ("cmyk_jpeg", "palette"):
        item = next(k for k in CATALOGUE if k.kind == kind)
        image = _decode(item, portrait).image
        assert np.abs(image.astype(int) - portrait).mean() < 12, kind


def test_multi_frame_files_give_their_first_frame(portrait):
    for kind in ("animated_gif", "multipage_tiff"):
        item = next(k for k in CATALOGUE if k.kind == kind)
        image = _decode(item, portrait).image
        first = np.abs(image.astype(int) - portrait).mean()
        assert first < np.abs(image.astype(int) - portrait[:, ::-1]).mean() / 3, kind


def test_sixteen_bit_scales_instead_of_clipping(portrait):
    gray = np.asarray(Image.fromarray(portrait).convert("L"))
    item = next(k for k in CATALOGUE if k.kind == "png_16bit")
    np.testing.assert_array_equal(_decode(item, portrait).image[:, :, 0], gray)


def test_a_declared_size_bomb_is_refused_without_allocating_it():
    tracemalloc.start()
    result = decode_image(declared_size_png(50_000, 50_000))
    small = decode_image(declared_size_png(8_000, 6_000), max_pixels=INGEST.max_pixels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (result.status, result.reason) == ("rejected", "too_large")
    assert (small.status, small.reason) == ("rejected", "too_large")
    assert "48000000 pixels" in small.detail
    assert peak < 16 * 1024 * 1024  # the 8000x6000 RGB image alone would be 144 MB


def test_right_extension_gives_no_note_and_jpeg_family_is_one(portrait):
    png = encode(Image.fromarray(portrait), "PNG")
    assert decode_image(png, name="a/b.PNG").notes == []
    assert decode_image(png, name="no-extension").notes == []
    jpeg = encode(Image.fromarray(portrait), "JPEG")
    assert decode_image(jpeg, name="x.jpeg").notes == []
    assert decode_image(jpeg, name="x.png").notes == ["extension_mismatch:JPEG"]


def _file_system_kinds(folder: Path, portrait_bytes: bytes) -> None:
    """The kinds that exist only on a file system: links, loops, odd names, odd folders."""
    (folder / "portrait.png").write_bytes(portrait_bytes)
    (folder / "Zoë Ünïcødé 写真 portrait.png").write_bytes(
        encode(Image.open(folder / "portrait.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT),
               "PNG"))
    (folder / "empty-dir.jpg").mkdir()
    (folder / "readme.txt").write_text("not an input: its extension is not listed\n")
    os.symlink("nowhere.jpg", folder / "gone.jpg")
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    os.symlink("portrait.png", folder / "linked.png")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up.jpg")  # a directory link that would loop forever
    (folder / "z").mkdir()
    (folder / "z" / "portrait.png").write_bytes(portrait_bytes)  # same bytes, another shard
    (folder / "portrait copy.png").write_bytes(portrait_bytes)  # same bytes, same shard


# The hostile round (docs/inputs.md): name → (status, reason, note) when the build runs without
# the capabilities that let root read any file (else "locked/" is listed and read like any).
BAD_NAME = os.fsdecode(b"caf\xe9\xff portrait.png")
HOSTILE = {
    "caf\\xe9\\xff portrait.png": ("ok", "", ""),
    "float-0-1.tif": ("ok", "", "scaled_from:0..1"),
    "int32.tif": ("ok", "", "scaled_from:0..255"),
    "secret.jpg": ("rejected", "outside_input", ""),
    "elsewhere.png": ("rejected", "outside_input", ""),
    "environ.jpg": ("rejected", "outside_input", ""),
    "pipe.jpg": ("rejected", "not_a_regular_file", ""),
    "locked": ("failed", "unreadable_folder", ""),
}
# Opened through their links (inputs/secret.jpg ...) or directly: neither may appear.  Other
# programs may read their own /proc/self/environ; only the input's link to it matters.
NEVER_OPENED = ("outside/secret.txt", "outside/photo.png", "inputs/secret.jpg",
                "inputs/elsewhere.png", "inputs/environ.jpg", "inputs/pipe.jpg")


def _hostile_kinds(folder: Path, outside: Path, portrait: np.ndarray) -> Path:
    """Kinds that an attacker or an unlucky collection brings; returns the folder past PATH_MAX.

    Everything outside ``folder`` that its links point at must never be opened.
    """
    (folder / BAD_NAME).write_bytes(encode(Image.fromarray(portrait[8:]), "PNG"))
    grey = portrait.mean(axis=2)
    (folder / "float-0-1.tif").write_bytes(
        encode(Image.fromarray((grey / 255.0).astype(np.float32)), "TIFF"))
    (folder / "int32.tif").write_bytes(
        encode(Image.fromarray(np.rot90(grey).astype(np.int32)), "TIFF"))
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("PLANTED-OUTSIDE-SECRET\n")
    (outside / "photo.png").write_bytes(encode(Image.fromarray(portrait[::-1]), "PNG"))
    os.symlink(outside / "secret.txt", folder / "secret.jpg")
    os.symlink(outside / "photo.png", folder / "elsewhere.png")
    os.symlink("/proc/self/environ", folder / "environ.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "locked").mkdir()
    (folder / "locked" / "hidden.png").write_bytes(encode(Image.fromarray(portrait), "PNG"))
    (folder / "locked").chmod(0)
    name, depth = "d" * 200, 22
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(depth):  # made relative to open folders: the full path is over PATH_MAX
        os.mkdir(name, dir_fd=fd)
        inner = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
        fh.write(encode(Image.fromarray(portrait), "PNG"))
    os.close(fd)
    return folder.joinpath(*[name] * depth)


def test_listing_walks_folders_follows_file_links_and_keeps_broken_ones(tmp_path, portrait):
    _file_system_kinds(tmp_path, encode(Image.fromarray(portrait), "PNG"))
    listed = dict(list_file_sizes(locate(str(tmp_path)), INGEST.extensions))
    names = {str(Path(p).relative_to(tmp_path)): size for p, size in listed.items()}
    assert set(names) == {"portrait.png", "Zoë Ünïcødé 写真 portrait.png", "gone.jpg",
                          "loop-a.jpg", "loop-b.jpg", "linked.png", "z/portrait.png",
                          "portrait copy.png"}
    assert names["gone.jpg"] is None and names["loop-a.jpg"] is None
    assert names["linked.png"] == names["portrait.png"] > 0


def test_unreadable_files_are_named_for_what_they_are(tmp_path):
    os.symlink("nowhere.jpg", tmp_path / "gone.jpg")
    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    (tmp_path / "dir.jpg").mkdir()
    found = {}
    for name in ("gone.jpg", "a.jpg", "dir.jpg"):
        try:
            (tmp_path / name).read_bytes()
        except OSError as exc:
            found[name] = read_failure(exc)
    assert found["gone.jpg"][:2] == ("failed", "not_found")
    assert "broken symbolic link" in found["gone.jpg"][2]
    assert found["a.jpg"][:2] == ("failed", "symlink_loop")
    assert found["dir.jpg"][:2] == ("failed", "is_a_directory")
    assert read_failure(OSError(errno.EIO, "I/O error"))[:2] == ("failed", "read_error")


def test_a_file_over_the_byte_limit_is_rejected_before_it_is_read(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"x" * 2048)
    loc = locate(str(tmp_path))
    with pytest.raises(FileTooLarge) as caught:
        read_bytes(loc, loc.path("big.jpg"), max_bytes=1024)
    status, reason, detail = read_failure(caught.value)
    assert (status, reason) == ("rejected", "too_large")
    assert "2048 bytes" in detail and "1024" in detail


def _row(uri: str, sid: str, status: str = "ok") -> dict:
    return {"sample_id": sid, "source_uri": uri, "status": status, "reason": "", "detail": "",
            "n_composites": 1 if status == "ok" else 0, "config_hash": "c"}


def _composite(sid: str) -> dict:
    return {"composite_id": f"{sid}_bg", "sample_id": sid, "bg_id": "bg"}


def test_duplicates_across_shards_keep_the_smallest_uri_and_drop_the_others_composites(tmp_path):
    loc = locate(str(tmp_path))
    manifest.write_table(loc, "composites", "shard-a.parquet", [_composite("s1")])
    manifest.write_table(loc, "samples", "shard-a.parquet", [_row("/in/z.png", "s1")],
                         {manifest.SHARD_RUN_KEY: '{"seconds": 1.0}'})
    manifest.write_table(loc, "composites", "shard-b.parquet", [_composite("s1"),
                                                                _composite("s2")])
    manifest.write_table(loc, "samples", "shard-b.parquet",
                         [_row("/in/a.png", "s1"), _row("/in/b.png", "s2")])
    assert resolve_duplicates(Manifest.load(loc)) == 1
    samples = {r["source_uri"]: r for r in manifest.read_table(loc, "samples").to_pylist()}
    assert samples["/in/a.png"]["status"] == "ok"
    z = samples["/in/z.png"]
    assert (z["status"], z["reason"], z["sample_id"]) == (DUPLICATE, DUPLICATE, "s1")
    assert "/in/a.png" in z["detail"] and z["n_composites"] == 0
    composites = manifest.read_table(loc, "composites").to_pylist()
    assert sorted(c["sample_id"] for c in composites) == ["s1", "s2"]  # s1's composites once
    assert manifest.shard_run(manifest.read_shards(loc, "samples")["shard-a.parquet"]) == {
        "seconds": 1.0}
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    assert resolve_duplicates(Manifest.load(loc)) == 0  # nothing to do: no write
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == before


def test_a_rerun_skips_duplicate_rows_like_any_finished_row():
    inputs = [InputFile("/in/a.png", "/in/a.png", 10), InputFile("/in/b.png", "/in/b.png", 10)]
    existing = {"/in/a.png": {**_row("/in/a.png", "s1"), "model_sha256": "m", "source_bytes": 10},
                "/in/b.png": {**_row("/in/b.png", "s1", DUPLICATE), "model_sha256": "m",
                              "source_bytes": 10}}
    for mode in ("incremental", "retry-failed"):
        assert plan_build(inputs, existing, mode, "c", "m").skipped == 2


# ---------------------------------------------------------------------------- end to end

_CONFIG = """\
name: bad-inputs
seed: 2
segment: {model: mediapipe-selfie}
trimap: {kernel_shape: ellipse, width_fraction: 0.012}
ingest: {extensions: [.jpg, .jpeg, .png, .tif, .tiff, .gif]}  # GIF is not listed by default
composite: {per_foreground_train: 3, per_foreground_test: 3, test_fraction: 0.0}
run: {shard_size: 8, n_workers: 1}
"""


def _backgrounds(folder: Path, coffee: np.ndarray) -> None:
    from matteforge.demo import skimage_data_dir

    folder.mkdir(parents=True)
    for name in ("grass.png", "rocket.jpg"):
        (folder / name).write_bytes((skimage_data_dir() / name).read_bytes())
    small = Image.fromarray(coffee).resize((40, 30), Image.Resampling.BILINEAR)
    (folder / "small.png").write_bytes(encode(small, "PNG"))  # smaller than any portrait
    jpeg = encode(Image.fromarray(coffee), "JPEG")
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if Path(folder, d) not in skip]
        for name in names:
            info = os.lstat(os.path.join(folder, name))
            found[os.path.join(folder, name)] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory, portrait, astronaut, coffee, prefect_server) -> dict:
    root = tmp_path_factory.mktemp("bad-inputs")
    inputs, backgrounds, out = root / "inputs", root / "backgrounds", root / "out"
    catalogue = write_catalogue(inputs, portrait)
    good = np.asarray(Image.fromarray(astronaut).resize((176, 208), Image.Resampling.LANCZOS))
    _file_system_kinds(inputs, encode(Image.fromarray(good), "PNG"))
    (inputs / "cup.png").write_bytes(encode(Image.fromarray(coffee).resize((240, 160)), "PNG"))
    _backgrounds(backgrounds, coffee)
    deep = _hostile_kinds(inputs, root / "outside", good)
    (root / "config.yaml").write_text(_CONFIG)
    home = root / "prefect-home"
    before = _snapshot(root, (out, home, inputs / "locked", inputs / ("d" * 200)))
    env = loopback.prefect_env(home, prefect_server[0])
    build = [sys.executable, "-m", "matteforge.cli", "build", "--config",
             str(root / "config.yaml"), "--input", str(inputs), "--backgrounds",
             str(backgrounds), "--output", str(out)]
    trace = tmp_path_factory.mktemp("strace") / "openat.log"
    command, unprivileged = _hostile_wrapper(build, trace)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    finally:
        (inputs / "locked").chmod(0o755)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verify = subprocess.run([sys.executable, "-m", "matteforge.cli", "verify", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    return {"out": out, "inputs": inputs, "catalogue": catalogue, "portrait": portrait,
            "verify": verify, "deep": deep, "unprivileged": unprivileged,
            "trace": trace.read_text(errors="replace") if trace.exists() else None,
            "changed": before != _snapshot(root, (out, home, inputs / "locked",
                                                  inputs / ("d" * 200))),
            "samples": pd.read_parquet(out / "manifest/samples"),
            "composites": pd.read_parquet(out / "manifest/composites"),
            "backgrounds": pd.read_parquet(out / "manifest/backgrounds")}


def _hostile_wrapper(build: list[str], trace: Path) -> tuple[list[str], bool]:
    """The build under strace (every openat of every process logged) and, when running as
    root, without the capabilities that let root read a mode-000 folder."""
    command, unprivileged = build, os.geteuid() != 0
    if os.geteuid() == 0 and shutil.which("capsh"):
        command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
                   'exec "$0" "$@"', *command]
        unprivileged = True
    if shutil.which("strace"):
        command = ["strace", "-f", "-qq", "-e", "trace=openat,open,openat2", "-o", str(trace),
                   *command]
    return command, unprivileged


def _by_name(build: dict) -> dict[str, dict]:
    rows = build["samples"].to_dict("records")
    return {str(Path(r["source_uri"]).relative_to(build["inputs"])): r for r in rows}


@pytest.mark.slow
def test_every_listed_input_is_one_row_and_verify_passes(bad_build):
    rows = _by_name(bad_build)
    expected = {p.name for p in bad_build["catalogue"].values()} | {
        "portrait.png", "Zoë Ünïcødé 写真 portrait.png", "gone.jpg", "loop-a.jpg", "loop-b.jpg",
        "linked.png", "z/portrait.png", "portrait copy.png", "cup.png"}
    expected |= set(HOSTILE) | {str(bad_build["deep"].parent.relative_to(bad_build["inputs"]))}
    if not bad_build["unprivileged"]:
        expected = (expected - {"locked"}) | {"locked/hidden.png"}
    assert sorted(rows) == sorted(expected)  # each once; no folder, no .txt, no link to a folder
    assert len(bad_build["samples"]) == len(expected)
    assert bad_build["verify"].returncode == 0, bad_build["verify"].stdout
    assert not bad_build["changed"]  # nothing written beside the output root


@pytest.mark.slow
@pytest.mark.parametrize("item", CATALOGUE, ids=lambda k: k.kind)
def test_each_kind_ends_as_its_status_and_reason(bad_build, item: Kind):
    row = _by_name(bad_build)[item.filename]
    assert (row["status"], row["reason"]) == (item.status, item.reason), row["detail"]
    assert not item.note or item.note in row["notes"]
    assert row["status"] == "ok" or row["detail"]


@pytest.mark.slow
def test_hostile_kinds_end_as_their_rows_and_nothing_outside_is_opened(bad_build):
    rows = _by_name(bad_build)
    for name, (status, reason, note) in HOSTILE.items():
        if name == "locked" and not bad_build["unprivileged"]:
            continue
        row = rows[name]
        assert (row["status"], row["reason"]) == (status, reason), (name, row["detail"])
        assert note in (row["notes"] if isinstance(row["notes"], str) else "")
    deep = rows[str(bad_build["deep"].parent.relative_to(bad_build["inputs"]))]
    assert (deep["status"], deep["reason"]) == ("failed", "path_too_long")
    assert "PLANTED" not in bad_build["samples"].to_json()
    if bad_build["trace"] is None:
        pytest.skip("strace is not installed: the opened files could not be checked")
    opened = [line for line in bad_build["trace"].splitlines()
              if any(name in line for name in NEVER_OPENED)]
    assert opened == []


@pytest.mark.slow
def test_file_system_kinds_and_negatives(bad_build):
    rows = _by_name(bad_build)
    assert (rows["gone.jpg"]["status"], rows["gone.jpg"]["reason"]) == ("failed", "not_found")
    for loop in ("loop-a.jpg", "loop-b.jpg"):
        assert (rows[loop]["status"], rows[loop]["reason"]) == ("failed", "symlink_loop")
    assert rows["Zoë Ünïcødé 写真 portrait.png"]["status"] == "ok"
    assert (rows["cup.png"]["status"], rows["cup.png"]["reason"]) == ("rejected", "no_person")


@pytest.mark.slow
def test_one_sample_for_the_same_bytes_under_four_names(bad_build):
    """A link, two copies in one shard (second one never processed), one in another shard."""
    rows = _by_name(bad_build)
    group = ["linked.png", "portrait copy.png", "portrait.png", "z/portrait.png"]
    assert len({rows[n]["sample_id"] for n in group}) == 1
    keeper = min(group, key=lambda n: rows[n]["source_uri"])
    assert [rows[n]["status"] for n in group] == [
        "ok" if n == keeper else DUPLICATE for n in group]
    for name in group:
        if name != keeper:
            assert rows[name]["reason"] == DUPLICATE
            assert rows[keeper]["source_uri"] in rows[name]["detail"]
            assert rows[name]["n_composites"] == 0 and pd.isna(rows[name]["image_uri"])
    sid = rows[keeper]["sample_id"]
    composites = bad_build["composites"]
    assert (composites["sample_id"] == sid).sum() == rows[keeper]["n_composites"] == 3


@pytest.mark.slow
def test_exif_and_rgba_outputs_are_upright_and_use_the_computed_alpha(bad_build):
    rows, out, portrait = _by_name(bad_build), bad_build["out"], bad_build["portrait"]
    image = np.asarray(Image.open(out / rows["rotated.jpg"]["image_uri"]))
    assert image.shape == portrait.shape
    assert np.abs(image.astype(int) - portrait).mean() < 6
    rgba = rows["rgba.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / rgba["image_uri"])), portrait)
    alpha = np.asarray(Image.open(out / rgba["alpha_uri"]))
    ramp = np.linspace(0, 255, portrait.shape[1]).astype(np.uint8)
    assert np.abs(alpha.astype(int) - ramp[None, :]).mean() > 40  # the matte, not the ramp


@pytest.mark.slow
def test_small_background_is_scaled_up_and_corrupt_one_is_a_row_never_used(bad_build):
    bgs = {Path(r["source_uri"]).name: r for r in bad_build["backgrounds"].to_dict("records")}
    corrupt = bgs["corrupt.jpg"]
    assert (corrupt["status"], corrupt["reason"]) == ("failed", "decode_error")
    assert corrupt["detail"] and pd.isna(corrupt["bg_uri"])
    composites = bad_build["composites"]
    assert set(composites["bg_id"]) == {bgs[n]["bg_id"] for n in ("grass.png", "rocket.jpg",
                                                                  "small.png")}
    samples = bad_build["samples"].set_index("sample_id")
    for row in composites[composites["bg_id"] == bgs["small.png"]["bg_id"]].to_dict("records"):
        merged = Image.open(bad_build["out"] / row["merged_uri"])
        sample = samples.loc[row["sample_id"]]
        sample = sample[sample["status"] == "ok"].iloc[0] if sample.ndim == 2 else sample
        assert merged.size == (sample["width"], sample["height"]) == (row["width"], row["height"])
    ok = (bad_build["samples"]["status"] == "ok").sum()
    assert (composites["bg_id"] == bgs["small.png"]["bg_id"]).sum() == ok
    meta = json.loads((bad_build["out"] / "dataset.json").read_text())
    assert meta["counts"]["by_status"]["ok"] == ok
    assert meta["last_run"]["by_status"] == meta["counts"]["by_status"]  # duplicates recounted
