"""Replay a TFLite flatbuffer with torch ops, so no TensorFlow/LiteRT runtime is needed.

Rank-4 activations live in NCHW inside the module (torch's fast path); inputs and outputs keep
TFLite's layout (NHWC) so the module is a drop-in for a TFLite interpreter. Constant weights are
converted to torch layouts and fp16 constants are dequantized once, at load time.

Converted models are usually exported at batch 1, yet most run unchanged at batch N: the batch
axis rides along through convolutions, pools and element-wise ops. The exception is RESHAPE,
whose stored target bakes the batch in ([1, -1, 16] in BlazeFace), which at batch N would
silently fold the batch into the next axis; `batched_shape` gives it the batch back.

Example::

    net = load_tflite("selfie_segmentation.tflite")
    (mask,) = net(torch.zeros(1, 256, 256, 3))   # NHWC in, NHWC out
    (masks,) = net(torch.zeros(4, 256, 256, 3))  # a batch: what 4 runs of one would give
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from tflite.utils import opcode2name
from torch import Tensor, nn

Opts = dict[str, Any]
Runner = Callable[[list[Tensor], Opts], Tensor]

# Float models only: int8/uint8 tensors mean a quantized graph, which needs other kernels.
_NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
_TYPE_NAMES = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
_NCHW_PERM = (0, 3, 1, 2)  # NCHW axis j holds NHWC axis _NCHW_PERM[j]
_ACTIVATIONS: dict[int, Callable[[Tensor], Tensor]] = {
    0: lambda x: x,
    1: F.relu,
    2: lambda x: x.clamp(-1.0, 1.0),
    3: F.relu6,
    4: torch.tanh,
}


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding as (before, after): the odd pixel goes after, unlike torch's 'same'."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, opts: Opts, kernel: tuple[int, int], value: float = 0.0) -> Tensor:
    if opts["padding"] != 0:  # VALID
        return x
    top, bottom = same_padding(x.shape[2], kernel[0], opts["stride"][0], opts["dilation"][0])
    left, right = same_padding(x.shape[3], kernel[1], opts["stride"][1], opts["dilation"][1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


# --- op runners: (inputs, options) -> output; rank-4 tensors are NCHW -------------------------


def _conv(inp: list[Tensor], o: Opts) -> Tensor:
    x, w, b = inp[0], inp[1], inp[2] if len(inp) > 2 else None
    x = _pad_same(x, o, (w.shape[2], w.shape[3]))
    groups = x.shape[1] // w.shape[1]
    y = F.conv2d(x, w, b, stride=o["stride"], dilation=o["dilation"], groups=groups)
    return _ACTIVATIONS[o["act"]](y)


def _depthwise(inp: list[Tensor], o: Opts) -> Tensor:
    x, w, b = inp[0], inp[1], inp[2] if len(inp) > 2 else None
    x = _pad_same(x, o, (w.shape[2], w.shape[3]))
    y = F.conv2d(x, w, b, stride=o["stride"], dilation=o["dilation"], groups=x.shape[1])
    return _ACTIVATIONS[o["act"]](y)


def _transpose_conv_bias(inp: list[Tensor], o: Opts) -> Tensor:
    x, w, b = inp
    y = F.conv_transpose2d(x, w, b, stride=o["stride"])
    if o["padding"] == 1:  # SAME: output is input * stride, crop the full result
        out_h, out_w = x.shape[2] * o["stride"][0], x.shape[3] * o["stride"][1]
        top = same_padding(out_h, w.shape[2], o["stride"][0])[0]
        left = same_padding(out_w, w.shape[3], o["stride"][1])[0]
        y = y[:, :, top : top + out_h, left : left + out_w]
    return y


def _avg_pool(inp: list[Tensor], o: Opts) -> Tensor:
    x, k = inp[0], o["filter"]
    padded = _pad_same(x, o, k)
    y = F.avg_pool2d(padded, k, o["stride"])
    if padded is not x:  # TFLite averages over real pixels only: divide by a pooled mask
        ones = _pad_same(torch.ones_like(x[:1, :1]), o, k)
        y = y / F.avg_pool2d(ones, k, o["stride"])
    return _ACTIVATIONS[o["act"]](y)


def _max_pool(inp: list[Tensor], o: Opts) -> Tensor:
    x = _pad_same(inp[0], o, o["filter"], value=float("-inf"))
    return _ACTIVATIONS[o["act"]](F.max_pool2d(x, o["filter"], o["stride"]))


def _broadcastable(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Lift a lower-rank operand to NCHW so TFLite's NHWC broadcasting still lines up."""
    if a.dim() == 4 and 0 < b.dim() < 4:
        b = b.reshape((1,) * (4 - b.dim()) + tuple(b.shape)).permute(0, 3, 1, 2)
    elif b.dim() == 4 and 0 < a.dim() < 4:
        a = a.reshape((1,) * (4 - a.dim()) + tuple(a.shape)).permute(0, 3, 1, 2)
    return a, b


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Runner:
    def run(inp: list[Tensor], o: Opts) -> Tensor:
        return _ACTIVATIONS[o["act"]](fn(*_broadcastable(inp[0], inp[1])))

    return run


def _resize_bilinear(inp: list[Tensor], o: Opts) -> Tensor:
    x, size = inp[0], [int(v) for v in inp[1].tolist()]
    if o["align_corners"] or o["half_pixel"]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=o["align_corners"])
    # Legacy TF mapping (src = dst * in / out): sample explicitly.
    ys = torch.arange(size[0], device=x.device) * (x.shape[2] / size[0])
    xs = torch.arange(size[1], device=x.device) * (x.shape[3] / size[1])
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp(max=x.shape[2] - 1), (x0 + 1).clamp(max=x.shape[3] - 1)
    wy, wx = (ys - y0)[:, None].to(x.dtype), (xs - x0)[None, :].to(x.dtype)
    top = x[:, :, y0][..., x0] * (1 - wx) + x[:, :, y0][..., x1] * wx
    bottom = x[:, :, y1][..., x0] * (1 - wx) + x[:, :, y1][..., x1] * wx
    return top * (1 - wy) + bottom * wy


def _pad(inp: list[Tensor], o: Opts) -> Tensor:
    x, pads = inp[0], inp[1].tolist()
    if x.dim() == 4:
        pads = [pads[a] for a in _NCHW_PERM]
    flat = [int(v) for pair in reversed(pads) for v in pair]
    return F.pad(x, flat)


def batched_shape(shape: Sequence[int], x: Tensor, batch: int) -> list[int]:
    """A reshape target stored by a batch-1 export, for a run at batch `batch`.

    The converter wrote the batch as a leading 1; when the graph runs at batch N > 1 and the
    tensor being reshaped leads with N, that 1 is the batch, so it becomes N (a tensor of N
    photos reshaped per photo). At batch 1 the stored target is kept as is.
    """
    target = [int(v) for v in shape]
    if batch > 1 and len(target) >= 2 and target[0] == 1 and x.dim() >= 1 and x.shape[0] == batch:
        target[0] = batch
    return target


def _reshape(inp: list[Tensor], o: Opts) -> Tensor:
    shape = o["shape"] if o["shape"] is not None else [int(v) for v in inp[1].tolist()]
    x = _to_nhwc(inp[0])
    return _to_nchw(x.reshape(batched_shape(shape, x, o.get("batch", 1))))


def _concat(inp: list[Tensor], o: Opts) -> Tensor:
    axis = o["axis"] % inp[0].dim()
    if inp[0].dim() == 4:
        axis = _NCHW_PERM.index(axis)
    return _ACTIVATIONS[o["act"]](torch.cat(inp, dim=axis))


def _unary(fn: Callable[[Tensor], Tensor]) -> Runner:
    return lambda inp, o: fn(inp[0])


# --- option parsers: flatbuffer table -> plain dict --------------------------------------------


def _table(cls: type, op: Any) -> Any:
    opts, table = cls(), op.BuiltinOptions()
    if table is None:
        return None
    opts.Init(table.Bytes, table.Pos)
    return opts


def _conv_opts(cls: type) -> Callable[[Any], Opts]:
    def parse(op: Any) -> Opts:
        t = _table(cls, op)
        return {
            "padding": t.Padding(),
            "stride": (t.StrideH(), t.StrideW()),
            "dilation": (t.DilationHFactor(), t.DilationWFactor()),
            "act": t.FusedActivationFunction(),
        }

    return parse


def _pool_opts(op: Any) -> Opts:
    t = _table(tflite.Pool2DOptions, op)
    return {
        "padding": t.Padding(),
        "stride": (t.StrideH(), t.StrideW()),
        "filter": (t.FilterHeight(), t.FilterWidth()),
        "dilation": (1, 1),
        "act": t.FusedActivationFunction(),
    }


def _act_opts(cls: type) -> Callable[[Any], Opts]:
    def parse(op: Any) -> Opts:
        t = _table(cls, op)
        return {"act": t.FusedActivationFunction() if t else 0}

    return parse


def _resize_opts(op: Any) -> Opts:
    t = _table(tflite.ResizeBilinearOptions, op)
    return {"align_corners": t.AlignCorners(), "half_pixel": t.HalfPixelCenters()}


def _reshape_opts(op: Any) -> Opts:
    t = _table(tflite.ReshapeOptions, op)
    has_shape = t is not None and not t.NewShapeIsNone() and t.NewShapeLength() > 0
    return {"shape": t.NewShapeAsNumpy().tolist() if has_shape else None}


def _concat_opts(op: Any) -> Opts:
    t = _table(tflite.ConcatenationOptions, op)
    return {"axis": t.Axis(), "act": t.FusedActivationFunction()}


def _transpose_bias_opts(op: Any) -> Opts:
    padding, stride_w, stride_h = np.frombuffer(op.CustomOptionsAsNumpy().tobytes()[:12], "<i4")
    return {"padding": int(padding), "stride": (int(stride_h), int(stride_w))}


def _no_opts(op: Any) -> Opts:
    return {}


@dataclass(frozen=True)
class OpSpec:
    run: Runner
    parse: Callable[[Any], Opts] = _no_opts


OPS: dict[str, OpSpec] = {
    "CONV_2D": OpSpec(_conv, _conv_opts(tflite.Conv2DOptions)),
    "DEPTHWISE_CONV_2D": OpSpec(_depthwise, _conv_opts(tflite.DepthwiseConv2DOptions)),
    "Convolution2DTransposeBias": OpSpec(_transpose_conv_bias, _transpose_bias_opts),
    "AVERAGE_POOL_2D": OpSpec(_avg_pool, _pool_opts),
    "MAX_POOL_2D": OpSpec(_max_pool, _pool_opts),
    "ADD": OpSpec(_binary(torch.add), _act_opts(tflite.AddOptions)),
    "MUL": OpSpec(_binary(torch.mul), _act_opts(tflite.MulOptions)),
    "SUB": OpSpec(_binary(torch.sub), _act_opts(tflite.SubOptions)),
    "RESIZE_BILINEAR": OpSpec(_resize_bilinear, _resize_opts),
    "PAD": OpSpec(_pad),
    "RESHAPE": OpSpec(_reshape, _reshape_opts),
    "CONCATENATION": OpSpec(_concat, _concat_opts),
    "RELU": OpSpec(_unary(F.relu)),
    "RELU6": OpSpec(_unary(F.relu6)),
    "HARD_SWISH": OpSpec(_unary(F.hardswish)),
    "LOGISTIC": OpSpec(_unary(torch.sigmoid)),
    "TANH": OpSpec(_unary(torch.tanh)),
    "DEQUANTIZE": OpSpec(_unary(lambda x: x.float())),
}

# Constant layouts per (op, input position); any other rank-4 constant is treated as NHWC data.
_WEIGHT_LAYOUT: dict[tuple[str, int], Callable[[np.ndarray], np.ndarray]] = {
    ("CONV_2D", 1): lambda w: w.transpose(0, 3, 1, 2),  # OHWI -> OIHW
    ("DEPTHWISE_CONV_2D", 1): lambda w: w.transpose(3, 0, 1, 2),  # 1HW(C*m) -> (C*m)1HW
    ("Convolution2DTransposeBias", 1): lambda w: w.transpose(3, 0, 1, 2),  # OHWI -> IOHW
}


@dataclass(frozen=True)
class _Node:
    op: str
    run: Runner
    opts: Opts
    inputs: tuple[str, ...]  # "t<idx>" for activations, buffer names for constants
    output: int


def _op_name(model: Any, op: Any) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = opcode2name(builtin)
    return code.CustomCode().decode() if name == "CUSTOM" else name


def _constant(model: Any, tensor: Any) -> np.ndarray | None:
    buf = model.Buffers(tensor.Buffer())
    if buf is None or buf.DataLength() == 0:
        return None
    dtype = _NUMPY_TYPES.get(tensor.Type())
    if dtype is None:
        kind = _TYPE_NAMES.get(tensor.Type(), tensor.Type())
        raise NotImplementedError(f"TFLite {kind} constants are not supported (float models only)")
    return buf.DataAsNumpy().view(dtype).reshape(tensor.ShapeAsNumpy()).copy()


class TFLiteModule(nn.Module):
    """A TFLite subgraph 0 as an nn.Module; forward takes and returns NHWC tensors."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        if not tflite.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("not a TFLite flatbuffer (missing the TFL3 identifier)")
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        consts = {i: _constant(model, graph.Tensors(i)) for i in range(graph.TensorsLength())}
        consts = {i: c for i, c in consts.items() if c is not None}
        self.nodes: list[_Node] = []
        for n in range(graph.OperatorsLength()):
            op = graph.Operators(n)
            name = _op_name(model, op)
            spec = OPS.get(name)
            if spec is None:
                raise NotImplementedError(f"TFLite op {name!r} (operator #{n}) is not supported")
            ins = [int(i) for i in op.InputsAsNumpy()]
            (out,) = (int(i) for i in op.OutputsAsNumpy())
            if name == "DEQUANTIZE" and ins[0] in consts:
                consts[out] = consts[ins[0]].astype(np.float32)  # fold fp16 weights now
                continue
            self.nodes.append(
                _Node(name, spec.run, spec.parse(op), self._wire(n, name, ins, consts), out)
            )
        self.input_ids = [int(i) for i in graph.InputsAsNumpy()]
        self.output_ids = [int(i) for i in graph.OutputsAsNumpy()]

    def _wire(
        self, n: int, op: str, ins: list[int], consts: dict[int, np.ndarray]
    ) -> tuple[str, ...]:
        keys = []
        for pos, idx in enumerate(ins):
            if idx < 0:  # optional input left out
                continue
            if idx not in consts:
                keys.append(f"t{idx}")
                continue
            value = consts[idx]
            layout = _WEIGHT_LAYOUT.get((op, pos))
            if layout is not None:
                value = layout(value)
            elif value.ndim == 4:
                value = value.transpose(0, 3, 1, 2)
            key = f"c{n}_{pos}"
            self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(value)))
            keys.append(key)
        return tuple(keys)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """NHWC inputs (any batch N: each photo gives what a batch of one would) -> outputs."""
        env: dict[str, Tensor] = dict(self.named_buffers())
        for idx, x in zip(self.input_ids, inputs, strict=True):
            env[f"t{idx}"] = _to_nchw(x)
        batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() == 4 else 1
        for node in self.nodes:
            opts = {**node.opts, "batch": batch} if node.op == "RESHAPE" else node.opts
            env[f"t{node.output}"] = node.run([env[k] for k in node.inputs], opts)
        return tuple(_to_nhwc(env[f"t{i}"]).contiguous() for i in self.output_ids)


def load_tflite(source: str | Path | bytes) -> TFLiteModule:
    """Build an eval-mode module from a .tflite path or its bytes."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return TFLiteModule(data).eval()
