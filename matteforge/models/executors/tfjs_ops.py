"""TensorFlow ops, as found in TensorFlow.js graph models, written as torch functions.

Tensors keep TensorFlow's logical layout (NHWC for images) so every axis, shape and slice
computation in the graph means what it meant in TensorFlow. Convolutions and pools run on an
NCHW *view* of the NHWC tensor (`permute`, no copy): torch treats it as channels-last memory and
uses its fast kernels. Convolution filters arrive already in torch layout (see `FILTER_LAYOUTS`).

A runner takes the node's inputs and its decoded attributes and returns one tensor or a tuple
(ops with several outputs, such as Split). A new op is one entry in `OPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from matteforge.models.executors import tflite_torch
from matteforge.models.executors.tflite_torch import same_padding

Attrs = dict[str, Any]
Runner = Callable[[list[Tensor], Attrs], Tensor | tuple[Tensor, ...]]

DTYPES: dict[str, torch.dtype] = {
    "DT_FLOAT": torch.float32,
    "DT_HALF": torch.float16,
    "DT_DOUBLE": torch.float64,
    "DT_INT32": torch.int32,
    "DT_INT64": torch.int64,
    "DT_UINT8": torch.uint8,
    "DT_BOOL": torch.bool,
}


# --- filter layouts: TensorFlow -> torch (at load time for constant filters) ------------------


def conv_filter(w: Tensor) -> Tensor:
    """HWIO -> OIHW."""
    return w.permute(3, 2, 0, 1).contiguous()


def depthwise_filter(w: Tensor) -> Tensor:
    """[kh, kw, C, mult] -> [C*mult, 1, kh, kw]; TF's output channel c*mult+m keeps its index."""
    kh, kw, c, mult = w.shape
    return w.reshape(kh, kw, c * mult).permute(2, 0, 1).unsqueeze(1).contiguous()


def transpose_conv_filter(w: Tensor) -> Tensor:
    """[kh, kw, out, in] -> [in, out, kh, kw] (conv_transpose2d's layout)."""
    return w.permute(3, 2, 0, 1).contiguous()


# (op, input position) -> layout; the executor converts constant filters once.
FILTER_LAYOUTS: dict[tuple[str, int], Callable[[Tensor], Tensor]] = {
    ("Conv2D", 1): conv_filter,
    ("_FusedConv2D", 1): conv_filter,
    ("DepthwiseConv2dNative", 1): depthwise_filter,
    ("FusedDepthwiseConv2dNative", 1): depthwise_filter,
    ("Conv2DBackpropInput", 1): transpose_conv_filter,
}


# --- convolutions and pools (NHWC in, NHWC out) ----------------------------------------------


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _spatial(values: Sequence[int]) -> tuple[int, int]:
    """NHWC attribute lists (strides, dilations, ksize) -> (h, w)."""
    return int(values[1]), int(values[2])


def _conv_padding(x: Tensor, a: Attrs, kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """TF padding as explicit (top, bottom, left, right) on an NCHW view; SAME: odd pixel after."""
    if a["padding"] == "VALID":
        return 0, 0, 0, 0
    if a["padding"] == "EXPLICIT":
        p = [int(v) for v in a["explicit_paddings"]]  # NHWC pairs
        return p[2], p[3], p[4], p[5]
    sh, sw = _spatial(a["strides"])
    dh, dw = _spatial(a.get("dilations") or (1, 1, 1, 1))
    return (
        *same_padding(x.shape[2], kernel[0], sh, dh),
        *same_padding(x.shape[3], kernel[1], sw, dw),
    )


def _conv_core(x: Tensor, w: Tensor, a: Attrs, groups: int) -> Tensor:
    xc = _nchw(x)
    top, bottom, left, right = _conv_padding(xc, a, (w.shape[2], w.shape[3]))
    padding = (top, left)
    if top != bottom or left != right:  # uneven: pad first (conv2d pads evenly only)
        xc, padding = F.pad(xc, (left, right, top, bottom)), (0, 0)
    y = F.conv2d(
        xc,
        w,
        stride=_spatial(a["strides"]),
        padding=padding,
        dilation=_spatial(a.get("dilations") or (1, 1, 1, 1)),
        groups=groups,
    )
    return _nhwc(y)


def _conv2d(inp: list[Tensor], a: Attrs) -> Tensor:
    x, w = inp[0], inp[1]
    return _conv_core(x, w, a, groups=x.shape[3] // w.shape[1])


def _depthwise(inp: list[Tensor], a: Attrs) -> Tensor:
    x, w = inp[0], inp[1]
    return _conv_core(x, w, a, groups=x.shape[3])


_FUSED_ACTIVATIONS: dict[str, Callable[[Tensor, Attrs, list[Tensor]], Tensor]] = {
    "Relu": lambda y, a, extra: F.relu(y),
    "Relu6": lambda y, a, extra: F.relu6(y),
    "Elu": lambda y, a, extra: F.elu(y),
    "Sigmoid": lambda y, a, extra: torch.sigmoid(y),
    "Tanh": lambda y, a, extra: torch.tanh(y),
    "LeakyRelu": lambda y, a, extra: F.leaky_relu(y, a.get("leakyrelu_alpha", 0.2)),
    "Prelu": lambda y, a, extra: torch.where(y >= 0, y, y * extra[1]),
}


def _fused(core: Runner) -> Runner:
    """Grappler's fusions: conv, then BiasAdd, then at most one activation."""

    def run(inp: list[Tensor], a: Attrs) -> Tensor:
        y = core(inp[:2], a)
        assert isinstance(y, Tensor)
        extra = inp[2:]
        for op in a.get("fused_ops", []):
            if op == "BiasAdd":
                y = y + extra[0]
            elif op in _FUSED_ACTIVATIONS:
                y = _FUSED_ACTIVATIONS[op](y, a, extra)
            else:
                raise NotImplementedError(f"fused op {op!r} is not supported")
        return y

    return run


def _conv_transpose(inp: list[Tensor], a: Attrs) -> Tensor:
    """Conv2DBackpropInput(output_shape, filter, x): crop the full transposed conv like TF."""
    out_shape, w, x = [int(v) for v in inp[0].tolist()], inp[1], inp[2]
    stride = _spatial(a["strides"])
    y = F.conv_transpose2d(_nchw(x), w, stride=stride)
    offsets = []
    for axis, (k, s) in enumerate(zip(w.shape[2:], stride, strict=True)):
        out = out_shape[1 + axis]
        if a["padding"] == "SAME":
            offsets.append(same_padding(out, k, s)[0])
        elif a["padding"] == "VALID":
            offsets.append(0)
        else:
            offsets.append(int(a["explicit_paddings"][2 + 2 * axis]))
    (top, left), (oh, ow) = offsets, out_shape[1:3]
    y = y[:, :, top : top + oh, left : left + ow]
    if y.shape[2] < oh or y.shape[3] < ow:  # TF allows an output bigger than the full conv
        y = F.pad(y, (0, ow - y.shape[3], 0, oh - y.shape[2]))
    return _nhwc(y)


def _pool_opts(a: Attrs) -> dict[str, Any]:
    return {
        "padding": 0 if a["padding"] == "SAME" else 1,  # TFLite enum: 0 SAME, 1 VALID
        "stride": _spatial(a["strides"]),
        "filter": _spatial(a["ksize"]),
        "dilation": (1, 1),
        "act": 0,
    }


def _pool(tflite_op: str) -> Runner:
    """Same semantics as TFLite's pools (SAME averages real pixels only): reuse those."""
    spec = tflite_torch.OPS[tflite_op]

    def run(inp: list[Tensor], a: Attrs) -> Tensor:
        return _nhwc(spec.run([_nchw(inp[0])], _pool_opts(a)))

    return run


def _resize_bilinear(inp: list[Tensor], a: Attrs) -> Tensor:
    opts = {
        "align_corners": a.get("align_corners", False),
        "half_pixel": a.get("half_pixel_centers", False),
    }
    return _nhwc(tflite_torch.OPS["RESIZE_BILINEAR"].run([_nchw(inp[0]), inp[1]], opts))


def _resize_nearest(inp: list[Tensor], a: Attrs) -> Tensor:
    h, w = (int(v) for v in inp[1].tolist())
    x = inp[0]
    if a.get("align_corners", False):
        raise NotImplementedError("ResizeNearestNeighbor with align_corners is not supported")
    offset = 0.5 if a.get("half_pixel_centers", False) else 0.0
    ys = ((torch.arange(h, device=x.device) + offset) * (x.shape[1] / h)).floor().long()
    xs = ((torch.arange(w, device=x.device) + offset) * (x.shape[2] / w)).floor().long()
    ys, xs = ys.clamp(max=x.shape[1] - 1), xs.clamp(max=x.shape[2] - 1)
    return x[:, ys][:, :, xs]


def _space_to_batch(inp: list[Tensor], a: Attrs) -> Tensor:
    """[B, *spatial, C] -> [prod(block)*B, *spatial/block, C], TF's batch-major block order."""
    x, block, pads = inp[0], _ints(inp[1]), _pairs(inp[2])
    m = len(block)
    flat = [int(v) for pair in reversed(pads) for v in pair]
    if any(flat):  # F.pad counts from the last axis: the channel axes get no padding
        x = F.pad(x, [0, 0] * (x.dim() - 1 - m) + flat)
    b, spatial, rest = x.shape[0], x.shape[1 : 1 + m], x.shape[1 + m :]
    split = [b]
    for size, blk in zip(spatial, block, strict=True):
        split += [size // blk, blk]
    x = x.reshape(*split, *rest)
    perm = [2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)]
    perm += list(range(1 + 2 * m, x.dim()))
    x = x.permute(perm)
    return x.reshape(
        b * int(np.prod(block)), *(s // k for s, k in zip(spatial, block, strict=True)), *rest
    )


def _batch_to_space(inp: list[Tensor], a: Attrs) -> Tensor:
    x, block, crops = inp[0], _ints(inp[1]), _pairs(inp[2])
    m = len(block)
    b = x.shape[0] // int(np.prod(block))
    spatial, rest = x.shape[1 : 1 + m], x.shape[1 + m :]
    x = x.reshape(*block, b, *spatial, *rest)
    perm = [m]
    for i in range(m):
        perm += [m + 1 + i, i]
    perm += list(range(2 * m + 1, x.dim()))
    x = x.permute(perm).reshape(b, *(s * k for s, k in zip(spatial, block, strict=True)), *rest)
    index: list[slice] = [slice(None)]
    for axis, (lo, hi) in enumerate(crops):
        index.append(slice(lo, x.shape[1 + axis] - hi))
    return x[tuple(index)]


# --- shapes, slicing and joining --------------------------------------------------------------


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _pairs(t: Tensor) -> list[tuple[int, int]]:
    """Paddings/crops as (before, after) pairs; like tfjs, nested values are read flat."""
    flat = _ints(t)
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _axis(t: Tensor, rank: int) -> int:
    return int(t) % max(rank, 1)


def _bits(mask: int, i: int) -> bool:
    return bool((mask >> i) & 1)


def _strided_slice(inp: list[Tensor], a: Attrs) -> Tensor:
    x = inp[0]
    begin, end, strides = _ints(inp[1]), _ints(inp[2]), _ints(inp[3])
    index: list[Any] = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
        if _bits(a.get("ellipsis_mask", 0), i):
            index.append(Ellipsis)
        elif _bits(a.get("new_axis_mask", 0), i):
            index.append(None)
        elif _bits(a.get("shrink_axis_mask", 0), i):
            index.append(b)
        else:
            if s <= 0:
                raise NotImplementedError("StridedSlice with a non-positive stride")
            lo = None if _bits(a.get("begin_mask", 0), i) else b
            hi = None if _bits(a.get("end_mask", 0), i) else e
            index.append(slice(lo, hi, s))
    return x[tuple(index)]


def _slice(inp: list[Tensor], a: Attrs) -> Tensor:
    x, begin, size = inp[0], _ints(inp[1]), _ints(inp[2])
    index = tuple(
        slice(b, x.shape[d] if n < 0 else b + n)
        for d, (b, n) in enumerate(zip(begin, size, strict=True))
    )
    return x[index]


def _pad(inp: list[Tensor], a: Attrs) -> Tensor:
    x, pads = inp[0], _pairs(inp[1])
    value = float(inp[2]) if len(inp) > 2 else 0.0
    flat = [int(v) for pair in reversed(pads) for v in pair]
    return F.pad(x, flat, value=value) if any(flat) else x


def _mirror_pad(inp: list[Tensor], a: Attrs) -> Tensor:
    x, pads = inp[0], _pairs(inp[1])
    if x.dim() != 4 or any(pads[0]) or any(pads[3]):
        raise NotImplementedError("MirrorPad only on the spatial axes of NHWC tensors")
    mode = "reflect" if a.get("mode") == "REFLECT" else "replicate"
    if a.get("mode") == "SYMMETRIC":
        raise NotImplementedError("MirrorPad SYMMETRIC is not supported")
    (top, bottom), (left, right) = pads[1], pads[2]
    return _nhwc(F.pad(_nchw(x), (left, right, top, bottom), mode=mode))


def _concat(inp: list[Tensor], a: Attrs) -> Tensor:
    parts = inp[:-1]
    return torch.cat(parts, dim=_axis(inp[-1], parts[0].dim()))


def _pack(inp: list[Tensor], a: Attrs) -> Tensor:
    """Like tfjs: parts whose shapes differ only by size-1 axes take the first one's shape."""
    shape = inp[0].shape
    parts = [t if t.shape == shape else t.reshape(shape) for t in inp]
    return torch.stack(parts, dim=a.get("axis", 0) % (len(shape) + 1))


def _unpack(inp: list[Tensor], a: Attrs) -> tuple[Tensor, ...]:
    return torch.unbind(inp[0], dim=a.get("axis", 0) % inp[0].dim())


def _split(inp: list[Tensor], a: Attrs) -> tuple[Tensor, ...]:
    x = inp[1]
    axis = _axis(inp[0], x.dim())
    return torch.split(x, x.shape[axis] // a["num_split"], dim=axis)


def _split_v(inp: list[Tensor], a: Attrs) -> tuple[Tensor, ...]:
    x, sizes = inp[0], _ints(inp[1])
    axis = _axis(inp[2], x.dim())
    if -1 in sizes:
        sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
    return torch.split(x, sizes, dim=axis)


def _reshape(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0].reshape(_ints(inp[1]))


def _squeeze(inp: list[Tensor], a: Attrs) -> Tensor:
    x, dims = inp[0], a.get("squeeze_dims") or []
    if not dims:
        return x.squeeze()
    keep = {d % x.dim() for d in dims}
    return x.reshape([s for d, s in enumerate(x.shape) if d not in keep])


def _expand_dims(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0].unsqueeze(int(inp[1]) % (inp[0].dim() + 1))


def _transpose(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0].permute(_ints(inp[1]))


def _shape(inp: list[Tensor], a: Attrs) -> Tensor:
    dtype = DTYPES[a.get("out_type", "DT_INT32")]
    return torch.tensor(inp[0].shape, dtype=dtype, device=inp[0].device)


def _cast(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0].to(DTYPES[a["DstT"]])


def _broadcast_to(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0].expand(_ints(inp[1]))


def _fill(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[1].expand(_ints(inp[0])).clone()


def _reduce(fn: Callable[..., Tensor]) -> Runner:
    def run(inp: list[Tensor], a: Attrs) -> Tensor:
        x = inp[0]
        dims = tuple(d % x.dim() for d in _ints(inp[1]))
        if not dims:
            return x
        return fn(x, dim=dims, keepdim=bool(a.get("keep_dims", False)))

    return run


def _amax(x: Tensor, dim: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.amax(x, dim=dim, keepdim=keepdim)


# --- arithmetic ------------------------------------------------------------------------------


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Runner:
    return lambda inp, a: fn(inp[0], inp[1])


def _unary(fn: Callable[[Tensor], Tensor]) -> Runner:
    return lambda inp, a: fn(inp[0])


def _real_div(x: Tensor, y: Tensor) -> Tensor:
    return torch.div(x, y)


def _floor_div(x: Tensor, y: Tensor) -> Tensor:
    return torch.div(x, y, rounding_mode="floor")


def _equal(inp: list[Tensor], a: Attrs) -> Tensor:
    try:
        return torch.eq(inp[0], inp[1])
    except RuntimeError:
        if a.get("incompatible_shape_error", True):
            raise
        return torch.tensor(False)  # TF: incompatible shapes compare unequal


def _matmul(transpose_x: str, transpose_y: str) -> Runner:
    """MatMul (transpose_a/_b) and BatchMatMulV2 (adj_x/_y): the same product, other names."""

    def run(inp: list[Tensor], a: Attrs) -> Tensor:
        x, y = inp[0], inp[1]
        if a.get(transpose_x, False):
            x = x.transpose(-1, -2)
        if a.get(transpose_y, False):
            y = y.transpose(-1, -2)
        return x @ y

    return run


def _fused_batch_norm(inp: list[Tensor], a: Attrs) -> Tensor:
    x, scale, offset, mean, var = inp[:5]
    return (x - mean) * torch.rsqrt(var + a.get("epsilon", 1e-3)) * scale + offset


def _add_n(inp: list[Tensor], a: Attrs) -> Tensor:
    out = inp[0]
    for t in inp[1:]:
        out = out + t
    return out


def _identity(inp: list[Tensor], a: Attrs) -> Tensor:
    return inp[0]


OPS: dict[str, Runner] = {
    "Conv2D": _conv2d,
    "_FusedConv2D": _fused(_conv2d),
    "DepthwiseConv2dNative": _depthwise,
    "FusedDepthwiseConv2dNative": _fused(_depthwise),
    "Conv2DBackpropInput": _conv_transpose,
    "AvgPool": _pool("AVERAGE_POOL_2D"),
    "MaxPool": _pool("MAX_POOL_2D"),
    "ResizeBilinear": _resize_bilinear,
    "ResizeNearestNeighbor": _resize_nearest,
    "SpaceToBatchND": _space_to_batch,
    "BatchToSpaceND": _batch_to_space,
    "StridedSlice": _strided_slice,
    "Slice": _slice,
    "Pad": _pad,
    "PadV2": _pad,
    "MirrorPad": _mirror_pad,
    "ConcatV2": _concat,
    "Pack": _pack,
    "Unpack": _unpack,
    "Split": _split,
    "SplitV": _split_v,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Transpose": _transpose,
    "Shape": _shape,
    "Cast": _cast,
    "BroadcastTo": _broadcast_to,
    "Fill": _fill,
    "Mean": _reduce(torch.mean),
    "Sum": _reduce(torch.sum),
    "Max": _reduce(_amax),
    "Add": _binary(torch.add),
    "AddV2": _binary(torch.add),
    "BiasAdd": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "RealDiv": _binary(_real_div),
    "FloorDiv": _binary(_floor_div),
    "FloorMod": _binary(torch.remainder),
    "Minimum": _binary(torch.minimum),
    "Maximum": _binary(torch.maximum),
    "Pow": _binary(torch.pow),
    "SquaredDifference": _binary(lambda x, y: (x - y) * (x - y)),
    "Equal": _equal,
    "Greater": _binary(torch.gt),
    "Less": _binary(torch.lt),
    "MatMul": _matmul("transpose_a", "transpose_b"),
    "BatchMatMulV2": _matmul("adj_x", "adj_y"),
    "FusedBatchNorm": _fused_batch_norm,
    "FusedBatchNormV3": _fused_batch_norm,
    "AddN": _add_n,
    "Relu": _unary(F.relu),
    "Relu6": _unary(F.relu6),
    "Elu": _unary(F.elu),
    "LeakyRelu": lambda inp, a: F.leaky_relu(inp[0], a.get("alpha", 0.2)),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Softmax": _unary(lambda x: torch.softmax(x, dim=-1)),
    "Square": _unary(lambda x: x * x),
    "Sqrt": _unary(torch.sqrt),
    "Rsqrt": _unary(torch.rsqrt),
    "Exp": _unary(torch.exp),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Identity": _identity,
    "StopGradient": _identity,
    "Snapshot": _identity,
}
