"""Run a TensorFlow.js graph model (``model.json`` + weight shards) with torch ops.

No TensorFlow, tfjs or node is needed at run time. The graph is the frozen TensorFlow GraphDef
that tfjs-converter writes (``modelTopology.node``); constants come from the binary shards listed
in ``weightsManifest``, dequantized at load (uint8/uint16 affine: q·scale + min; float16). Nodes
run in topological order, only those the requested outputs need. ``Switch``/``Merge`` control
flow is honoured as TensorFlow does: the untaken branch's outputs are *dead*, every node fed by a
dead tensor (data or control edge) is skipped, and ``Merge`` forwards its one live input.

Tensors keep TensorFlow's layout (NHWC); see `tfjs_ops` for how the ops map onto torch.

A graph exported at batch 1 runs at batch N (the batch is the leading axis of the rank-4 inputs):
convolutions, pools and element-wise ops carry the batch axis as is, and a Reshape to a stored
target with the batch baked in as a leading 1 (Meet's dense layers: [1, 16]) takes N there
(`tflite_torch.batched_shape`), so each photo of the batch gets what a batch of one would.

Example::

    net = load_tfjs("rvm.json")                    # rvm.bin next to it
    out = net({"src": x, "r1i": zero, ..., "downsample_ratio": torch.tensor(1.0)})
    out["pha"]                                     # NHWC, as named in the model's signature
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from matteforge.models.executors.tfjs_ops import DTYPES, FILTER_LAYOUTS, OPS, Attrs
from matteforge.models.executors.tflite_torch import batched_shape

_NUMPY = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
    "float16": np.float16,
    "uint16": np.uint16,
    "int64": np.int64,
}
# Ops the executor runs itself; "_FilterLayout" is inserted at load for computed filters.
_EXECUTOR_OPS = {
    "Switch",
    "Merge",
    "NoOp",
    "Placeholder",
    "PlaceholderWithDefault",
    "Const",
    "_FilterLayout",
}


_CONVS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}


class TfjsModelError(ValueError):
    """The model.json or its weight shards are malformed or do not match each other."""


# --- model.json parsing -----------------------------------------------------------------------


def decode_attr(value: Mapping[str, Any]) -> Any:
    """One AttrValue in tfjs JSON form -> a plain Python value (ints arrive as strings)."""
    if "list" in value:
        lst = value["list"]
        for key in ("i", "f", "b", "type"):
            if key in lst:
                return [decode_attr({key: v}) for v in lst[key]]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        return []
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "s" in value:
        return base64.b64decode(value["s"]).decode(errors="replace")
    if "type" in value:
        return value["type"]
    return value  # shape, tensor, func: not needed by the runners


def _split_ref(ref: str) -> tuple[str, int]:
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: tuple[tuple[str, int], ...]  # (producer, output index), data edges only
    controls: tuple[str, ...]  # producers of ^control edges
    attrs: Attrs


def _parse_node(raw: Mapping[str, Any]) -> _Node:
    refs = raw.get("input", [])
    data = tuple(_split_ref(r) for r in refs if not r.startswith("^"))
    controls = tuple(r[1:] for r in refs if r.startswith("^"))
    attrs = {k: decode_attr(v) for k, v in raw.get("attr", {}).items()}
    return _Node(raw["name"], raw["op"], data, controls, attrs)


# --- weights ----------------------------------------------------------------------------------


def _decode_weight(spec: Mapping[str, Any], data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = [int(s) for s in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    dtype = spec["dtype"]
    if dtype == "string":
        raise TfjsModelError(f"string weight {spec['name']!r} is not supported")
    if quant:
        stored = np.dtype(_NUMPY[quant["dtype"]])
        raw = np.frombuffer(data, stored, count, offset)
        if "scale" in quant:  # affine: JS computes in double, stores in the target type
            value = raw.astype(np.float64) * quant["scale"] + quant["min"]
            if dtype == "int32":
                value = np.round(value)
        else:  # float16
            value = raw
        array = value.astype(_NUMPY[dtype])
    else:
        stored = np.dtype(_NUMPY[dtype])
        array = np.frombuffer(data, stored, count, offset).copy()
    return array.reshape(shape), count * stored.itemsize


def read_weights(manifest: Sequence[Mapping[str, Any]], directory: Path) -> dict[str, np.ndarray]:
    """Decode every weight of every group; each group's shards are one concatenated buffer."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        parts = []
        for rel in group["paths"]:
            path = directory / rel
            if not path.is_file():
                raise TfjsModelError(f"weight shard {rel} not found next to the model ({path})")
            parts.append(path.read_bytes())
        data = b"".join(parts)
        offset = 0
        for spec in group["weights"]:
            try:
                weights[spec["name"]], size = _decode_weight(spec, data, offset)
            except ValueError as exc:
                raise TfjsModelError(f"weight {spec['name']!r}: {exc}") from None
            offset += size
        if offset != len(data):
            raise TfjsModelError(f"shards {group['paths']} hold {len(data)} bytes, specs {offset}")
    return weights


# --- the module -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    node: _Node
    free: tuple[str, ...]  # producers whose last consumer this step is


class TfjsGraphModule(nn.Module):
    """A tfjs graph model as an nn.Module: named NHWC tensors in, a dict of tensors out."""

    def __init__(self, model: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        topology = model.get("modelTopology", {})
        if "node" not in topology:
            raise TfjsModelError("not a tfjs graph model (modelTopology.node is missing)")
        if topology.get("library", {}).get("function"):
            raise TfjsModelError("graph functions (While/If bodies) are not supported")
        self.nodes: dict[str, _Node] = {}
        self._const_keys: dict[str, str] = {}
        for raw in topology["node"]:
            node = _parse_node(raw)
            if node.op not in OPS and node.op not in _EXECUTOR_OPS:
                raise NotImplementedError(
                    f"tfjs op {node.op!r} (node {node.name!r}) is not supported"
                )
            self.nodes[node.name] = node
        for node in list(self.nodes.values()):
            if node.op == "Const":
                if node.name not in weights:
                    raise TfjsModelError(f"constant {node.name!r} has no entry in weightsManifest")
                self._add_const(node.name, weights[node.name])
        self.signature = _signature(model, self.nodes)
        self._fold_pads(weights)
        self._convert_filters(weights)
        self._drop_unread_consts()
        self.order = self._topological_order()
        self._plans: dict[tuple[str, ...], list[_Step]] = {}

    def _add_const(self, name: str, value: np.ndarray | Tensor) -> None:
        key = f"c{len(self._const_keys)}"
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        self.register_buffer(key, value, persistent=True)
        self._const_keys[name] = key

    def _fold_pads(self, weights: Mapping[str, np.ndarray]) -> None:
        """Pad -> VALID conv becomes one conv with explicit padding (torch pads inside conv).

        Keras' ZeroPadding2D before each strided conv is a separate Pad op; padding inside the
        conv saves a full copy of the activation (about a quarter of the run time of RVM).
        """
        readers: dict[str, int] = {}
        for node in self.nodes.values():
            for src in [s for s, _ in node.inputs] + list(node.controls):
                readers[src] = readers.get(src, 0) + 1
        for node in list(self.nodes.values()):
            if node.op not in _CONVS or node.attrs.get("padding") != "VALID" or not node.inputs:
                continue
            pad = self.nodes.get(node.inputs[0][0])
            if pad is None or pad.op != "Pad" or readers.get(pad.name) != 1:
                continue
            amounts = self.nodes.get(pad.inputs[1][0])
            if amounts is None or amounts.op != "Const":
                continue
            pairs = weights[amounts.name].reshape(-1, 2).tolist()
            if len(pairs) != 4 or any(pairs[0]) or any(pairs[3]):
                continue  # batch or channel padding: keep the Pad
            attrs = {
                **node.attrs,
                "padding": "EXPLICIT",
                "explicit_paddings": [v for pair in pairs for v in pair],
            }
            inputs = (pad.inputs[0], *node.inputs[1:])
            # deadness still flows: the conv inherits the control edges of what it replaces
            controls = tuple(dict.fromkeys(node.controls + pad.controls + amounts.controls))
            self.nodes[node.name] = _Node(node.name, node.op, inputs, controls, attrs)
            del self.nodes[pad.name]

    def _convert_filters(self, weights: Mapping[str, np.ndarray]) -> None:
        """Give conv filters torch's layout: constants once, now; computed ones per run."""
        for node in list(self.nodes.values()):
            inputs = list(node.inputs)
            for pos, (src, idx) in enumerate(inputs):
                layout = FILTER_LAYOUTS.get((node.op, pos))
                if layout is None:
                    continue
                producer = self.nodes.get(src)
                alias = f"{src}:{idx}#{node.op}"
                if alias in self.nodes:
                    pass
                elif producer is not None and producer.op == "Const":
                    self._add_const(alias, layout(torch.from_numpy(weights[src].copy())))
                    self.nodes[alias] = _Node(alias, "Const", (), producer.controls, {})
                else:
                    attrs = {"layout": (node.op, pos)}
                    self.nodes[alias] = _Node(alias, "_FilterLayout", ((src, idx),), (), attrs)
                inputs[pos] = (alias, 0)
            if inputs != list(node.inputs):
                self.nodes[node.name] = _Node(
                    node.name, node.op, tuple(inputs), node.controls, node.attrs
                )

    def _drop_unread_consts(self) -> None:
        """Filters now live in their torch-layout copies: free the originals nobody reads."""
        read = {s for n in self.nodes.values() for s, _ in n.inputs}
        read |= {c for n in self.nodes.values() for c in n.controls}
        read |= {_split_ref(ref)[0] for ref in self.signature.outputs.values()}
        for name in [n.name for n in self.nodes.values() if n.op == "Const" and n.name not in read]:
            del self.nodes[name]
            delattr(self, self._const_keys.pop(name))

    def _topological_order(self) -> list[str]:
        pending = {n: 0 for n in self.nodes}
        users: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for src in {s for s, _ in node.inputs} | set(node.controls):
                if src not in self.nodes:
                    raise TfjsModelError(f"{node.name} reads {src!r}, which is not in the graph")
                pending[node.name] += 1
                users[src].append(node.name)
        ready = [n for n, k in pending.items() if k == 0]
        order: list[str] = []
        while ready:
            name = ready.pop()
            order.append(name)
            for user in users[name]:
                pending[user] -= 1
                if pending[user] == 0:
                    ready.append(user)
        if len(order) != len(self.nodes):
            raise TfjsModelError("the graph has a cycle (loops are not supported)")
        return order

    def _plan(self, outputs: tuple[str, ...]) -> list[_Step]:
        """Nodes the outputs need, in order, with the point where each value can be freed."""
        if outputs in self._plans:
            return self._plans[outputs]
        needed: set[str] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            node = self.nodes[name]
            stack.extend(s for s, _ in node.inputs)
            stack.extend(node.controls)
        steps = [self.nodes[n] for n in self.order if n in needed]
        last: dict[str, int] = {}
        for i, node in enumerate(steps):
            for src in {s for s, _ in node.inputs} | set(node.controls):
                last[src] = i
        frees: dict[int, list[str]] = {}
        for src, i in last.items():
            if src not in outputs:
                frees.setdefault(i, []).append(src)
        plan = [_Step(node, tuple(frees.get(i, ()))) for i, node in enumerate(steps)]
        self._plans[outputs] = plan
        return plan

    def _resolve_output(self, name: str) -> tuple[str, int]:
        if name in self.signature.outputs:
            name = self.signature.outputs[name]
        return _split_ref(name)

    def _resolve_input(self, name: str) -> str:
        if name in self.signature.inputs:
            name = self.signature.inputs[name]
        node_name = _split_ref(name)[0]
        if node_name not in self.nodes or self.nodes[node_name].op != "Placeholder":
            raise KeyError(f"{name!r} is not an input; inputs: {sorted(self.signature.inputs)}")
        return node_name

    def forward(
        self, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Run the graph; `outputs` are signature names or tensor names (default: signature)."""
        wanted = list(outputs) if outputs is not None else list(self.signature.outputs)
        refs = [self._resolve_output(o) for o in wanted]
        feeds = {self._resolve_input(k): v for k, v in inputs.items()}
        batch = max((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) == 4),
                    default=1)
        env: dict[str, tuple[Tensor | None, ...]] = {}
        dead: set[str] = set()
        for step in self._plan(tuple(sorted({n for n, _ in refs}))):
            node = step.node
            env[node.name] = self._run(node, env, dead, feeds, batch)
            if node.name in dead:
                env[node.name] = ()
            for src in step.free:
                env.pop(src, None)
        result: dict[str, Tensor] = {}
        for key, (name, idx) in zip(wanted, refs, strict=True):
            values = env.get(name, ())
            value = values[idx] if idx < len(values) else None
            if value is None:
                raise RuntimeError(f"output {key!r} is dead (its branch was not taken)")
            result[key] = value
        return result

    def _run(
        self,
        node: _Node,
        env: dict[str, tuple[Tensor | None, ...]],
        dead: set[str],
        feeds: Mapping[str, Tensor],
        batch: int = 1,
    ) -> tuple[Tensor | None, ...]:
        args = [env[s][i] if i < len(env[s]) else None for s, i in node.inputs]
        if node.op == "Merge":
            for index, value in enumerate(args):
                if value is not None:
                    return value, torch.tensor(index, dtype=torch.int32)
            dead.add(node.name)
            return ()
        if any(a is None for a in args) or any(c in dead for c in node.controls):
            dead.add(node.name)
            return ()
        if node.op == "Const":
            return (getattr(self, self._const_keys[node.name]),)
        if node.op in ("Placeholder", "PlaceholderWithDefault"):
            if node.name in feeds:
                x = feeds[node.name]
                dtype = DTYPES.get(node.attrs.get("dtype", "DT_FLOAT"), torch.float32)
                return (torch.as_tensor(x, dtype=dtype),)
            if node.op == "PlaceholderWithDefault":
                return (args[0],)
            raise KeyError(f"input {node.name!r} was not given")
        if node.op == "NoOp":
            return ()
        if node.op == "_FilterLayout":
            return (FILTER_LAYOUTS[node.attrs["layout"]](args[0]),)
        if node.op == "Switch":
            data, pred = args
            assert data is not None and pred is not None
            return (None, data) if bool(pred) else (data, None)
        if node.op == "Reshape" and batch > 1:
            x, target = args[0], args[1]
            assert x is not None and target is not None
            shape = batched_shape(target.reshape(-1).tolist(), x, batch)
            args = [x, torch.tensor(shape, dtype=target.dtype)]
        result = OPS[node.op](args, node.attrs)  # type: ignore[arg-type]
        return result if isinstance(result, tuple) else (result,)


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, str]  # friendly name -> tensor name ("src" -> "src:0")
    outputs: dict[str, str]  # friendly name -> tensor name ("pha" -> "Identity_1:0")


def _signature(model: Mapping[str, Any], nodes: Mapping[str, _Node]) -> Signature:
    sig = model.get("signature") or {}
    inputs = {k.split(":")[0]: v["name"] for k, v in sig.get("inputs", {}).items()}
    outputs = {k.split(":")[0]: v["name"] for k, v in sig.get("outputs", {}).items()}
    if not inputs:
        inputs = {n.name: f"{n.name}:0" for n in nodes.values() if n.op == "Placeholder"}
    if not outputs:  # sinks: nodes nobody reads
        read = {s for n in nodes.values() for s, _ in n.inputs} | {
            c for n in nodes.values() for c in n.controls
        }
        outputs = {
            n.name: f"{n.name}:0"
            for n in nodes.values()
            if n.name not in read and n.op not in _EXECUTOR_OPS
        }
    return Signature(inputs, outputs)


def load_tfjs(model_json: str | Path) -> TfjsGraphModule:
    """Build an eval-mode module from a model.json path; its shards are read from beside it."""
    path = Path(model_json)
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TfjsModelError(f"{path} is not a tfjs model.json: {exc}") from None
    if not isinstance(model, dict) or "weightsManifest" not in model:
        raise TfjsModelError(f"{path} is not a tfjs model.json (no weightsManifest)")
    weights = read_weights(model["weightsManifest"], path.parent)
    return TfjsGraphModule(model, weights).eval()
