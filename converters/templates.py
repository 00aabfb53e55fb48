"""Many checkpoints of one architecture: one trace, then one read of values per checkpoint.

A *template* is any parameter graph of the architecture (a conversion of its first checkpoint,
or a graph loaded from disk). :func:`from_state_dict` gives the graph of another checkpoint of
that architecture: the template's structure (``edge_index`` and every other structural tensor is
the template's own object, not a copy) with the checkpoint's values and buffers, after checking
that the checkpoint has exactly the template's layout (names, shapes, dtypes, tied names and the
buffers the conversion read as constants), naming the first difference in one line.

A state dict does not say how its tensors are wired: two modules with the same keys and shapes
may compute different functions. So a template is only ever *found* from what determines the
trace: :class:`Templates` looks a module up by its :func:`module_key` (every module's class,
configuration, hooks and constants, the state dict's layout, the example inputs) and an ONNX
file by its nodes, and keeps one template per distinct :func:`signature` (the traced
structure's hash with the layout), so graphs of one architecture share their arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import hashlib
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .graph import ConversionError, ParameterGraph, ParamIndex
from .torch_frontend import _count_nonfinite, from_torch

#: the arrays that make up a graph's structure (everything but the parameter values)
STRUCTURE = ("edge_index", "edge_type", "edge_pos", "node_type", "node_depth", "node_index", "node_act",
             "num_param_edges", "num_tied_edges", "tied_slot")


class TemplateMismatch(ConversionError):
    """A checkpoint that does not fit a template; the message names the first difference."""


# --- layout: what a checkpoint must match -------------------------------------------------------

def layout(index: ParamIndex) -> tuple[tuple[str, str, tuple[int, ...], str], ...]:
    """``(key, kind, shape, dtype)`` per state-dict key, in state-dict order. ``kind`` is
    ``"parameter"``, ``"buffer"`` or ``"tied to NAME"`` (a second name of a parameter)."""
    params = {name: shape for name, shape, _ in index.params}
    out = []
    for key in index.state_keys:
        name = index.aliases.get(key, key)
        if name in params:
            kind = "parameter" if name == key else f"tied to {name}"
            out.append((key, kind, tuple(params[name]), index.dtypes.get(name, "float32")))
        else:
            buffer = index.buffers[key]
            out.append((key, "buffer", tuple(buffer.shape), _dtype(buffer)))
    return tuple(out)


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_state_dict(index: ParamIndex, state: Mapping[str, object], where: str = "checkpoint") -> None:
    """Refuse (:class:`TemplateMismatch`, one line naming the first difference) a state dict
    whose keys, shapes or dtypes differ from the template's, whose tied names hold different
    values, or whose constant buffers (``ParamIndex.constant_buffers``) hold other values."""
    plan = _plan(index)
    try:  # the common case in one comparison; any difference is then named below
        fits = len(state) == len(plan.keys) and [(t.shape, t.dtype) for t in map(state.__getitem__, plan.keys)] \
            == plan.kinds
    except (KeyError, AttributeError):
        fits = False
    if not fits:
        _name_difference(plan, state, where)
    for key, name in index.aliases.items():
        if key in state and not _same(state[key], state[name]):
            raise TemplateMismatch(f"{where}: {key!r} and {name!r} hold different values; the template ties them "
                                   "(one parameter)")
    for key in index.constant_buffers:
        if not _same(state[key], index.buffers[key]):
            raise TemplateMismatch(f"{where}: buffer {key!r} holds other values than the template's, and the "
                                   "conversion read them as constants (structure): convert this checkpoint itself")


def _name_difference(plan: _Plan, state: Mapping[str, object], where: str) -> None:
    """The first key, in the template's order, that a state dict lacks or holds otherwise; then
    the first extra key."""
    for key, kind, (shape, dtype) in zip(plan.keys, plan.names, plan.kinds):
        t = state.get(key)
        if not isinstance(t, Tensor):
            if key not in state:
                raise TemplateMismatch(f"{where}: no {kind} {key!r}, which the template's architecture has")
            raise TemplateMismatch(f"{where}: {key!r} is a {type(t).__name__}, not a tensor")
        if t.shape != shape:
            raise TemplateMismatch(f"{where}: {key!r} has shape {tuple(t.shape)}; the template's is {tuple(shape)}")
        if t.dtype != dtype:
            raise TemplateMismatch(f"{where}: {key!r} is {_dtype(t)}; the template's is {str(dtype)[6:]}")
    known = set(plan.keys)
    extra = next(k for k in state if k not in known)
    raise TemplateMismatch(f"{where}: {extra!r} is not in the template's architecture (another architecture?)")


@dataclass
class _Plan:
    """What reading a checkpoint into one template needs, worked out once per template."""

    keys: tuple[str, ...]  #: state-dict keys in order
    names: list[str]  #: their kind: parameter, tied, buffer
    kinds: list[tuple[torch.Size, torch.dtype]]  #: their shapes and dtypes
    buffers: list[tuple[torch.dtype, list[str], list[int], list[torch.Size]]]  #: by dtype: names, sizes, shapes


_PLANS: dict[int, tuple[ParamIndex, _Plan]] = {}


def _plan(index: ParamIndex) -> _Plan:
    """The index's :class:`_Plan`, kept while the index lives (one template, many checkpoints)."""
    held = _PLANS.get(id(index))
    if held is None or held[0] is not index:
        if len(_PLANS) > 64:
            _PLANS.clear()
        rows = layout(index)
        groups: dict[torch.dtype, tuple[list, list, list]] = {}
        for name, buffer in index.buffers.items():
            names, sizes, shapes = groups.setdefault(buffer.dtype, ([], [], []))
            names.append(name)
            sizes.append(buffer.numel())
            shapes.append(buffer.shape)
        plan = _Plan(tuple(r[0] for r in rows), [r[1].split(" ")[0] for r in rows],
                     [(torch.Size(r[2]), getattr(torch, r[3])) for r in rows],
                     [(dtype, *group) for dtype, group in groups.items()])
        held = _PLANS[id(index)] = (index, plan)
    return held[1]


def _copy_buffers(plan: _Plan, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint's buffers, copied (a state dict often holds a live module's own buffers,
    which change in place): one copy per dtype, each buffer a view of it."""
    out = {}
    for _, names, sizes, shapes in plan.buffers:
        flat = torch.cat([state[k].reshape(-1) for k in names]).cpu()
        for name, part, shape in zip(names, torch.split(flat, sizes), shapes):
            out[name] = part if part.shape == shape else part.view(shape)
    return out


def _same(a: Tensor, b: Tensor) -> bool:
    if a is b or (a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.device == b.device):
        return True
    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


# --- values into the template's structure -------------------------------------------------------

def from_state_dict(template: ParameterGraph, state_dict: Mapping[str, Tensor],
                    where: str = "checkpoint") -> ParameterGraph:
    """The graph of ``state_dict`` (a checkpoint of the template's architecture): the template's
    structure, shared (no array of it is copied), with the checkpoint's parameter values and
    buffers. Checked first (:func:`check_state_dict`); ``where`` names the checkpoint in
    refusals. The caller vouches that the checkpoint's model is wired as the template's: keys
    and shapes cannot show wiring (:class:`Templates` finds the template from the module). The
    graph carries the template's live module, if any (``functional_call`` runs it with the
    graph's own values and buffers)."""
    index = template.param_index
    check_state_dict(index, state_dict, where)
    old = template.edge_value
    value = torch.empty_like(old)
    p, t = int(template.num_param_edges), int(template.num_tied_edges)
    with torch.no_grad():  # values are data here; no autograd bookkeeping per tensor
        _write_parameters(index, state_dict, value[:p])
        if t:
            torch.index_select(value[:p], 0, template.tied_slot, out=value[p: p + t])
        value[p + t:] = old[p + t:]  # structural edges carry the template's constants
        buffers = _copy_buffers(_plan(index), state_dict)
    g = copy.copy(template)  # PyG's copy: a new store holding the same tensors
    g.edge_value = value
    g.param_index = dataclasses.replace(index, buffers=buffers)
    g.nonfinite = torch.tensor([_count_nonfinite(value[:p])])
    return g


def state_values(template: ParameterGraph, state_dict: Mapping[str, Tensor], where: str = "checkpoint") -> Tensor:
    """A checkpoint's parameters as one vector in graph order, checked as :func:`from_state_dict`
    checks it (``parameter_values`` of its graph, without making the graph)."""
    check_state_dict(template.param_index, state_dict, where)
    out = torch.empty(int(template.num_param_edges), dtype=template.edge_value.dtype)
    with torch.no_grad():
        _write_parameters(template.param_index, state_dict, out)
    return out


def _write_parameters(index: ParamIndex, state_dict: Mapping[str, Tensor], out: Tensor) -> None:
    """Each parameter straight into its slice of ``out`` (cast to its dtype; no other copy): one
    ``cat`` when every parameter already has ``out``'s dtype and device."""
    tensors = [state_dict[name] for name, _, _ in index.params]
    if tensors and all(x.dtype == out.dtype and x.device == out.device for x in tensors):
        torch.cat([x.reshape(-1) for x in tensors], out=out)
        return
    for (_, shape, offset), x in zip(index.params, tensors):
        out[offset: offset + math.prod(shape)].view(shape).copy_(x)


# --- signature: what a template depends on ------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """What a template depends on: the state dict's layout (:func:`layout`) and a SHA-256 of
    the traced structure (every array of :data:`STRUCTURE`, the structural edges' values, the
    parameter index without its values, the constant buffers' values). Two graphs with equal
    signatures are interchangeable templates."""

    layout: tuple
    structure: str

    @property
    def digest(self) -> str:
        """One hex string for both parts (a file name, a dictionary key)."""
        return hashlib.sha256(repr((self.layout, self.structure)).encode()).hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 of the converter's own source files: a graph cached by another version of the
    rules may have another structure (``x * 30`` became a ``SCALED`` edge), so caches of
    converted graphs are keyed by it and never read across versions."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def signature(g: ParameterGraph) -> Signature:
    """The :class:`Signature` of a single graph (hashes its structure: about 1 s per GB of arrays)."""
    index = g.param_index
    digest = hashlib.sha256()
    for key in STRUCTURE:
        _feed(digest, key, getattr(g, key))
    p, t = int(g.num_param_edges), int(g.num_tied_edges)
    _feed(digest, "structural values", g.edge_value[p + t:])
    described = dataclasses.replace(index, buffers={k: index.buffers[k] for k in index.constant_buffers})
    for key, value in sorted(described.to_dict().items()):
        _feed(digest, key, value)
    return Signature(layout(index), digest.hexdigest())


def _feed(digest, key: str, value) -> None:
    digest.update(key.encode())
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        for k in sorted(value):
            _feed(digest, f"{key}.{k}", value[k])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{key}[{len(value)}]".encode())
        for i, v in enumerate(value):
            _feed(digest, f"{key}[{i}]", v)
    else:
        digest.update(repr(value).encode())


# --- finding templates -------------------------------------------------------------------------

class _Same:
    """An object compared by identity (held, so its id is never reused while the key lives)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, enum.Enum)
_CODE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.LambdaType, functools.partial, type)
#: module attributes that do not change a trace (mode: the trace is in eval mode; the rest is
#: covered by the parameters, buffers and submodules listed on their own)
_SKIP = frozenset({"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                   "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                   "_load_state_dict_post_hooks", "_is_full_backward_hook", "_backward_hooks",
                   "_backward_pre_hooks"})


def _canonical(value, memo: dict[int, object], depth: int = 0):
    """A hashable description of a module attribute: plain values as themselves, containers
    item by item, tensors by their bytes, plain objects (a model's config) by their class and
    attributes, anything else (functions, classes, callables) by identity. ``memo``: objects
    described in this key already (every module of a Hugging Face model holds one config)."""
    if isinstance(value, _PLAIN):
        return value
    if depth > 6:
        return _Same(value)
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        return ("tensor", t.dtype, tuple(t.shape), hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().data
                                                                  if t.numel() else b"").hexdigest())
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_canonical(v, memo, depth + 1) for v in value))
    if isinstance(value, (set, frozenset)):
        return (type(value), frozenset(_canonical(v, memo, depth + 1) for v in value))
    if isinstance(value, Mapping):
        return (type(value), tuple((_canonical(k, memo, depth + 1), _canonical(v, memo, depth + 1))
                                   for k, v in value.items()))
    if isinstance(value, nn.Module) or isinstance(value, _CODE) or callable(value) or not hasattr(value, "__dict__"):
        return _Same(value)
    if id(value) not in memo:
        memo[id(value)] = (type(value), _canonical(vars(value), memo, depth + 1))
    return memo[id(value)]


def module_key(model: nn.Module, example_inputs: Tensor | tuple, tracer: str = "auto") -> tuple:
    """What a trace of ``model`` on ``example_inputs`` depends on, short of tracing: every
    submodule's class and attributes (configuration, hooks, constant tensors, non-persistent
    buffers by value), which parameters are tied, the state dict's layout and the inputs' shapes
    and dtypes. Equal keys give equal graphs up to the persistent buffers a conversion reads as
    constants (checked by :func:`from_state_dict`); a forward that reads global state is not seen."""
    memo: dict[int, object] = {}
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    inputs = tuple((tuple(a.shape), a.dtype) if isinstance(a, Tensor) else _canonical(a, memo) for a in args)
    modules = tuple((path, type(m), _canonical({k: v for k, v in vars(m).items() if k not in _SKIP}, memo))
                    for path, m in model.named_modules(remove_duplicate=False))
    first: dict[int, str] = {}
    params = tuple((name, first.setdefault(id(p), name), tuple(p.shape), p.dtype)
                   for name, p in model.named_parameters(remove_duplicate=False))
    state = model.state_dict(keep_vars=True)
    buffers = tuple((name, tuple(b.shape), b.dtype) if name in state else (name, _canonical(b, memo))
                    for name, b in model.named_buffers(remove_duplicate=False))
    return (tracer, inputs, modules, params, buffers, tuple(state))


class Templates:
    """Templates found by what determines a trace, so N checkpoints of one architecture cost one
    trace plus N reads. ``from_torch`` and ``from_onnx`` return what ``converters.from_torch`` and
    ``converters.from_onnx`` would (graphs of one architecture share their structure arrays)."""

    def __init__(self):
        self._modules: dict[tuple, list[ParameterGraph]] = {}
        self._onnx: dict[str, list[ParameterGraph]] = {}
        self._held: list[tuple[ParameterGraph, Signature | None]] = []

    def __len__(self) -> int:
        """How many distinct templates (traced structures) are held."""
        return len(self._held)

    def from_torch(self, model: nn.Module, example_inputs: Tensor | tuple, *, tracer: str = "auto",
                   progress: bool = False) -> ParameterGraph:
        """The graph of ``model`` with its current weights, traced only when no template of its
        :func:`module_key` fits (a constant buffer with other values gets a trace of its own)."""
        key = module_key(model, example_inputs, tracer)
        state = model.state_dict()
        for template in self._modules.get(key, ()):
            try:
                g = from_state_dict(template, state, type(model).__name__)
                break
            except TemplateMismatch:
                continue
        else:
            template = self._keep(from_torch(model, example_inputs, tracer=tracer, progress=progress))
            self._modules.setdefault(key, []).append(template)
            g = from_state_dict(template, state, type(model).__name__)
        g.model = model  # the module this checkpoint is (the template's may be another instance)
        return g

    def from_onnx(self, path, progress: bool = False) -> ParameterGraph:
        """The graph of an ONNX file, traced only when no template of the same nodes fits (see
        ``converters.from_onnx(path, template=...)`` for what must be equal)."""
        from . import onnx_frontend

        proto, base = onnx_frontend._open(path)
        key = onnx_frontend.structure_key(proto)
        for template in self._onnx.get(key, ()):
            try:
                return onnx_frontend.fill_template(proto, base, template, str(path))
            except TemplateMismatch:
                continue
        g = onnx_frontend.convert_proto(proto, base, str(path), progress=progress)
        self._onnx.setdefault(key, []).append(self._keep(g))
        out = copy.copy(g)  # the caller's graph: its values are its own, never the template's
        out.edge_value = g.edge_value.clone()
        return out

    def _keep(self, g: ParameterGraph) -> ParameterGraph:
        """One template per signature: a structure equal to a held one is that one (so graphs of
        one architecture share arrays, and what is cached per ``edge_index`` is reused). Hashed
        only when a held template has as many nodes and edges."""
        mine: Signature | None = None
        for i, (held, sig) in enumerate(self._held):
            if held.num_nodes != g.num_nodes or held.edge_index.shape != g.edge_index.shape:
                continue
            if sig is None:
                sig = signature(held)
                self._held[i] = (held, sig)
            mine = mine or signature(g)
            if sig == mine:
                return held
        self._held.append((g, mine))
        return g
