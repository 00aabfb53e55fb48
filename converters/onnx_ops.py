"""ONNX operators as torch code, one small function per op (an onnx2torch-style registry).

Each function takes ``(inputs, attrs)``: the node's inputs as tensors (``None`` for omitted
optional ones) and its attributes as Python values, and returns a tensor or a tuple.
Running these inside the eager tracer turns an ONNX graph into the same traced ops a
PyTorch model gives, so every converter rule applies unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .limits import MAX_WINDOW
from .tensor_info import broadcast_shape

ONNX_OPS: dict[str, Callable] = {}


def onnx_op(*names: str):
    def deco(fn):
        for name in names:
            ONNX_OPS[name] = fn
        return fn

    return deco


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(inputs, attrs, index: int = 1) -> list[int] | None:
    """Axes from the attribute (old opsets) or the optional input (new opsets)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    return _ints(inputs[index]) if len(inputs) > index else None


# --- dense and convolution -------------------------------------------------------
@onnx_op("Gemm")
def gemm(i, a):
    x, w = i[0], i[1]
    c = i[2] if len(i) > 2 else None
    x = x.t() if a.get("transA", 0) else x
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transB", 0):
        y = F.linear(x, w)
    else:
        y = torch.matmul(x, w)
    y = y * alpha if alpha != 1.0 else y
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@onnx_op("MatMul")
def matmul(i, a):
    return torch.matmul(i[0], i[1])


def _conv_padding(x: Tensor, a: dict, kernel: list[int], dims: int):
    pads = list(a.get("pads", [0] * 2 * dims))
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    strides = list(a.get("strides", [1] * dims))
    dil = list(a.get("dilations", [1] * dims))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * dims
        for d in range(dims):
            size = x.shape[2 + d]
            out = math.ceil(size / strides[d])
            total = max((out - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads[d], pads[d + dims] = (small, big) if auto == "SAME_UPPER" else (big, small)
    begin, end = pads[:dims], pads[dims:]
    if begin != end:  # asymmetric: pad explicitly
        widths = []
        for d in reversed(range(dims)):
            widths += [begin[d], end[d]]
        return F.pad(x, widths), [0] * dims, strides, dil
    return x, begin, strides, dil


@onnx_op("Conv")
def conv(i, a):
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    dims = w.dim() - 2
    x, padding, stride, dil = _conv_padding(x, a, list(w.shape[2:]), dims)
    fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return fn(x, w, b, stride, padding, dil, a.get("group", 1))


@onnx_op("ConvTranspose")
def conv_transpose(i, a):
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    dims = w.dim() - 2
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        raise ValueError("asymmetric ConvTranspose padding is not supported")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    return fn(x, w, b, list(a.get("strides", [1] * dims)), pads[:dims],
              list(a.get("output_padding", [0] * dims)), a.get("group", 1), list(a.get("dilations", [1] * dims)))


# --- normalisation ---------------------------------------------------------------
@onnx_op("BatchNormalization")
def batch_norm(i, a):
    """Inference normalises with the running statistics. In train mode (``_training``, the
    module's mode, as ``nn.BatchNorm`` reads it) the batch's statistics normalise and the
    running ones are updated in place by ``_momentum`` in torch's sense (the new batch's
    share); without it, by the node's own ``momentum`` (ONNX's: the share kept, 0.9 by default)."""
    momentum = a.get("_momentum")
    if momentum is None:
        momentum = 1.0 - a.get("momentum", 0.9)
    return F.batch_norm(i[0], i[3], i[4], i[1], i[2], a.get("_training", False), momentum, a.get("epsilon", 1e-5))


@onnx_op("InstanceNormalization")
def instance_norm(i, a):
    return F.instance_norm(i[0], weight=i[1], bias=i[2], eps=a.get("epsilon", 1e-5))


@onnx_op("LayerNormalization")
def layer_norm(i, a):
    x = i[0]
    axis = a.get("axis", -1) % x.dim()
    b = i[2] if len(i) > 2 else None
    return F.layer_norm(x, list(x.shape[axis:]), i[1], b, a.get("epsilon", 1e-5))


@onnx_op("GroupNormalization")
def group_norm(i, a):
    x, groups = i[0], a["num_groups"]
    return F.group_norm(x, groups, i[1], i[2], a.get("epsilon", 1e-5))


@torch.library.custom_op("gmn::local_response_norm", mutates_args=())
def local_response_norm(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """LRN as one traced op (its decomposition would hide which channels it mixes)."""
    return F.local_response_norm(x, size, alpha, beta, k)


@local_response_norm.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x)


@onnx_op("LRN")
def lrn(i, a):
    return local_response_norm(i[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))


# --- elementwise ----------------------------------------------------------------
for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
}.items():
    ONNX_OPS[_name] = (lambda fn: lambda i, a: fn(i[0], i[1]))(_fn)

for _name, _fn in {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
    "Softplus": F.softplus, "HardSwish": F.hardswish, "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not,
    "Identity": lambda x: x, "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign, "Mish": F.mish,
}.items():
    ONNX_OPS[_name] = (lambda fn: lambda i, a: fn(i[0]))(_fn)


@onnx_op("Sum")
def sum_(i, a):
    out = i[0]
    for t in i[1:]:
        out = out + t
    return out


@onnx_op("Max", "Min")
def max_min(i, a):
    fn = torch.maximum if a.get("_op") == "Max" else torch.minimum
    out = i[0]
    for t in i[1:]:
        out = fn(out, t)
    return out


@onnx_op("IsNaN")
def isnan(i, a):
    return torch.isnan(i[0])


@onnx_op("IsInf")
def isinf(i, a):
    return torch.isinf(i[0])


@onnx_op("CumSum")
def cumsum(i, a):
    x, axis = i[0], int(i[1].reshape(-1)[0])
    if a.get("exclusive", 0) or a.get("reverse", 0):
        raise ValueError("exclusive or reverse CumSum is not supported")
    return torch.cumsum(x, axis)


@onnx_op("GatherND")
def gather_nd(i, a):
    data, idx = i[0], i[1].long()
    batch = a.get("batch_dims", 0)
    if batch:
        raise ValueError("GatherND with batch_dims is not supported")
    depth = idx.shape[-1]
    flat = idx.reshape(-1, depth)
    out = data[tuple(flat[:, d] for d in range(depth))]
    return out.reshape(idx.shape[:-1] + data.shape[depth:])


@onnx_op("Trilu")
def trilu(i, a):
    k = int(i[1].reshape(-1)[0]) if len(i) > 1 and i[1] is not None else 0
    return torch.triu(i[0], k) if a.get("upper", 1) else torch.tril(i[0], k)


@onnx_op("LeakyRelu")
def leaky_relu(i, a):
    return F.leaky_relu(i[0], a.get("alpha", 0.01))


def prelu_slope_shape(x: tuple[int, ...], slope: tuple[int, ...], opset: int) -> tuple[int, ...]:
    """The shape PRelu's ``slope`` broadcasts with against an input of shape ``x``.

    Opsets 1-6 apply a 1-D slope of C values along the channel axis of an (N, C, ...) input:
    it is read as (C, 1, ..., 1), as onnxruntime and onnx2torch do. Later opsets broadcast it
    unidirectionally (numpy-style), where a per-channel slope is spelled (C, 1, ..., 1) in the
    file. The op and its allocation (:data:`SIZES`) both use this shape."""
    x, slope = tuple(x), tuple(slope)
    if opset < 7 and len(x) >= 2 and len(slope) == 1 and slope[0] == x[1]:
        return slope + (1,) * (len(x) - 2)
    return slope


@onnx_op("PRelu")
def prelu(i, a):
    x, slope = i[0], i[1]
    shape = prelu_slope_shape(x.shape, slope.shape, a["_opset"])
    channels = x.shape[1] if x.dim() >= 2 else 1
    if slope.numel() == 1 or (x.dim() >= 2 and shape == (channels,) + (1,) * (x.dim() - 2)):
        return F.prelu(x, slope.reshape(-1))
    # any other broadcast: written out (the converter pins it)
    return torch.where(x >= 0, x, x * slope.reshape(shape))


#: ONNX pad modes as torch's
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@onnx_op("Pad")
def pad(i, a):
    x = i[0]
    if "pads" in a:  # opsets 1-10: attributes
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = _ints(i[1])
        value = float(i[2].reshape(-1)[0]) if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    axes = [d % x.dim() for d in axes]
    n = len(axes)
    if len(pads) != 2 * n:
        raise ValueError(f"Pad: {len(pads)} pads for {n} axes")
    widths = [0] * (2 * x.dim())
    for k, d in enumerate(axes):  # torch wants (last begin, last end, second last begin, ...)
        widths[2 * (x.dim() - 1 - d)], widths[2 * (x.dim() - 1 - d) + 1] = pads[k], pads[k + n]
    while len(widths) > 2 and widths[-2:] == [0, 0]:
        widths = widths[:-2]  # torch pads leading axes only in constant mode
    mode = _PAD_MODES.get(a.get("mode", "constant"))
    if mode is None:
        raise ValueError(f"Pad: unknown mode {a.get('mode')!r}")
    return F.pad(x, widths, mode=mode, value=value) if mode == "constant" else F.pad(x, widths, mode=mode)


@onnx_op("Elu")
def elu(i, a):
    return F.elu(i[0], a.get("alpha", 1.0))


@onnx_op("Selu")
def selu(i, a):
    return F.selu(i[0])


@onnx_op("HardSigmoid")
def hard_sigmoid(i, a):
    return torch.clamp(i[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1)


@onnx_op("Gelu")
def gelu(i, a):
    approx = a.get("approximate", "none")
    return F.gelu(i[0], approximate=approx.decode() if isinstance(approx, bytes) else approx)


@onnx_op("Clip")
def clip(i, a):
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    lo = float(lo) if isinstance(lo, Tensor) else lo
    hi = float(hi) if isinstance(hi, Tensor) else hi
    return torch.clamp(i[0], lo, hi)


@onnx_op("Softmax", "LogSoftmax")
def softmax(i, a):
    fn = F.log_softmax if a["_op"] == "LogSoftmax" else F.softmax
    x = i[0]
    if a["_opset"] < 13:  # opsets 1-12: over the input flattened to 2-D at ``axis`` (default 1)
        axis = a.get("axis", 1) % max(x.dim(), 1)
        return fn(x.reshape(*x.shape[:axis], -1), -1).reshape(x.shape)
    return fn(x, a.get("axis", -1))


@onnx_op("Where")
def where(i, a):
    return torch.where(i[0].bool(), i[1], i[2])


@onnx_op("Cast", "CastLike")
def cast(i, a):
    if "to" in a:
        import numpy as np
        from onnx.helper import tensor_dtype_to_np_dtype

        dtype = torch.from_numpy(np.zeros(0, dtype=tensor_dtype_to_np_dtype(a["to"]))).dtype
    else:
        dtype = i[1].dtype
    return i[0].to(dtype)


@onnx_op("Dropout")
def dropout(i, a):
    return i[0]


# --- shapes -----------------------------------------------------------------------
@onnx_op("Shape")
def shape(i, a):
    dims = list(i[0].shape)[a.get("start", 0) : a.get("end", None)]
    return torch.tensor(dims, dtype=torch.long)


@onnx_op("Size")
def size(i, a):
    return torch.tensor(i[0].numel(), dtype=torch.long)


@onnx_op("Reshape")
def reshape(i, a):
    x, target = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        target = [x.shape[d] if s == 0 else s for d, s in enumerate(target)]
    return x.reshape(target)


@onnx_op("Flatten")
def flatten(i, a):
    x, axis = i[0], a.get("axis", 1) % max(i[0].dim(), 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


@onnx_op("Transpose")
def transpose(i, a):
    perm = a.get("perm", list(reversed(range(i[0].dim()))))
    return i[0].permute(*perm)


@onnx_op("Squeeze")
def squeeze(i, a):
    axes = _axes(i, a)
    return i[0].squeeze() if axes is None else i[0].squeeze(tuple(axes))


@onnx_op("Unsqueeze")
def unsqueeze(i, a):
    x = i[0]
    axes = sorted(d % (x.dim() + len(_axes(i, a))) for d in _axes(i, a))
    for d in axes:
        x = x.unsqueeze(d)
    return x


@onnx_op("Concat")
def concat(i, a):
    return torch.cat([t for t in i if t is not None], a["axis"])


@onnx_op("Split")
def split(i, a):
    x, axis = i[0], a.get("axis", 0)
    sizes = list(a["split"]) if "split" in a else _ints(i[1]) if len(i) > 1 and i[1] is not None else None
    if sizes is None:
        n = a.get("num_outputs", a.get("_outputs", 1))
        sizes = [math.ceil(x.shape[axis] / n)] * (n - 1)
        sizes.append(x.shape[axis] - sum(sizes))
    return tuple(torch.split(x, sizes, axis))


@onnx_op("SplitToSequence")
def split_to_sequence(i, a):
    x, axis = i[0], a.get("axis", 0)
    split = i[1] if len(i) > 1 else None
    if split is None:
        parts = torch.split(x, 1, axis)
        return parts if a.get("keepdims", 1) else [p.squeeze(axis) for p in parts]
    sizes = _ints(split)
    return list(torch.split(x, sizes[0] if split.dim() == 0 else sizes, axis))


@onnx_op("SequenceAt")
def sequence_at(i, a):
    return i[0][int(i[1].reshape(-1)[0])]


@onnx_op("Slice")
def slice_(i, a):
    x = i[0]
    if "starts" in a:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else None
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n = x.shape[ax]
        s, e = max(min(s if s >= 0 else s + n, n), 0), max(min(e if e >= 0 else e + n, n), 0)
        if st < 0:
            raise ValueError("negative Slice steps are not supported")
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


@onnx_op("Gather")
def gather(i, a):
    data, idx, axis = i[0], i[1], a.get("axis", 0)
    if axis == 0 and data.dim() == 2 and not idx.is_floating_point() and isinstance(data, torch.nn.Parameter):
        return F.embedding(idx.long(), data)
    return torch.index_select(data, axis, idx.reshape(-1).long() % data.shape[axis]).reshape(
        data.shape[:axis] + idx.shape + data.shape[axis + 1 :])


@onnx_op("Expand")
def expand(i, a):
    x, target = i[0], _ints(i[1])
    out = broadcast_shape(tuple(x.shape), tuple(target))
    return x.expand(out)


@onnx_op("Tile")
def tile(i, a):
    return i[0].repeat(*_ints(i[1]))


@onnx_op("ConstantOfShape")
def constant_of_shape(i, a):
    value = a.get("value", torch.zeros(1))
    return value.reshape(-1)[0].expand(_ints(i[0])).clone()


@onnx_op("Range")
def range_(i, a):
    start, limit, delta = i[0].item(), i[1].item(), i[2].item()
    if (limit - start) * delta <= 0:  # ONNX: max(ceil((limit - start) / delta), 0) elements
        return torch.empty(0, dtype=i[0].dtype)
    return torch.arange(start, limit, delta, dtype=i[0].dtype)


@onnx_op("TopK")
def topk(i, a):
    k = int(i[1].reshape(-1)[0]) if len(i) > 1 else a["k"]
    values, indices = torch.topk(i[0], k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)),
                                 sorted=bool(a.get("sorted", 1)))
    return values, indices


@onnx_op("ScatterElements", "Scatter")
def scatter_elements(i, a):
    if a.get("reduction", "none") not in ("none", b"none"):
        raise ValueError("ScatterElements with a reduction is not supported")
    return torch.scatter(i[0], a.get("axis", 0), i[1].long(), i[2])


@onnx_op("GatherElements")
def gather_elements(i, a):
    return torch.gather(i[0], a.get("axis", 0), i[1].long())


# --- reductions and pooling -------------------------------------------------------
def _reduce(fn):
    def op(i, a):
        axes = _axes(i, a)
        keep = bool(a.get("keepdims", 1))
        if axes is None or axes == []:
            if a.get("noop_with_empty_axes", 0):
                return i[0]
            axes = list(range(i[0].dim()))
        return fn(i[0], axes, keep)

    return op


ONNX_OPS["ReduceMean"] = _reduce(lambda x, d, k: x.mean(d, keepdim=k))
ONNX_OPS["ReduceSum"] = _reduce(lambda x, d, k: x.sum(d, keepdim=k))
ONNX_OPS["ReduceMax"] = _reduce(lambda x, d, k: x.amax(d, keepdim=k))
ONNX_OPS["ReduceMin"] = _reduce(lambda x, d, k: x.amin(d, keepdim=k))


def _pool_args(x, a, fill: float):
    """Pooling arguments; unequal begin/end pads (which torch cannot express) are applied
    beforehand with ``fill``."""
    dims = x.dim() - 2
    kernel = list(a["kernel_shape"])
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        widths = []
        for d in reversed(range(dims)):
            widths += [pads[d], pads[d + dims]]
        x, pads = F.pad(x, widths, value=fill), [0] * 2 * dims
    return x, dims, kernel, list(a.get("strides", [1] * dims)), pads[:dims]


@onnx_op("MaxPool")
def max_pool(i, a):
    x, dims, k, s, p = _pool_args(i[0], a, -math.inf)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return fn(x, k, s, p, list(a.get("dilations", [1] * dims)), bool(a.get("ceil_mode", 0)))


@onnx_op("AveragePool")
def avg_pool(i, a):
    include_pad = bool(a.get("count_include_pad", 0))
    x, dims, k, s, p = _pool_args(i[0], a, 0.0)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    ceil = bool(a.get("ceil_mode", 0))
    if x.shape == i[0].shape or include_pad:
        return fn(x, k, s, p, ceil, include_pad)
    # pads applied beforehand: divide by the number of real elements in each window
    valid, _, _, _, _ = _pool_args(torch.ones((1, 1) + tuple(i[0].shape[2:]), dtype=x.dtype), a, 0.0)
    return fn(x, k, s, p, ceil, True) / fn(valid, k, s, p, ceil, True)


@onnx_op("GlobalAveragePool")
def global_avg_pool(i, a):
    return i[0].mean(tuple(range(2, i[0].dim())), keepdim=True)


@onnx_op("GlobalMaxPool")
def global_max_pool(i, a):
    return i[0].amax(tuple(range(2, i[0].dim())), keepdim=True)



# --- sizes, before anything is allocated --------------------------------------------
# A node's inputs exist (they were bounded when they were made), so ops whose results are no
# larger than an input, or views of one, need nothing more. The others say, from their inputs'
# shapes and values and their attributes, how many elements they will allocate; the frontend
# checks that against free memory (``converters.limits``) before running the op.
# ``tests/test_converters/test_hostile_files.py`` checks that every op is in exactly one table.

#: Ops whose result (and every intermediate) holds at most as many elements as one input.
NO_LARGER = frozenset({
    "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Softplus", "HardSwish",
    "Sin", "Cos", "Not", "Identity", "Floor", "Ceil", "Sign", "Mish", "IsNaN", "IsInf", "CumSum", "Trilu",
    "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Gelu", "Clip", "Softmax", "LogSoftmax", "Cast", "CastLike",
    "Dropout", "Shape", "Size", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split",
    "SplitToSequence", "SequenceAt", "Slice", "TopK", "ScatterElements", "Scatter", "GatherElements",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LRN",
})


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else ()


def _broadcast(i, a) -> int:
    shapes = [_shape(t) for t in i if isinstance(t, Tensor)]
    return math.prod(broadcast_shape(*shapes)) if shapes else 0


def _prelu_size(i, a) -> int:
    x, slope = _shape(i[0]), _shape(i[1])
    return math.prod(broadcast_shape(x, prelu_slope_shape(x, slope, a["_opset"])))


def _fold(i, a) -> int:
    """Sum, Max, Min: one broadcast result per input after the first."""
    return _broadcast(i, a) * max(sum(isinstance(t, Tensor) for t in i) - 1, 1)


def _matmul_size(i, a) -> int:
    x, w = _shape(i[0]), _shape(i[1])
    x, w = (1,) + x if len(x) == 1 else x, w + (1,) if len(w) == 1 else w
    if len(x) < 2 or len(w) < 2:
        return 0
    return math.prod(broadcast_shape(x[:-2], w[:-2])) * x[-2] * w[-1]


def _gemm_size(i, a) -> int:
    x, w = _shape(i[0]), _shape(i[1])
    if len(x) != 2 or len(w) != 2:
        return 0
    rows, cols = x[1] if a.get("transA", 0) else x[0], w[0] if a.get("transB", 0) else w[1]
    c = _shape(i[2]) if len(i) > 2 and i[2] is not None else ()
    return 2 * math.prod(broadcast_shape((rows, cols), c))  # the product and the sum


def _gather_size(i, a) -> int:
    data, idx = _shape(i[0]), _shape(i[1])
    axis = a.get("axis", 0) % max(len(data), 1)
    return math.prod(data[:axis]) * math.prod(idx) * math.prod(data[axis + 1:])


def _gather_nd_size(i, a) -> int:
    data, idx = _shape(i[0]), _shape(i[1])
    depth = idx[-1] if idx else 0
    return math.prod(idx[:-1]) * math.prod(data[depth:])


def _expand_size(i, a) -> int:
    target = _ints(i[1])
    if any(d < 0 for d in target):
        raise ValueError(f"Expand to a negative size {target}")
    return math.prod(broadcast_shape(_shape(i[0]), tuple(target)))


def _tile_size(i, a) -> int:
    repeats = _ints(i[1])
    if any(r < 0 for r in repeats):
        raise ValueError(f"Tile with negative repeats {repeats}")
    return i[0].numel() * math.prod(repeats)


def _constant_of_shape_size(i, a) -> int:
    shape = _ints(i[0])
    if any(d < 0 for d in shape):
        raise ValueError(f"ConstantOfShape of a negative size {shape}")
    return math.prod(shape)


def _range_size(i, a) -> int:
    start, limit, delta = (float(t.reshape(-1)[0]) for t in i[:3])
    if not all(math.isfinite(v) for v in (start, limit, delta)) or delta == 0:
        raise ValueError(f"Range({start}, {limit}, {delta}) has no finite length")
    return max(math.ceil((limit - start) / delta), 0)


def _pad_size(i, a) -> int:
    x = _shape(i[0])
    pads = list(a["pads"]) if "pads" in a else _ints(i[1]) or []
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(x)))
    if len(pads) != 2 * len(axes) or not x:
        return 0
    dims = list(x)
    for k, d in enumerate(axes):
        dims[d % len(x)] += pads[k] + pads[k + len(axes)]
    return math.prod(max(d, 0) for d in dims)


def _padded(x: tuple[int, ...], a: dict, dims: int) -> list[int]:
    pads = list(a.get("pads", [0] * 2 * dims))
    return [x[2 + d] + max(pads[d], 0) + max(pads[d + dims], 0) for d in range(dims)]


def _window(a: dict) -> None:
    """Strides, dilations, pads and kernel sizes of a convolution or pooling within
    ``limits.MAX_WINDOW`` (torch's oneDNN kernels crash the process on a ConvTranspose stride of
    65,535; no model uses such windows)."""
    for key in ("strides", "dilations", "pads", "output_padding", "kernel_shape"):
        values = [int(v) for v in a.get(key, ())]
        if any(abs(v) > MAX_WINDOW for v in values):
            raise ValueError(f"{key} {values} beyond gmn's limit of {MAX_WINDOW:,}")


def _conv_size(i, a) -> int:
    _window(a)
    x, w = _shape(i[0]), _shape(i[1])
    dims = len(w) - 2
    if len(x) != dims + 2 or dims < 1:
        return 0
    spatial = math.prod(_padded(x, a, dims))  # SAME padding adds less than a kernel: bounded below
    spatial += math.prod(x[2 + d] + w[2 + d] for d in range(dims)) if a.get("auto_pad", "NOTSET") != "NOTSET" else 0
    return x[0] * (x[1] + w[0]) * spatial  # the padded input and an output no larger than it per channel


def _conv_transpose_size(i, a) -> int:
    _window(a)
    x, w = _shape(i[0]), _shape(i[1])
    dims = len(w) - 2
    if len(x) != dims + 2 or dims < 1:
        return 0
    strides, dil = list(a.get("strides", [1] * dims)), list(a.get("dilations", [1] * dims))
    extra = list(a.get("output_padding", [0] * dims))
    side = [(x[2 + d] - 1) * max(strides[d], 1) + (w[2 + d] - 1) * max(dil[d], 1) + 1 + max(extra[d], 0)
            for d in range(dims)]
    return x[0] * w[1] * a.get("group", 1) * math.prod(side)


def _pool_size(i, a) -> int:
    _window(a)
    x = _shape(i[0])
    dims = len(x) - 2
    if dims < 1:
        return 0
    return 3 * x[0] * x[1] * math.prod(_padded(x, a, dims))  # padded input, window counts, output


def _concat_size(i, a) -> int:
    return sum(t.numel() for t in i if isinstance(t, Tensor))


#: Elements an op allocates, from its inputs and attributes, for ops that can make more than
#: any one input holds.
SIZES: dict[str, Callable] = {
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual",
                     "GreaterOrEqual", "And", "Or", "Where"), _broadcast),
    "PRelu": _prelu_size,
    **dict.fromkeys(("Sum", "Max", "Min"), _fold),
    "MatMul": _matmul_size, "Gemm": _gemm_size, "Gather": _gather_size, "GatherND": _gather_nd_size,
    "Expand": _expand_size, "Tile": _tile_size, "ConstantOfShape": _constant_of_shape_size,
    "Range": _range_size, "Pad": _pad_size, "Conv": _conv_size, "ConvTranspose": _conv_transpose_size,
    "MaxPool": _pool_size, "AveragePool": _pool_size, "Concat": _concat_size,
}


def allocation(op: str, inputs: list, attrs: dict) -> int:
    """Elements node ``op`` will allocate (an upper bound), computed before it runs."""
    if op in SIZES:
        return SIZES[op](inputs, attrs)
    return max((t.numel() for t in inputs if isinstance(t, Tensor)), default=0)
