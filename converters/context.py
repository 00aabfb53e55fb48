"""State shared by the rules while one traced program is converted."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Node

from .graph import ConversionError, GraphBuilder
from .tensor_info import TensorInfo, broadcast_ids, fresh_pos, no_neurons
from .vocab import EdgeType, NodeType


class Context:
    """What a rule sees: the inputs' infos, the builder, the current op's metadata."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.infos: dict[Node, object] = {}
        self.buffer_names: dict[Node, str] = {}
        self.whole_flat: dict[str, Tensor] = {}  # parameter -> its placeholder's flat index
        self.next_input_index = 0
        self._tags: dict[Node, int] = {}
        self.unbiased: dict[Node, tuple[Tensor, int]] = {}  # dense outputs without a bias yet
        self.node: Node | None = None

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

    def param_tensor(self, name: str) -> Tensor:
        return self.builder.params[name]

    def fail(self, message: str) -> ConversionError:
        op = self.node.target if self.node is not None else "?"
        where = self.path() or "<top level>"
        return ConversionError(f"{message} (op {op} in module {where!r})")

    # building ---------------------------------------------------------------
    def depth(self, *infos: TensorInfo | None) -> int:
        """Depth for nodes computed from ``infos``: one past the deepest input neuron."""
        d = [self.builder.depth_of(i.ids.reshape(-1)) for i in infos if i is not None and i.has_neurons]
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

    def materialise_inputs(self, info: TensorInfo, dim: int) -> Tensor:
        """Input nodes for a non-neuron tensor fed to a layer (features computed from constants)."""
        return self.input_neurons(info.ids.shape[dim])

    def materialise(self, info: TensorInfo) -> TensorInfo:
        """Neurons for a parameter used as a tensor: one per scalar, fed by a constant edge."""
        if info.param is None:
            return info
        flat = info.flat.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        nodes = self.new_neurons(uniq.numel(), NodeType.CONSTANT, 1)
        source = self.new_neurons(1, NodeType.BIAS, 0)
        self.builder.param_edges(
            info.param, source.expand(uniq.numel()), nodes, EdgeType.CONSTANT, flat=uniq
        )
        ids = nodes[inverse].reshape(info.flat.shape)
        return TensorInfo(ids=ids, pos=info.pos)


def nonneuron(shape: tuple[int, ...], *infos: TensorInfo | None) -> TensorInfo:
    """Info of a tensor computed from non-neuron inputs only."""
    const = all(i.const for i in infos if i is not None)
    routes = next((i.routes for i in infos if i is not None and i.routes is not None), None)
    info = no_neurons(shape, const)
    return info if routes is None else TensorInfo(info.ids, info.pos, info.const, routes=routes)
