"""PyTorch frontend: ``torch.export`` the model, then run every op's rule in order."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx import Node
from tqdm.auto import tqdm

from . import rules  # noqa: F401  (registers the rules)
from .context import Context, nonneuron
from .eager_trace import RecordedProgram, record
from .graph import ConversionError, GraphBuilder, ParameterGraph, ParamIndex
from .limits import ResourceLimitError
from .registry import MODULE_RULES, OP_RULES, op_name
from .rules.weight_norm import mark_computed
from .simplify import simplify
from .soundness import check_op, tensor_args, unknown_op
from .tensor_info import TensorInfo, broadcast_ids, compact, fresh_pos

CONV_OPS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution",
            "aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")


def from_torch(
    model: nn.Module, example_inputs: Tensor | tuple, *, tracer: str = "auto", progress: bool = False
) -> ParameterGraph:
    """Convert ``model`` to a :class:`ParameterGraph` by tracing it on ``example_inputs``.

    ``tracer``: ``"export"`` (``torch.export``: sees inside ``forward``, traces
    symbolically), ``"eager"`` (records one real run; handles data-dependent control
    flow, specialised to this input) or ``"auto"`` (export, falling back to eager).
    The model is traced in eval mode (its mode is restored afterwards). Float inputs get
    one input node per channel: axis 1 for models with convolutions, the last axis
    otherwise. Integer inputs (token ids) get none; embedding tables make token nodes.
    ``progress`` shows a progress bar over the traced ops.
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    program = _trace(model, args, tracer)
    params, aliases = _unique_parameters(model)
    state = model.state_dict()
    # the graph lives in host memory whatever device the model runs on
    buffers = {k: v.detach().cpu().clone() for k, v in state.items() if k not in params and k not in aliases}
    builder = GraphBuilder({k: v.detach().cpu() for k, v in params.items()})
    ctx = Context(builder)
    # parameters' flat indices are views of one arange of the largest parameter's size, made
    # for this conversion and freed with it (8 bytes per scalar of that parameter)
    ctx.flat = torch.arange(max((p.numel() for p in params.values()), default=0))
    # every buffer's value, non-persistent ones too (index tables often are)
    ctx.buffer_values = {**{k: v.detach().cpu() for k, v in model.named_buffers()}, **buffers}
    _walk(ctx, model, program, params, aliases, progress)
    ctx.release()  # the shadows and flat indices go before the graph's arrays are laid out
    data, layout, sources = builder.finish()
    simplify(data, builder.buffer_nodes, sources)
    index = ParamIndex(
        params=layout,
        state_keys=tuple(state),
        aliases=aliases,
        buffers=buffers,
        buffer_nodes=dict(builder.buffer_nodes),
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in params.items() if v.dtype != torch.float32},
        pins=tuple(builder.pins),
        constant_buffers=tuple(sorted(ctx.read_buffers & set(buffers))),
    )
    graph = ParameterGraph(num_nodes=data["node_type"].numel(), param_index=index, **data)
    graph.nonfinite = torch.tensor([_count_nonfinite(data["edge_value"][: int(data["num_param_edges"])])])
    graph.model = model
    return graph


def _count_nonfinite(values: Tensor) -> int:
    """NaN/inf weights convert, and are counted. Any NaN or inf makes the sum NaN or inf, so a
    finite sum proves there are none (a float32 overflow only sends us to the exact count)."""
    if math.isfinite(float(values.sum())):
        return 0
    return int((~torch.isfinite(values)).sum())


def _trace(model: nn.Module, args: tuple, tracer: str) -> RecordedProgram:
    if tracer not in ("auto", "export", "eager"):
        raise ValueError(f"tracer must be 'auto', 'export' or 'eager', not {tracer!r}")
    was_training = model.training
    model.train()  # through train mode: models that cache in eval mode (LeViT's attention biases)
    model.eval()  # drop those caches, so the trace reads the parameters, not a stale copy
    try:
        if tracer != "eager":
            try:
                ep = torch.export.export(model, args, strict=False)
                if tracer == "auto" and _data_dependent_sizes(ep.graph_module.graph):
                    raise ConversionError("sizes computed from tensor values")  # the eager run knows them
                sig = ep.graph_signature
                constants = {k: ep.constants[v] for k, v in sig.inputs_to_lifted_tensor_constants.items()
                             if isinstance(ep.constants.get(v), Tensor)}
                return RecordedProgram(ep.graph_module.graph, dict(sig.inputs_to_parameters),
                                       dict(sig.inputs_to_buffers), list(sig.user_inputs), constants)
            except Exception as err:  # export raises many types; all mean "cannot trace"
                if tracer == "export":
                    raise ConversionError(f"torch.export could not trace {type(model).__name__}: "
                                          f"{type(err).__name__}: {err}") from err
        try:
            return record(model, args)
        except ResourceLimitError:  # a file asked for too much: its own one line, not "could not run"
            raise
        except Exception as err:
            raise ConversionError(f"could not run {type(model).__name__} on the example inputs: "
                                  f"{type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)


def _data_dependent_sizes(graph) -> bool:
    """Whether an exported program has sizes that depend on tensor values (``nonzero``, a mask's
    rows): rules need real sizes, which only an eager run of the example has."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        if any(isinstance(v, Tensor) and free_unbacked_symbols(v) for v in vals):
            return True
    return False


def _unique_parameters(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Parameters under their first name; tied names map to it."""
    first: dict[int, str] = {}
    params: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
            params[name] = p
    return params, aliases


def _walk(ctx: Context, model: nn.Module, program: RecordedProgram, params: dict[str, Tensor],
          aliases: dict[str, str], progress: bool = False) -> None:
    graph = program.graph
    consts = getattr(model, "constants", None)  # the ONNX frontend's module keeps the file's constants here
    ctx.file_constants = {v.data_ptr() for v in consts.values() if isinstance(v, Tensor) and v.numel()} \
        if isinstance(consts, dict) and type(model).__module__ == "converters.onnx_frontend" else set()
    has_conv = any(n.op == "call_function" and op_name(n.target) in CONV_OPS for n in graph.nodes)
    user_inputs = set(program.user_inputs)
    regions = _module_regions(ctx, model, graph)
    nodes = list(graph.nodes)
    decisions: list[str] = []  # where the eager run read a value that Python may branch on
    for node in tqdm(nodes, desc=f"converting {type(model).__name__}", unit="op", disable=not progress):
        ctx.node = node
        if node.op == "placeholder":
            ctx.infos[node] = _placeholder(ctx, node, program, user_inputs, aliases, has_conv)
        elif node.op == "call_function":
            region = regions.get(node)
            first_block = len(ctx.builder.blocks)
            if region is None:
                args = tensor_args(ctx, node)
                if program.eager and op_name(node.target) in DECISIONS and any(not a.const for a in args):
                    decisions.append(f"{op_name(node.target)} in {ctx.path() or '<top level>'}")
                ctx.infos[node] = _apply(ctx, node)
                _computed_uses(ctx, node, args, first_block)
                check_op(ctx, op_name(node.target), args, ctx.infos[node], first_block)
                _write_back(ctx, node)
                ctx.evaluate(node)
            elif node is region.output:  # every input exists by now, in any op order
                ctx.infos[node] = region.convert(ctx)
        elif node.op == "output":
            _mark_outputs(ctx, node)
    for finalise in ctx.finalisers:
        finalise()
    if program.eager:
        _pin_unseen_paths(ctx, decisions)


def _computed_uses(ctx: Context, node: Node, args: list[TensorInfo], first_block: int) -> None:
    """A tensor computed from a parameter (``TensorInfo.computed``) stays one through views and
    further functions; the op that makes edges from it marks them (``rules.weight_norm``). A rule
    that passes the parameter on without saying how it was computed gets it back."""
    used = [a for a in args if a.param is not None and a.computed is not None]
    if not used:
        return
    out = ctx.infos.get(node)
    items = out if isinstance(out, (list, tuple)) else [out]
    kept = {o.param for o in items if isinstance(o, TensorInfo) and o.param is not None}
    fixed = [replace(o, computed=next(a.computed for a in used if a.param == o.param))
             if isinstance(o, TensorInfo) and o.param is not None and o.computed is None
             and any(a.param == o.param for a in used) else o for o in items]
    ctx.infos[node] = type(out)(fixed) if isinstance(out, (list, tuple)) else fixed[0]
    added = {id(b) for b in ctx.builder.blocks[first_block:]}
    for info in used:
        if info.param in kept:
            continue
        blocks = [b for b in ctx.builder.uses(info.param) if id(b) in added]
        if sum(a.param == info.param for a in args) > 1:  # w and f(w) in one op: nothing proven
            info = replace(info, computed=(info.computed[0], None))
        mark_computed(ctx, info, blocks)


#: Views an in-place write can go through (``key[..., :k].copy_(k_nope)``)
_VIEWS = frozenset({"aten.slice", "aten.select", "aten.narrow", "aten.view", "aten._unsafe_view",
                    "aten.unsqueeze", "aten.squeeze", "aten.transpose", "aten.permute", "aten.t",
                    "aten.diagonal", "aten.unflatten", "aten.alias"})


def _write_back(ctx: Context, node: Node) -> None:
    """An in-place op changes its first argument: later readers of that tensor, or of the tensor
    it is a view of, must see the neurons written (DeepSeek's MLA builds its keys by copying two
    parts into slices of an empty tensor; without this the keys had no neurons, and the
    attention no key side)."""
    name = op_name(node.target)
    out = ctx.infos.get(node)
    if not name.endswith("_") or not node.args or not isinstance(node.args[0], Node) or not isinstance(out, TensorInfo):
        return
    chain, base = [], node.args[0]
    while base.op == "call_function" and op_name(base.target) in _VIEWS and isinstance(base.args[0], Node):
        chain.append(base)
        base = base.args[0]
    info = ctx.infos.get(base)
    if not chain or not isinstance(info, TensorInfo) or info.param is not None:
        if not chain and isinstance(info, TensorInfo) and info.param is None:
            ctx.infos[base] = out
        return
    ids, pos = info.ids.contiguous().clone(), info.pos.broadcast_to(info.ids.shape).contiguous().clone()
    views = [ids, pos]
    try:
        for v in reversed(chain):
            views = [v.target(t, *v.args[1:], **v.kwargs) for t in views]
        views[0].copy_(out.ids.broadcast_to(views[0].shape))
        views[1].copy_(out.pos.broadcast_to(views[1].shape))
    except (RuntimeError, TypeError) as err:
        raise ctx.fail(f"in-place {name} through views the converter cannot replay: {err}") from err
    taints = [t for t in (info.taint, out.taint) if t is not None]
    routes = info.routes if info.routes is not None else out.routes
    ctx.infos[base] = TensorInfo(ids, pos, const=info.const and out.const, routes=routes,
                                 taint=torch.cat(taints) if taints else None)


#: Ops whose result Python reads as a number or a size: where the eager run may have followed
#: the example input (a branch, a loop over the experts that got tokens, rows a mask picked).
DECISIONS = frozenset({
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.nonzero",
    "aten.masked_select", "aten.unique", "aten._unique2", "aten.unique_consecutive", "aten.unique_dim",
    "aten.argwhere", "aten.nonzero_static",
})


def _pin_unseen_paths(ctx: Context, decisions: list[str]) -> None:
    """An eager trace that followed data-dependent control flow records one path. A parameter that
    path never read may be read on another input (an expert no token of the example reached),
    from neurons a symmetry moves while its own scalars, on ``UNUSED`` edges, stay: nothing
    about such a path can be proven, so every neuron is pinned. (Where every parameter was read,
    the other paths repeat recorded module calls on other rows — the expert loop — and the
    decisions' own neurons are pinned by the soundness check.)"""
    unused = [name for name in ctx.builder.params if not ctx.builder.uses(name)]
    if not decisions or not unused:
        return
    reason = (f"eager trace: {decisions[0]} followed the example input and {unused[0]} "
              f"(and {len(unused) - 1} more) went unread: another input may read it")
    ctx.builder.pin(torch.arange(ctx.builder.num_nodes), reason)


def _placeholder(ctx, node, program, user_inputs, aliases, has_conv) -> TensorInfo | None:
    val = node.meta.get("val")
    to_param, to_buffer, constants = program.to_param, program.to_buffer, program.constants
    if node.name in to_param:
        name = aliases.get(to_param[node.name], to_param[node.name])
        flat = ctx.flat[: val.numel()].view(val.shape)
        ctx.whole_flat[name] = flat
        none = nonneuron(tuple(val.shape))
        return TensorInfo(none.ids, none.pos, param=name, flat=flat)
    if not isinstance(val, Tensor):
        return None
    shape = tuple(val.shape)
    if node.name in to_buffer:
        ctx.buffer_names[node] = to_buffer[node.name]
        ctx.values[node] = ctx.buffer_values.get(to_buffer[node.name])
        ctx.sources[node] = frozenset((to_buffer[node.name],))
        return nonneuron(shape, None)
    if node.name in constants:
        ctx.values[node] = constants[node.name].clone()
        return nonneuron(shape, None)
    if node.name not in user_inputs:  # lifted constants
        # an ONNX file's constants (the eager run records them as tensors made outside its ops) hold
        # the file's values; other tensors made outside an eager run's ops may come from its data
        if not isinstance(val, FakeTensor) and val.numel() and val.data_ptr() in ctx.file_constants:
            ctx.values[node] = val
        return nonneuron(shape, None)
    if val.is_floating_point() and val.dim() >= 1:
        dim = 1 if (has_conv and val.dim() >= 3) else -1
        nodes = ctx.input_neurons(shape[dim])
        return TensorInfo(broadcast_ids(nodes, shape, dim % len(shape)), fresh_pos(shape, dim))
    return TensorInfo(nonneuron(shape).ids, nonneuron(shape).pos, const=False)


def _apply(ctx: Context, node: Node):
    if node.target is operator.getitem:
        got = ctx.infos.get(node.args[0])
        return got[node.args[1]] if isinstance(got, (list, tuple)) else None
    name = op_name(node.target)
    rule = OP_RULES.get(name)
    if rule is not None:
        return rule(ctx, node)
    return unknown_op(ctx, node, name)


@dataclass
class _Region:
    """The ops of one call of a module that a module rule converts as a whole."""

    module: nn.Module
    path: str
    rule: object
    nodes: set[Node]
    output: Node

    def convert(self, ctx: Context) -> TensorInfo:
        inputs = []
        for n in sorted(self.nodes, key=lambda n: n.name):
            for a in n.all_input_nodes:
                info = ctx.info(a)
                if a not in self.nodes and a not in inputs and info is not None and info.param is None:
                    inputs.append(a)
        ctx.node = self.output
        return self.rule(ctx, self.module, self.path, inputs, self.output)


def _module_regions(ctx: Context, model: nn.Module, graph) -> dict[Node, _Region]:
    """Every op inside a call of a module that a module rule claims, mapped to its region."""
    by_path: dict[str, set[Node]] = {}
    for n in graph.nodes:
        if n.op == "call_function":
            for path, _ in (n.meta.get("nn_module_stack") or {}).values():
                by_path.setdefault(path, set()).add(n)
    regions: dict[Node, _Region] = {}
    for path, nodes in by_path.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        rule = next((r for pred, r in MODULE_RULES if pred(module)), None)
        if rule is None or any(n in regions for n in nodes):
            continue
        outputs = [n for n in nodes if any(u not in nodes for u in n.users)]
        if len(outputs) != 1:
            ctx.node = next(iter(nodes))
            raise ctx.fail(f"module {path} has {len(outputs)} outputs; module rules need one")
        region = _Region(module, path, rule, nodes, outputs[0])
        regions.update(dict.fromkeys(nodes, region))
    return regions


def _mark_outputs(ctx: Context, node: Node) -> None:
    first = 0
    outs = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
    for out in outs:
        info = ctx.info(out)
        if info is None or not info.has_neurons:
            continue
        ids = info.ids[0] if info.ids.dim() > 1 else info.ids
        ids = compact(ids).reshape(-1)  # first occurrences keep their order (index 0 of broadcast axes)
        ids = ids[ids >= 0]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        order = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long)
        order.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
        nodes = uniq[torch.argsort(order)]
        ctx.builder.mark_outputs(nodes, first)
        first += nodes.numel()
