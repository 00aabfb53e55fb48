"""ONNX frontend and writer: ``from_onnx`` reads a model file, ``to_onnx`` writes values back.

The ONNX graph becomes an ``nn.Module`` that runs its nodes with torch code
(``onnx_ops.py``); the eager tracer records it and the ordinary rules build the graph, so
ONNX and PyTorch models of the same architecture give the same parameter graph.
Parameters are the floating-point initializers and the non-trivial floating-point
``Constant`` tensors (real files keep weights there too), under their ONNX names;
BatchNormalization statistics are buffers. Nothing is folded or changed: the graph holds
the values the file holds.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import external_data_helper, helper, numpy_helper
from torch import Tensor, nn
from torch.utils._python_dispatch import _disable_current_modes

from . import limits
from .graph import ConversionError, ParameterGraph
from .onnx_ops import ONNX_OPS, allocation
from .torch_frontend import from_torch
from .writer import to_state_dict


def memory_limit() -> int:
    """Bytes of memory a model file may take (what is free now)."""
    return limits.free_memory()


def load_onnx(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX model safely (size checked first, external data confined to its folder),
    with its external data loaded into the returned proto."""
    proto, base = _open(source)
    for tensor in _tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(base))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return proto


def _open(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """The proto (external data not loaded, but checked) and the folder it refers to."""
    if isinstance(source, onnx.ModelProto):
        _check_graph(source, "the model")
        _check_memory(source, 0, memory_limit(), "the model")
        return source, None
    path = Path(source)
    if not path.is_file():
        raise ConversionError(f"{path}: no such ONNX file")
    size = path.stat().st_size
    limit = memory_limit()
    if size > limit:
        raise ConversionError(f"{path} is {size / 2**30:.1f} GiB; only {limit / 2**30:.1f} GiB of memory is free")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeError, ...
        raise ConversionError(f"{path} is not a valid ONNX model (truncated or corrupt protobuf): {err}") from err
    base = path.parent.resolve()
    _check_graph(proto, str(path))
    external = _check_external_data(proto, path.resolve(), base)
    _check_memory(proto, external, limit, str(path))
    for node in proto.graph.node:  # Constant-node tensors are small: load them into the proto
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and external_data_helper.uses_external_data(attr.t):
                attr.t.CopyFrom(numpy_helper.from_array(_array(attr.t, base).numpy(), attr.t.name))
    return proto, base


def _tensors(proto: onnx.ModelProto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _check_graph(proto: onnx.ModelProto, what: str) -> None:
    """What an ONNX runtime would refuse: no graph, no outputs, names defined twice."""
    graph = proto.graph
    if not proto.HasField("graph") or not graph.node:
        raise ConversionError(f"{what} has no graph nodes (an empty or truncated file?)")
    if not graph.output:
        raise ConversionError(f"{what} declares no graph outputs")
    _check_names(graph, what)
    seen: set[str] = set()
    for t in graph.initializer:
        if t.name in seen:
            raise ConversionError(f"{what}: initializer {t.name!r} is defined twice")
        seen.add(t.name)
    inputs = {i.name for i in graph.input} - seen  # IR 3 lists initializers as inputs too
    for name in inputs:
        seen.add(name)
    for n in graph.node:
        for out in n.output:
            if out and out in seen:
                raise ConversionError(f"{what}: tensor {out!r} is produced twice (by node "
                                      f"{n.name or n.op_type!r} and before it)")
            seen.add(out)


def _check_names(graph: onnx.GraphProto, what: str) -> None:
    """ONNX strings are UTF-8; protobuf hands back bytes for a name that is not."""
    names = [t.name for t in graph.initializer] + [v.name for v in (*graph.input, *graph.output)]
    for n in graph.node:
        names += [n.name, n.op_type, *n.input, *n.output]
    for name in names:
        if not isinstance(name, str):
            raise ConversionError(f"{what}: name {name!r} is not valid UTF-8 (a corrupt file?)")


def _check_external_data(proto: onnx.ModelProto, model: Path, base: Path) -> int:
    """Every external-data entry well formed, confined to the model's folder, not the model
    file itself, and as long as its tensor; returns the bytes they hold."""
    total = 0
    for tensor in (t for t in _tensors(proto) if external_data_helper.uses_external_data(t)):
        info = _external(tensor)
        location = info.get("location", "")
        where = f"external data of tensor {tensor.name!r}"
        if not location or "\x00" in location:
            raise ConversionError(f"{where} has no valid location ({location!r})")
        target = (base / location).resolve()
        if Path(location).is_absolute() or base not in target.parents:
            raise ConversionError(f"external data path {location!r} of tensor {tensor.name!r} escapes the "
                                  f"model's folder {base}; refused")
        if target == model:
            raise ConversionError(f"{where} points at the model file itself; refused")
        if not target.is_file():
            raise ConversionError(f"external data file {location!r} of tensor {tensor.name!r} is missing")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except Exception:
            raise ConversionError(f"{where}: unknown data type {tensor.data_type}") from None
        if any(d < 0 for d in tensor.dims):
            raise ConversionError(f"{where}: negative dimension in {list(tensor.dims)}")
        need = math.prod(tensor.dims) * dtype.itemsize
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", need))
        except ValueError:
            raise ConversionError(f"{where}: offset/length {info.get('offset')!r}/{info.get('length')!r} "
                                  "are not integers") from None
        if offset < 0 or length != need:
            raise ConversionError(f"{where}: offset {offset} and length {length} do not hold the tensor's "
                                  f"{need} bytes")
        if target.stat().st_size < offset + need:
            raise ConversionError(f"{where}: {location!r} is shorter than offset + length")
        total += need
    return total


def _check_memory(proto: onnx.ModelProto, external: int, limit: int, what: str) -> None:
    """Refuse before allocating what cannot fit: the measured peak of a conversion
    (``limits.conversion_bytes``) of the file's tensor scalars, at least the file's own bytes."""
    scalars = sum(math.prod(t.dims) for t in _tensors(proto))
    data = proto.ByteSize() + external
    need = max(limits.conversion_bytes(scalars), data)
    if need > limit:
        raise ConversionError(f"{what}: converting {scalars:,} tensor values ({data / 2**30:.2f} GiB) needs about "
                              f"{need / 2**30:.1f} GiB; only {limit / 2**30:.1f} GiB of memory is free")


def _array(tensor: onnx.TensorProto, base: Path | None) -> Tensor:
    """A tensor's values. External data is mapped copy-on-write: pages are read when first
    used (the forward pass, then the one copy into the graph), never duplicated, and
    writes stay private to this process."""
    try:
        if base is not None and external_data_helper.uses_external_data(tensor):
            info = _external(tensor)
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
            location, offset = base / info["location"], int(info.get("offset", 0))
            if location.stat().st_size < offset + count * np.dtype(dtype).itemsize:
                raise ValueError("the external data file is shorter than the tensor")
            array = np.memmap(location, dtype=dtype, mode="c", offset=offset, shape=(count,))
            return torch.from_numpy(array.reshape(tuple(tensor.dims)))
        return _to_torch(numpy_helper.to_array(tensor))
    except ConversionError:
        raise
    except Exception as err:
        raise ConversionError(f"cannot read tensor {tensor.name!r}: {err}") from err


def _to_torch(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def _attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = _to_torch(numpy_helper.to_array(value))
        elif isinstance(value, bytes):
            value = value.decode()
        out[attr.name] = value
    return out


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input exists first; names dangling inputs and cycles."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers = {o for n in graph.node for o in n.output}
    for n in graph.node:
        for name in n.input:
            if name not in available and name not in producers:
                raise ConversionError(f"input {name!r} of node {n.name or n.op_type!r} ({n.op_type}) is produced "
                                      f"by nothing: a missing initializer or a dangling input")
    order = [graph.node[i] for i in _rounds(graph.node, available)]
    available.update(o for n in order for o in n.output)
    for out in graph.output:
        if out.name not in available:
            raise ConversionError(f"graph output {out.name!r} is produced by nothing")
    return order


def _rounds(nodes, available: set[str]) -> list[int]:
    """Node numbers in rounds: each round every node not yet placed whose inputs all exist
    before it, in file order; a cycle is named. One pass over the edges (a scan of all pending
    nodes per round was quadratic: 0.14 s for ResNet-50's 450 nodes)."""
    readers: dict[str, list[int]] = {}
    waiting = []  # per node: how many distinct inputs are still missing
    for k, n in enumerate(nodes):
        missing = {i for i in n.input if i not in available}
        waiting.append(len(missing))
        for name in missing:
            readers.setdefault(name, []).append(k)
    known = set(available)
    order, ready = [], [k for k, w in enumerate(waiting) if w == 0]
    while ready:
        order += ready
        fresh = {o for k in ready for o in nodes[k].output} - known
        known |= fresh
        after = []
        for name in fresh:
            for k in readers.get(name, ()):
                waiting[k] -= 1
                if waiting[k] == 0:
                    after.append(k)
        ready = sorted(after)  # file order within a round, as the scan gave
    if len(order) < len(nodes):
        placed = set(order)
        names = ", ".join([repr(n.name or n.op_type) for k, n in enumerate(nodes) if k not in placed][:5])
        raise ConversionError(f"the ONNX graph has a cycle through nodes {names}")
    return order


#: Ops through which a tensor stays "the same weights" (views, casts, joins).
_VIEW_OPS = {"Identity", "Cast", "CastLike", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Slice",
             "Concat", "Flatten", "Split", "Tile"}
#: Inputs that hold weights whatever the other inputs are (and whatever their values).
_WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2), "PRelu": (1,),
                 "Gemm": (1, 2),
                 "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "GroupNormalization": (1, 2),
                 "Gather": (0,), "GatherND": (0,), "GatherElements": (0,)}  # tables looked up by index
#: Inputs that hold weights when they meet activations (a constant times a constant is a table).
_MIXING_OPS = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Concat"}


def _parameter_sources(graph: onnx.GraphProto, nodes: list[onnx.NodeProto],
                       sources: set[str]) -> tuple[set[str], set[str]]:
    """The constant tensors that act as weights: reaching a weight input of a layer, or meeting
    input-dependent activations in a product or sum, through views only. Constants that only
    ever combine with other constants (rotary frequency tables, masks) are not parameters.
    Returns all of them and those that reach a layer's weight input."""
    dependent = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for n in nodes:  # what depends on the input data (shapes of it do not)
        if n.op_type not in ("Shape", "Size") and any(i in dependent for i in n.input):
            dependent.update(n.output)
    origin = {name: name for name in sources}
    for n in nodes:
        if n.op_type in _VIEW_OPS:
            roots = {origin[i] for i in n.input[:1] if i in origin} if n.op_type != "Concat" else \
                {origin[i] for i in n.input if i in origin}
            if len(roots) == 1 and not any(i in dependent for i in n.input):
                origin.update(dict.fromkeys(n.output, roots.pop()))
    weights, slots = set(), set()
    for n in nodes:
        for slot, name in enumerate(n.input):
            if name not in origin:
                continue
            others = [i for j, i in enumerate(n.input) if j != slot and i]
            if slot in _WEIGHT_SLOTS.get(n.op_type, ()):
                slots.add(origin[name])
            elif n.op_type in _MIXING_OPS and any(i in dependent for i in others):
                weights.add(origin[name])
    return weights | slots, slots


def _constant_input(node: onnx.NodeProto, *tables: dict) -> bool:
    return len(node.input) == 1 and any(node.input[0] in t for t in tables)


def _fill_shape(node: onnx.NodeProto, tensors: dict[str, Tensor]) -> list[int]:
    """The shape a ``ConstantOfShape`` node fills, checked."""
    shape = tensors[node.input[0]]
    if shape.dim() != 1 or shape.dtype != torch.int64 or bool((shape < 0).any()):
        raise ConversionError(f"ConstantOfShape {node.output[0]!r}: its shape input must be a 1-D int64 tensor "
                              f"of sizes >= 0, got {shape.dtype} {tuple(shape.shape)}")
    return [int(v) for v in shape]


def _fill(node: onnx.NodeProto, shape: list[int]) -> Tensor:
    """The value of a ``ConstantOfShape`` node of known shape."""
    value = _attributes(node).get("value", torch.zeros(1))
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ConversionError(f"ConstantOfShape {node.output[0]!r}: its value must be a one-element tensor")
    return value.reshape(-1)[:1].expand(shape).clone()


def _is_parameter(value: Tensor) -> bool:
    """A Constant tensor that may hold weights: floating point and not one repeated number."""
    return value.is_floating_point() and value.numel() > 1 and bool((value != value.reshape(-1)[0]).any())


class _Scope(nn.Module):
    """A module path of the model the file was exported from. Running a node inside its
    scopes lets the tracer see the module stack (as for PyTorch models), so module rules
    such as fused experts apply to ONNX files too. It holds the path's tensors, but its
    output is whichever node ran first in it, not a layer's output: ``is_scope`` tells
    activation hooks (``gmn.activations``) to leave it alone."""

    is_scope = True

    def forward(self, fn):
        return fn()


def _in_scopes(scopes: list[nn.Module], fn):
    if not scopes:
        return fn()
    return scopes[0](lambda: _in_scopes(scopes[1:], fn))


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    """Module paths recorded by the exporter (``pkg.torch.onnx.name_scopes``), outer first."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                import ast

                paths = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [p for p in paths[:-1] if isinstance(p, str) and p]
    return []


class OnnxModule(nn.Module):
    """An ONNX graph run with torch ops; parameters and buffers keep their ONNX names."""

    def __init__(self, proto: onnx.ModelProto, base: Path | None = None, source: str = "the model"):
        super().__init__()
        self.source = source  #: the file, as refusals name it
        graph = proto.graph
        self.nodes = _topological(graph)
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 21)
        for n in self.nodes:
            if n.domain not in ("", "ai.onnx") or n.op_type not in ONNX_OPS and n.op_type != "Constant":
                raise ConversionError(self._unknown(n, graph))
        statistics = {n.input[i] for n in self.nodes if n.op_type == "BatchNormalization" for i in (3, 4)
                      if len(n.input) > i}
        self.onnx_names: dict[str, str] = {}  # ONNX name -> state_dict key
        self.constants: dict[str, Tensor] = {}
        init_names = {t.name for t in graph.initializer}
        initializers = {t.name: _array(t, base) for t in graph.initializer}
        constants = {n.output[0]: self._constant(n) for n in self.nodes if n.op_type == "Constant"}
        #: ConstantOfShape nodes of a constant shape are tensors like Constants (the model zoo's
        #: files keep their weights there); they are computed once and never run again
        fills = [n for n in self.nodes
                 if n.op_type == "ConstantOfShape" and _constant_input(n, initializers, constants)]
        shapes = {n.output[0]: _fill_shape(n, {**initializers, **constants}) for n in fills}
        for name, shape in shapes.items():
            limits.check_shape(shape, f"{self.source}: ConstantOfShape {name!r}", 4)
        need = limits.conversion_bytes(sum(math.prod(v) for v in shapes.values()))
        if need > memory_limit():
            raise ConversionError(f"the file's ConstantOfShape fills ({sum(math.prod(v) for v in shapes.values()):,} "
                                  f"elements) need about {need / 2**30:.1f} GiB to convert; only "
                                  f"{memory_limit() / 2**30:.1f} GiB of memory is free")
        self.folded = {n.output[0]: _fill(n, shapes[n.output[0]]) for n in fills}
        constants.update(self.folded)
        weights, slots = _parameter_sources(graph, self.nodes, init_names | set(constants))
        for name, value in initializers.items():
            self._add(name, value, statistics, trainable=name in weights)
        for name, value in constants.items():
            # a tensor in a layer's weight input is a weight whatever its values; elsewhere
            # (a product or sum) one repeated number is a constant, not a parameter
            trainable = name in slots or (name in weights and _is_parameter(value))
            self._add(name, value, statistics, trainable=trainable)
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        self.attrs = [_attributes(n) for n in self.nodes]
        self.scopes = [self._scopes(n) for n in self.nodes]
        #: state_dict keys of every BatchNormalization's (running mean, running variance): in
        #: train mode the node updates them in place (``recompute_batchnorm`` reads this)
        self.batchnorm_statistics = [(self.onnx_names[n.input[3]], self.onnx_names[n.input[4]])
                                     for n in self.nodes if n.op_type == "BatchNormalization"
                                     and n.input[3] in self.onnx_names and n.input[4] in self.onnx_names]
        #: the running statistics' update share in train mode (torch's ``momentum``); None: each
        #: node's own ``momentum`` attribute
        self.batchnorm_momentum: float | None = None
        self.eval()  # a file is a model for inference, as a converted PyTorch model is traced

    @staticmethod
    def _constant(node: onnx.NodeProto) -> Tensor:
        attrs = _attributes(node)
        value = attrs.get("value")
        if value is None:
            if "sparse_value" in attrs:
                raise ConversionError(f"Constant {node.output[0]!r} holds a sparse tensor; gmn reads dense ones only")
            scalars = [v for k, v in attrs.items() if k.startswith("value_")]
            if len(scalars) != 1:
                raise ConversionError(f"Constant {node.output[0]!r} has no value (attributes: {sorted(attrs)})")
            try:
                value = torch.tensor(scalars[0])
            except (TypeError, ValueError):
                raise ConversionError(f"Constant {node.output[0]!r} holds a value gmn cannot read "
                                      f"({type(scalars[0]).__name__})") from None
        return value

    def _scopes(self, node: onnx.NodeProto) -> list[nn.Module]:
        out = []
        for path in _name_scopes(node):
            module: nn.Module = self
            for part in path.split("."):
                child = module._modules.get(part)
                if child is None:
                    if part in module._parameters or part in module._buffers or hasattr(module, part):
                        return out
                    child = _Scope()
                    module.add_module(part, child)
                module = child
            out.append(module)
        return out

    def _unknown(self, n: onnx.NodeProto, graph: onnx.GraphProto) -> str:
        weights = [i for i in n.input if i in {t.name for t in graph.initializer}]
        what = f"using parameter {weights[0]!r}" if weights else "on activations"
        return (f"no converter for ONNX op {n.domain + '.' if n.domain else ''}{n.op_type} (node "
                f"{n.name or n.op_type!r}) {what}; add one to converters.onnx_ops.ONNX_OPS")

    def _add(self, name: str, value: Tensor, statistics: set, trainable: bool) -> None:
        """Place a tensor under its ONNX name: ``a.b.c`` becomes submodules ``a.b``, leaf ``c``,
        so state_dict keys are the ONNX names (a name that cannot be placed gets its dots
        replaced)."""
        is_param = value.is_floating_point() and trainable and name not in statistics
        if not is_param and name not in statistics:
            self.constants[name] = value
            return
        owner, leaf = self._owner(name)
        self.onnx_names[name] = name if owner is not self else leaf
        if is_param:
            owner.register_parameter(leaf, nn.Parameter(value, requires_grad=True))
        else:
            owner.register_buffer(leaf, value)

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        """The module and attribute a tensor of ONNX name ``name`` is stored under."""
        parts = name.split(".")
        module: nn.Module = self
        if all(parts):
            for part in parts[:-1]:
                child = module._modules.get(part)
                if child is None:
                    if hasattr(module, part):
                        break
                    child = _Scope()
                    module.add_module(part, child)
                module = child
            else:
                if not hasattr(module, parts[-1]):
                    return module, parts[-1]
        leaf = name.replace(".", "\u00b7")
        # a name every module already has (``training``, ``forward``) or one of ours gets a mark
        return self, "\u00b7" + leaf if hasattr(self, leaf) else leaf

    def tensor(self, name: str) -> Tensor:
        """The parameter, buffer or constant of ONNX name ``name``."""
        if name in self.constants:
            return self.constants[name]
        obj = self
        for part in self.onnx_names[name].split("."):  # plain getattr: functional_call swaps tensors in
            obj = getattr(obj, part)
        return obj

    def forward(self, *inputs: Tensor):
        env: dict[str, Tensor | None] = {"": None}
        env.update(self.constants)
        env.update((name, self.tensor(name)) for name in self.onnx_names)
        env.update(zip(self.input_names, inputs))
        # every result stays alive (in ``env`` and the tracer): what the nodes allocate is
        # bounded in total, each node's share computed before it runs
        budget = limits.Budget(self.source)
        for node, attrs, scopes in zip(self.nodes, self.attrs, self.scopes):
            if node.op_type == "Constant" or node.output[0] in self.folded:
                continue
            args = [env[i] for i in node.input]
            op = ONNX_OPS[node.op_type]
            extra = {**attrs, "_outputs": len(node.output), "_op": node.op_type, "_opset": self.opset}
            if node.op_type == "BatchNormalization":
                extra.update(_training=self.training, _momentum=self.batchnorm_momentum)
            try:
                with _disable_current_modes():  # sizes are read, not recorded as ops of the model
                    count = allocation(node.op_type, args, extra)
                budget.spend(count, f"node {node.name or node.output[0]!r} ({node.op_type})")
                out = _in_scopes(scopes, lambda op=op, args=args, extra=extra: op(args, extra))
            except ConversionError:
                raise
            except Exception as err:
                raise ConversionError(f"{self.source}: ONNX node {node.name or node.op_type!r} ({node.op_type}) "
                                      f"failed: {type(err).__name__}: {err}") from err
            outs = out if isinstance(out, tuple) else (out,)
            env.update(zip(node.output, outs))
        results = tuple(env[o] for o in self.output_names)
        return results[0] if len(results) == 1 else results


def _example_inputs(proto: onnx.ModelProto, names: list[str]) -> tuple[Tensor, ...]:
    """Inputs of the declared shapes, refused before allocation when tracing them cannot fit."""
    inputs = {i.name: i for i in proto.graph.input}
    out = []
    for name in names:
        t = inputs[name].type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        if math.prod(shape) * 8 * 64 > memory_limit():  # activations of a few dozen layers at that size
            raise ConversionError(f"input {name!r} of declared shape {shape} is too large to trace in "
                                  f"{memory_limit() / 2**30:.1f} GiB of free memory; pass smaller example_inputs")
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        out.append(torch.from_numpy(np.zeros(shape, dtype=dtype)) if np.issubdtype(dtype, np.integer)
                   else torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(_to_torch(
                       np.zeros(0, dtype=dtype)).dtype))
    return tuple(out)


def from_onnx(source: str | os.PathLike | onnx.ModelProto, example_inputs: tuple | Tensor | None = None,
              progress: bool = False, *, template: ParameterGraph | None = None) -> ParameterGraph:
    """The parameter graph of an ONNX model (a path or a ``ModelProto``).

    ``example_inputs`` default to tensors of the declared input shapes (symbolic
    dimensions as 1). External data is memory-mapped (as ``torch.load(mmap=True)`` and
    safetensors do): overwrite those files only after the graph's model is gone.

    ``template``: a graph converted from another file of the same architecture (same nodes,
    attributes, initializer names, shapes and dtypes, and the same values wherever the template
    holds a constant rather than a parameter). The file is then not traced: its values are read
    into the template's structure (``converters.from_state_dict``); a file that differs is refused
    (:class:`~converters.templates.TemplateMismatch`) naming the first difference.
    """
    proto, base = _open(source)
    where = "the model" if isinstance(source, onnx.ModelProto) else str(source)
    owned = not isinstance(source, onnx.ModelProto)  # a caller's proto is never changed
    if template is not None:
        return fill_template(proto, base, template, where, owned)
    return convert_proto(proto, base, where, example_inputs, progress, owned)


def convert_proto(proto: onnx.ModelProto, base: Path | None, where: str, example_inputs: tuple | Tensor | None = None,
                  progress: bool = False, owned: bool = True) -> ParameterGraph:
    """:func:`from_onnx` of a proto opened by ``_open``. ``owned``: the proto is ours (read from a
    file), so its initializers' bytes are dropped once the module holds them (``to_onnx`` writes
    every initializer from the graph): the file's weights are then held once, not twice."""
    try:  # a malformed proto fails in many ways (unknown dtypes, bad shapes): all are ours to name
        module = OnnxModule(proto, base, where)
        if owned:
            _drop_initializer_data(proto)
        if example_inputs is None:
            example_inputs = _example_inputs(proto, module.input_names)
        g = from_torch(module, example_inputs, tracer="eager", progress=progress)
    except ConversionError:
        raise
    except Exception as err:
        raise ConversionError(f"invalid ONNX model: {type(err).__name__}: {err}") from err
    g.onnx = proto
    _warn_optimized(proto, g, where)
    return g


def _warn_optimized(proto: onnx.ModelProto, g: ParameterGraph, where: str) -> None:
    prefix = "" if where == "the model" else f"{where}: "  # one line per file, naming it
    for message in optimizer_signs(proto, g):
        warnings.warn(prefix + message, OptimizedOnnxWarning, stacklevel=3)


#: the fields a TensorProto keeps its values in (``string_data`` is no weight)
_DATA_FIELDS = ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data")


def _drop_initializer_data(proto: onnx.ModelProto) -> None:
    for t in proto.graph.initializer:
        for name in _DATA_FIELDS:
            t.ClearField(name)


def structure(proto: onnx.ModelProto) -> list[tuple[str, object]]:
    """What an ONNX file's graph is without its tensors' values, item by item (named for a
    refusal): opsets, inputs and outputs, initializers' names, shapes and dtypes, and every node
    (op, inputs, outputs, attributes; a tensor attribute by its shape and dtype)."""
    graph = proto.graph
    items: list[tuple[str, object]] = [("the opset list", sorted((o.domain, o.version) for o in proto.opset_import))]
    items += [(f"input {i.name!r}", i.type.SerializeToString(deterministic=True)) for i in graph.input]
    items += [(f"output {o.name!r}", o.type.SerializeToString(deterministic=True)) for o in graph.output]
    items += [(f"initializer {t.name!r}", (tuple(t.dims), t.data_type)) for t in graph.initializer]
    for i, n in enumerate(graph.node):
        attrs = [(a.name, (tuple(a.t.dims), a.t.data_type) if a.type == onnx.AttributeProto.TENSOR
                  else a.SerializeToString(deterministic=True)) for a in n.attribute]
        items.append((f"node {i} ({n.op_type} {n.name or n.output[0]!r})",
                      (n.domain, n.op_type, tuple(n.input), tuple(n.output), tuple(attrs))))
    return items


def structure_key(proto: onnx.ModelProto) -> str:
    """A hash of :func:`structure`: files of one architecture (any weights) share it."""
    return hashlib.sha256(repr(structure(proto)).encode()).hexdigest()


def fill_template(proto: onnx.ModelProto, base: Path | None, template: ParameterGraph, where: str,
                  owned: bool = True) -> ParameterGraph:
    """``from_onnx(..., template=template)`` of a proto opened by ``_open`` (``owned``: as for
    :func:`convert_proto`)."""
    from .templates import TemplateMismatch, from_state_dict

    reference = getattr(template, "onnx", None)
    module = template.model
    if reference is None or not isinstance(module, OnnxModule):
        raise ConversionError("the template was not converted from ONNX in this process (it carries no ONNX "
                              "model): convert one file of the architecture with from_onnx first")
    mine, theirs = structure(proto), structure(reference)
    for (what, value), (_, expected) in zip(mine, theirs):
        if value != expected:
            raise TemplateMismatch(f"{where}: {what} differs from the template's file")
    if len(mine) != len(theirs):
        raise TemplateMismatch(f"{where}: {len(mine)} graph items (nodes, initializers, inputs), the template's "
                               f"file {len(theirs)}")
    tensors = _named_tensors(proto)
    state = {}
    for name, key in module.onnx_names.items():
        value = module.folded.get(name)  # fills are computed from their nodes: equal when those are
        state[key] = value if value is not None else _read(tensors[name], base)
    for name, value in module.constants.items():
        if name in module.folded:
            continue
        if not torch.equal(_read(tensors[name], base), value):
            raise TemplateMismatch(f"{where}: constant {name!r} holds other values than the template's file "
                                   "(a constant is structure, not a parameter)")
    g = from_state_dict(template, state, where)
    if owned:
        _drop_initializer_data(proto)
    g.onnx = proto
    _warn_optimized(proto, g, where)
    return g


def _named_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name."""
    out = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            out[n.output[0]] = value if value is not None else n
    return out


def _read(tensor: onnx.TensorProto | onnx.NodeProto, base: Path | None) -> Tensor:
    """A tensor's values (a Constant node without a ``value`` tensor holds a number)."""
    if isinstance(tensor, onnx.NodeProto):
        return OnnxModule._constant(tensor)
    return _array(tensor, base)


class OptimizedOnnxWarning(UserWarning):
    """The file shows signs of an optimising export: its parameters are not the trained model's."""


_GENERATED_NAME = re.compile(r"val_\d+")
#: what the legacy TorchScript exporter (``dynamo=False``) names the tensors it makes: a
#: convolution with BatchNorm folded in becomes ``onnx::Conv_54``
_LEGACY_NAME = re.compile(r"onnx::\w+_\d+")
_EXPORT_ADVICE = "export with torch.onnx.export(..., dynamo=True, optimize=False) for the model's own parameters"


def optimizer_signs(proto: onnx.ModelProto, g: ParameterGraph) -> list[str]:
    """What an optimising export did to a file, as far as the file shows it: BatchNorm folded
    into convolutions (onnxscript records its rewrite rules on the nodes), parameters under
    names the optimizer made up (equal weights merged, transposes folded), and parameters whose
    values look like a mask (only 0/1, or -inf) rather than trained weights."""
    rules = [p.value for n in proto.graph.node for p in n.metadata_props
             if p.key == "pkg.onnxscript.rewriter.rule_name"]
    signs = []
    folded = sum("FuseBatchNorm" in r for r in rules)
    if folded:
        signs.append(f"BatchNorm was folded into {folded} convolution(s) by the ONNX optimizer: their weights are "
                     f"not the trained ones and BatchNorm's parameters are gone; {_EXPORT_ADVICE}")
    elif rules:
        signs.append(f"{len(rules)} node(s) were rewritten by the ONNX optimizer ({rules[0]}, ...); {_EXPORT_ADVICE}")
    values = g.edge_value[: int(g.num_param_edges)]
    generated, masks = [], []
    for name, shape, offset in g.param_index.params:
        if _GENERATED_NAME.fullmatch(name.rsplit(".", 1)[-1]):
            generated.append(name)
        v = values[offset: offset + math.prod(shape)]
        if v.numel() >= 4 and _mask_like(v):
            masks.append(name)
    legacy = [name for name, _, _ in g.param_index.params if _LEGACY_NAME.fullmatch(name)]
    if legacy:
        signs.append(f"{len(legacy)} parameter(s) have names the legacy exporter (torch.onnx.export(..., "
                     f"dynamo=False)) made up ({', '.join(legacy[:3])}{', ...' if len(legacy) > 3 else ''}): it folds "
                     "BatchNorm into the convolutions before it, so their weights are not the trained ones and "
                     "BatchNorm statistics cannot be recomputed (merge, barrier and align average folded weights); "
                     f"{_EXPORT_ADVICE}")
    if generated:
        signs.append(f"{len(generated)} parameter(s) have names an ONNX optimizer made up ({', '.join(generated[:3])}"
                     f"{', ...' if len(generated) > 3 else ''}): equal weights may have been merged and transposes "
                     f"folded; {_EXPORT_ADVICE}")
    if masks:
        signs.append(f"{len(masks)} parameter(s) hold mask values (0 and 1 only, or -1e4 and below: "
                     f"{', '.join(masks[:3])}): masks or constants folded into tensors, not trained weights? "
                     "Their edges are counted as parameters")
    return signs


def _mask_like(v: Tensor) -> bool:
    """0s and 1s together and nothing else, or huge negatives (additive masks); an all-ones
    or all-zeros tensor is a fresh normalisation or bias, not a mask."""
    lo, hi = (float(t) for t in torch.aminmax(v))  # one pass: trained weights stop here
    if lo <= -1e4:
        return True
    if lo != 0 or hi != 1:
        return False
    return bool(((v == 0) | (v == 1)).all())


def to_onnx(g: ParameterGraph, values: Tensor | None = None) -> onnx.ModelProto:
    """The graph's ONNX model with parameter values ``values`` written in (same names, dtypes)."""
    proto = getattr(g, "onnx", None)
    if proto is None:
        raise ConversionError("this graph was not read from ONNX (no model proto attached)")
    module = g.model
    onnx_name = {key: name for name, key in module.onnx_names.items()}
    weights = {onnx_name.get(k, k): v.detach().cpu() for k, v in to_state_dict(g, values).items()}
    out = copy.deepcopy(proto)
    for i, t in enumerate(out.graph.initializer):
        # every initializer is written in full, so the result needs no external data files
        value = weights[t.name] if t.name in weights else module.tensor(t.name).detach().cpu()
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        out.graph.initializer[i].CopyFrom(numpy_helper.from_array(_cast(t.name, value, dtype), t.name))
    for node in out.graph.node:
        name = node.output[0] if node.output else ""
        if name not in weights:
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    dtype = helper.tensor_dtype_to_np_dtype(attr.t.data_type)
                    attr.t.CopyFrom(numpy_helper.from_array(_cast(name, weights[name], dtype)))
        elif name in module.folded:  # a filled weight with new values is a Constant now
            dtype = helper.tensor_dtype_to_np_dtype(_fill_dtype(node))
            value = numpy_helper.from_array(_cast(name, weights[name], dtype))
            node.CopyFrom(helper.make_node("Constant", [], [name], name=node.name, value=value))
    _drop_unused_initializers(out.graph, {t.name for t in proto.graph.initializer if _used(proto.graph, t.name)})
    return out


def _used(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


def _drop_unused_initializers(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Remove the shapes of fills that became Constants (and their IR-3 graph inputs); every
    initializer the original file used stays."""
    unused = {t.name for t in graph.initializer if t.name not in keep and not _used(graph, t.name)}
    if not unused:
        return
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in unused]
    del graph.input[:]
    graph.input.extend(inputs)


def _fill_dtype(node: onnx.NodeProto) -> int:
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    return value.data_type if value is not None else onnx.TensorProto.FLOAT


def _cast(name: str, value: Tensor, dtype) -> np.ndarray:
    """``value`` in the file's dtype; NaN/inf, or values the dtype cannot hold, are refused
    rather than written (float64 1e300 would silently become inf in float32)."""
    array = value.numpy()
    if np.issubdtype(array.dtype, np.floating):
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ConversionError(f"{name}: {bad} NaN/inf values; refusing to write them to ONNX")
        if np.issubdtype(dtype, np.floating) and array.size and float(np.abs(array).max()) > np.finfo(dtype).max:
            raise ConversionError(f"{name}: values up to {float(np.abs(array).max()):.3g} overflow {np.dtype(dtype)}")
    return array.astype(dtype)
