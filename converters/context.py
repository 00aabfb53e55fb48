"""State shared by the rules while one traced program is converted."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx import Node, map_arg

from .graph import ConversionError, GraphBuilder
from .registry import op_name
from .tensor_info import TensorInfo, broadcast_ids, distinct_ids, first_occurrence, fresh_pos, no_neurons
from .vocab import EdgeType, NodeType


class Context:
    """What a rule sees: the inputs' infos, the builder, the current op's metadata."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.infos: dict[Node, object] = {}
        self.buffer_names: dict[Node, str] = {}
        self.whole_flat: dict[str, Tensor] = {}  # parameter -> its placeholder's flat index
        self.next_input_index = 0
        self.next_token_index = 0
        self._tags: dict[Node, int] = {}
        self.unbiased: dict[Node, tuple[Tensor, int]] = {}  # dense outputs without a bias yet
        self.node: Node | None = None
        self.buffer_values: dict[str, Tensor] = {}
        self.values: dict[Node, Tensor] = {}  #: real values of constant tensors (see ``evaluate``)
        #: the buffers each value was computed from, and those whose values a rule read: the
        #: graph depends on them, so they are structure (``ParamIndex.constant_buffers``)
        self.sources: dict[Node, frozenset[str]] = {}
        self.read_buffers: set[str] = set()
        self.flat = torch.arange(0)  #: ``arange`` of the largest parameter (``from_torch`` sets it)
        #: code of each selection of positions taken from neurons (``rules.shape.selection_view``)
        self.selections: dict[object, int] = {}
        #: storage of an ONNX file's constants: their recorded values are the file's, not an input's
        self.file_constants: set[int] = set()
        self._stale = False
        #: run once every op is converted, for rules that tie what they made to the edges
        #: later ops make (weight norm's gains to the neurons its weight feeds)
        self.finalisers: list = []

    def release(self) -> None:
        """Drop what only the walk over the ops needs (every tensor's shadow, constant values, the
        parameters' flat indices: 8 bytes per scalar of the largest parameter) once it is done,
        so the graph's arrays are laid out without them. Keeps what the index reads."""
        self.infos.clear()
        self.values.clear()
        self.sources.clear()
        self.whole_flat.clear()
        self.finalisers.clear()
        self.flat = torch.arange(0)

    # reading ----------------------------------------------------------------
    def info(self, arg: object) -> TensorInfo | None:
        """Info of an fx argument; ``None`` for Python numbers and other non-tensors."""
        if isinstance(arg, Node):
            got = self.infos.get(arg)
            return got if isinstance(got, TensorInfo) else None
        return None

    def shape(self, node: Node | None = None) -> tuple[int, ...]:
        val = (node or self.node).meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[0]
        return tuple(int(s) for s in val.shape)

    def path(self, node: Node | None = None) -> str:
        stack = (node or self.node).meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def tag(self, node: object) -> int:
        """A small id per constant tensor, in order of first use (1, 2, ...)."""
        if not isinstance(node, Node):
            return 0
        return self._tags.setdefault(node, len(self._tags) + 1)

    def const_value(self, arg: object) -> Tensor | None:
        """The real value of a tensor that depends on neither inputs nor parameters (an index
        buffer, a relative-position index built in ``forward``), when it was computed."""
        if not isinstance(arg, Node) or self._stale:
            return None
        info = self.infos.get(arg)
        # the eager tracer records every value: only a constant's is the same on every input
        value = self.values.get(arg) if isinstance(info, TensorInfo) and info.const else None
        if value is not None:
            self.read_buffers.update(self.sources.get(arg, ()))
        return value

    def evaluate(self, node: Node, limit: int = 1 << 22) -> None:
        """Run ``node`` on real values when it is constant, in program order, so in-place
        writes into constant tensors happen as in the model. An in-place op that cannot run
        here makes every value computed so far untrustworthy."""
        sources = frozenset().union(*(self.sources.get(a, frozenset()) for a in node.all_input_nodes))
        if sources:
            self.sources[node] = sources
        info = self.infos.get(node)
        val = node.meta.get("val")
        if isinstance(val, Tensor) and not isinstance(val, FakeTensor) and info is not None:
            self.values[node] = val  # the eager tracer records real values
            return
        value = None
        parts = val if isinstance(val, (list, tuple)) else [val]
        infos = info if isinstance(info, (list, tuple)) else [info]
        const = all(isinstance(i, TensorInfo) and i.const for i in infos if i is not None) and any(
            isinstance(i, TensorInfo) for i in infos)
        size = sum(v.numel() for v in parts if isinstance(v, Tensor))
        if const and size <= limit and all(isinstance(v, Tensor) for v in parts):
            inputs = {a: self.values.get(a) for a in node.all_input_nodes}
            if all(v is not None for v in inputs.values()):
                args, kwargs = map_arg((node.args, node.kwargs), lambda a: inputs[a])
                try:
                    value = node.target(*args, **kwargs)
                except Exception:  # an op that cannot run outside its program: no value
                    value = None
        if isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and value
                                         and all(isinstance(v, Tensor) for v in value)):
            self.values[node] = value
        elif op_name(node.target).endswith("_"):
            self._stale = True

    def param_tensor(self, name: str) -> Tensor:
        return self.builder.params[name]

    def fail(self, message: str) -> ConversionError:
        op = self.node.target if self.node is not None else "?"
        where = self.path() or "<top level>"
        return ConversionError(f"{message} (op {op} in module {where!r})")

    # building ---------------------------------------------------------------
    def depth(self, *infos: TensorInfo | None) -> int:
        """Depth for nodes computed from ``infos``: one past the deepest input neuron."""
        d = [self.builder.depth_of(distinct_ids(i.ids)) for i in infos if i is not None and i.has_neurons]
        return max(d, default=0) + 1

    def new_neurons(self, n: int, ntype: NodeType, depth: int) -> Tensor:
        return self.builder.add_nodes(n, ntype, depth)

    def neurons_along(self, nodes: Tensor, shape: tuple[int, ...], dim: int) -> TensorInfo:
        """Info of a fresh output whose axis ``dim`` holds ``nodes``."""
        return TensorInfo(ids=broadcast_ids(nodes, shape, dim % len(shape)), pos=fresh_pos(shape, dim))

    def input_neurons(self, n: int) -> Tensor:
        """Input nodes, numbered after those made so far (inputs are never permuted)."""
        index = torch.arange(self.next_input_index, self.next_input_index + n)
        self.next_input_index += n
        return self.builder.add_nodes(n, NodeType.INPUT, 0, index=index)

    def token_nodes(self, n: int) -> Tensor:
        """Token nodes of one lookup, numbered after those made so far (each lookup reads its own input)."""
        index = torch.arange(self.next_token_index, self.next_token_index + n)
        self.next_token_index += n
        return self.builder.add_nodes(n, NodeType.TOKEN, 0, index=index)

    def materialise_inputs(self, info: TensorInfo, dim: int) -> Tensor:
        """Input nodes for a non-neuron tensor fed to a layer (features computed from constants)."""
        return self.input_neurons(info.ids.shape[dim])

    def materialise(self, info: TensorInfo, positional: tuple[int, ...] = ()) -> TensorInfo:
        """Neurons for a parameter used as a tensor: one per scalar, fed by a constant edge.

        ``positional`` names axes that are positions, not channels (the offsets of a relative
        position table that a constant index spreads over query/key pairs): each scalar's edge
        then carries its coordinate along them, so scalars of different positions are never
        interchangeable, while the other axes (heads) still are."""
        if info.param is None:
            return info
        flat = info.flat.reshape(-1)
        uniq, inverse, first = first_occurrence(flat)
        nodes = self.new_neurons(uniq.numel(), NodeType.CONSTANT, 1)
        source = self.new_neurons(1, NodeType.BIAS, 0)
        pos = 0
        if positional:
            shape = info.flat.shape
            coord = torch.zeros(shape, dtype=torch.long)
            for d in positional:
                view = [1] * len(shape)
                view[d] = shape[d]
                coord = coord * shape[d] + torch.arange(shape[d]).view(view)
            pos = coord.reshape(-1)[first] + 1
        self.builder.param_edges(
            info.param, source.expand(uniq.numel()), nodes, EdgeType.CONSTANT, pos, flat=uniq
        )
        ids = nodes[inverse].reshape(info.flat.shape)
        return TensorInfo(ids=ids, pos=info.pos)


def nonneuron(shape: tuple[int, ...], *infos: TensorInfo | None) -> TensorInfo:
    """Info of a tensor without neurons computed from ``infos``: it remembers every neuron
    it was computed from (``taint``), so that a rule that later drops it is noticed."""
    infos = tuple(i for i in infos if i is not None)
    const = all(i.const for i in infos)
    routes = next((i.routes for i in infos if i.routes is not None), None)
    info = no_neurons(shape, const)
    taint = dependencies(*infos)
    return TensorInfo(info.ids, info.pos, info.const, routes=routes, taint=taint if taint.numel() else None)


def dependencies(*infos: TensorInfo | None) -> Tensor:
    """Every neuron the values of ``infos`` depend on: their own neurons, the router neurons
    they were chosen from, the neurons masks and indices were computed from (sorted, unique)."""
    return torch.unique(mentioned(*infos))


def mentioned(*infos: TensorInfo | None) -> Tensor:
    """The neurons of :func:`dependencies`, with repeats and unsorted: enough for a membership
    test or a scatter (the soundness check runs per op and per argument; a sort each time is
    most of its cost)."""
    parts = []
    for i in infos:
        if i is None or i.param is not None:
            continue
        parts += [t for t in (distinct_ids(i.ids), i.routes, i.taint) if t is not None]
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([p.reshape(-1) for p in parts])
