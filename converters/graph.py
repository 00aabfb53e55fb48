"""The parameter graph (the contract of DESIGN.md) and the builder that assembles it.

Edge layout of one graph, which the writer relies on::

    [ parameter edges, P ][ tied edges, T ][ structural edges ]

The parameter edges come in ``ParamIndex`` order, each parameter's scalars contiguous and
in its flat (row-major) order, so writing values back is a slice and a reshape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch_geometric.data import Data

from .errors import ConversionError
from .tensor_info import broadcast_shape
from .vocab import Activation, EdgeType, NodeType


@dataclass(frozen=True)
class ParamIndex:
    """Where each parameter scalar lives in the graph, and what else the state_dict holds.

    ``params[i] = (name, shape, offset)``: the parameter's scalars are parameter edges
    ``offset .. offset + numel`` in flat order. ``aliases`` maps tied names to their
    canonical name. ``buffers`` are kept verbatim; ``buffer_nodes[name] = (dim, nodes)``
    says that slice ``j`` of that buffer along ``dim`` belongs to node ``nodes[j]``, so a
    permutation of those nodes permutes the buffer too (BatchNorm running statistics).
    ``constant_buffers`` are buffers whose values the conversion read as constants (an index
    table, a constant factor): their values are structure, so a checkpoint converted through
    this graph as a template must hold the same values (``converters.from_state_dict``).
    """

    params: tuple[tuple[str, tuple[int, ...], int], ...]
    state_keys: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, Tensor] = field(default_factory=dict)
    buffer_nodes: dict[str, tuple[int, Tensor]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  #: parameters not stored as float32
    pins: tuple[str, ...] = ()  #: why neurons were pinned (see ``converters/soundness.py``)
    constant_buffers: tuple[str, ...] = ()

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for _, shape, _ in self.params)

    def edge_ids(self, name: str) -> Tensor:
        """Edge ids of a parameter's scalars, in the parameter's flat order."""
        name = self.aliases.get(name, name)
        for pname, shape, offset in self.params:
            if pname == name:
                return torch.arange(offset, offset + math.prod(shape))
        raise KeyError(f"no parameter named {name!r}")

    def to_dict(self) -> dict:
        return {
            "params": [[n, list(s), o] for n, s, o in self.params],
            "state_keys": list(self.state_keys),
            "aliases": dict(self.aliases),
            "buffers": dict(self.buffers),
            "buffer_nodes": {k: [d, n] for k, (d, n) in self.buffer_nodes.items()},
            "dtypes": dict(self.dtypes),
            "pins": list(self.pins),
            "constant_buffers": list(self.constant_buffers),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ParamIndex:
        return cls(
            params=tuple((n, tuple(s), int(o)) for n, s, o in d["params"]),
            state_keys=tuple(d["state_keys"]),
            aliases=dict(d["aliases"]),
            buffers=dict(d["buffers"]),
            buffer_nodes={k: (int(v[0]), v[1]) for k, v in d["buffer_nodes"].items()},
            dtypes=dict(d.get("dtypes", {})),
            pins=tuple(d.get("pins", ())),
            constant_buffers=tuple(d.get("constant_buffers", ())),
        )


class ParameterGraph(Data):
    """A model's parameters as a graph: neurons are nodes, parameters are edges.

    Node attributes: ``node_type`` (:class:`NodeType`), ``node_depth``, ``node_index``
    (channel index for input/output/token nodes, -1 otherwise), ``node_act``
    (:class:`Activation`). Edge attributes: ``edge_index``, ``edge_type``
    (:class:`EdgeType`), ``edge_pos`` (kernel offset / spatial position, 0 where none),
    ``edge_value``. Per graph: ``num_param_edges``, ``num_tied_edges``, ``tied_slot``
    (parameter edge each tied edge repeats), ``param_index`` (:class:`ParamIndex`) and,
    when converted in this process, ``model`` (the module, for ``functional_call``).
    """

    @property
    def num_parameters(self) -> int:
        return int(self.num_param_edges.sum())

    # The live module and ONNX proto ride along with a graph but are not graph data: they stay
    # out of PyG's store, so graphs with and without them batch together and are never saved.
    @property
    def model(self):
        return self.__dict__.get("_model")

    @model.setter
    def model(self, value) -> None:
        self.__dict__["_model"] = value

    @property
    def onnx(self):
        return self.__dict__.get("_onnx")

    @onnx.setter
    def onnx(self, value) -> None:
        self.__dict__["_onnx"] = value

    def __inc__(self, key: str, value, *args, **kwargs):
        if key == "tied_slot":  # an edge id: shifts by the edges before it in a batch
            return self.edge_index.size(1) if self.edge_index is not None else 0
        if key == "node_index":  # a channel number, not a node id (PyG shifts "*index*")
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def _grow(buf: Tensor, size: int) -> Tensor:
    if size <= buf.numel():
        return buf
    new = torch.zeros(max(size, 2 * buf.numel()), dtype=buf.dtype)
    new[: buf.numel()] = buf
    return new


@dataclass
class _Block:
    """Edges ``src -> dst`` with ``pos``, each broadcast to ``shape`` and enumerated row-major.

    Kept unexpanded until ``finish`` writes it straight into the final arrays: a dense
    layer's block is two short index vectors, not two arrays of its weight's size.
    """

    src: Tensor
    dst: Tensor
    pos: Tensor | int
    etype: int
    shape: tuple[int, ...]
    flat: Tensor | None = None  #: parameter scalar per edge; None: edge i carries scalar i

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def columns(self) -> tuple[Tensor, Tensor, Tensor]:
        pos = self.pos if isinstance(self.pos, Tensor) else torch.tensor(self.pos)
        return tuple(t.expand(self.shape).reshape(-1) for t in (self.src, self.dst, pos))

    def write(self, edge_index: Tensor, etype: Tensor, pos: Tensor, start: int) -> int:
        end = start + self.size
        edge_index[0, start:end].view(self.shape).copy_(self.src.expand(self.shape))
        edge_index[1, start:end].view(self.shape).copy_(self.dst.expand(self.shape))
        etype[start:end] = self.etype
        if not isinstance(self.pos, Tensor):
            pos[start:end] = self.pos
        elif self.pos.numel() < self.size and not bool(self.pos.any()):
            pos[start:end] = 0  # the common case (dense layers): a fill, not a copy
        else:
            pos[start:end].view(self.shape).copy_(self.pos.expand(self.shape))
        return end


def _block(src: Tensor, dst: Tensor, etype: int, pos: Tensor | int, shape=None, flat=None) -> _Block:
    if shape is None:
        shapes = [src.shape, dst.shape] + ([pos.shape] if isinstance(pos, Tensor) else [])
        shape = tuple(broadcast_shape(*shapes))
    return _Block(src, dst, pos, int(etype), tuple(shape), flat)


class GraphBuilder:
    """Accumulates nodes and edges from op rules; ``finish`` lays out the final graph.

    Rules never loop over neurons or scalars: every call takes whole index tensors.
    """

    def __init__(self, params: dict[str, Tensor]):
        self.params = params
        self.num_nodes = 0
        self._type = torch.zeros(1024, dtype=torch.int16)
        self._depth = torch.zeros(1024, dtype=torch.int32)
        self._index = torch.zeros(1024, dtype=torch.int32)
        self._act = torch.zeros(1024, dtype=torch.int16)
        self._uses: dict[str, list[_Block]] = {name: [] for name in params}
        self._edges: list[_Block] = []
        self.blocks: list[_Block] = []  #: every block in the order it was added (rules' new sources)
        self.buffer_nodes: dict[str, tuple[int, Tensor]] = {}
        self._pinned = torch.zeros(1024, dtype=torch.bool)
        self.pins: list[str] = []  #: why neurons were pinned, one line per pinning op

    # nodes ------------------------------------------------------------------
    def add_nodes(self, n: int, ntype: NodeType, depth: int, index: Tensor | None = None) -> Tensor:
        start, end = self.num_nodes, self.num_nodes + n
        for attr in ("_type", "_depth", "_index", "_act", "_pinned"):
            setattr(self, attr, _grow(getattr(self, attr), end))
        self._type[start:end] = int(ntype)
        self._depth[start:end] = depth
        self._index[start:end] = -1 if index is None else index
        self._act[start:end] = int(Activation.NONE)
        self.num_nodes = end
        return torch.arange(start, end)

    def depth_of(self, ids: Tensor) -> int:
        ids = ids[ids >= 0]
        return int(self._depth[ids].max()) if ids.numel() else 0

    def activation_of(self, ids: Tensor) -> Tensor:
        return self._act[ids]

    def set_activation(self, ids: Tensor, act: Activation) -> None:
        self._act[ids] = int(act)

    def pin(self, ids: Tensor, reason: str) -> None:
        """Make neurons distinguishable: no symmetry may move them (see ``soundness.py``)."""
        ids = ids[ids >= 0]
        if ids.numel():
            self._pinned[ids] = True
            self.pins.append(reason)

    def mark_outputs(self, ids: Tensor, first_index: int) -> None:
        self._type[ids] = int(NodeType.OUTPUT)
        self._index[ids] = torch.arange(first_index, first_index + ids.numel(), dtype=torch.int32)

    # edges ------------------------------------------------------------------
    def param_edges(
        self,
        name: str,
        src: Tensor,
        dst: Tensor,
        etype: EdgeType,
        pos: Tensor | int = 0,
        flat: Tensor | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        """Edges carrying parameter ``name``, broadcast to ``shape`` and enumerated row-major.

        Without ``flat``, edge ``i`` carries scalar ``i`` (the parameter in its own layout);
        with it, edge ``i`` carries scalar ``flat[i]``.
        """
        block = _block(src, dst, etype, pos, shape, None if flat is None else flat.reshape(-1))
        n = block.size if flat is None else flat.numel()
        if flat is None and n != self.params[name].numel():
            raise ConversionError(f"rule gave {n} edges for {name} of {self.params[name].numel()} scalars")
        self._uses[name].append(block)
        self.blocks.append(block)

    def uses(self, name: str) -> list[_Block]:
        """The blocks of edges carrying parameter ``name`` so far."""
        return self._uses[name]

    def edges(self, src: Tensor, dst: Tensor, etype: EdgeType, pos: Tensor | int = 0) -> None:
        """Structural (parameter-free) edges."""
        self._edges.append(_block(src, dst, etype, pos))
        self.blocks.append(self._edges[-1])

    # result -----------------------------------------------------------------
    def finish(self) -> tuple[dict[str, Tensor], tuple, Tensor]:
        carried, tied, layout, offset = [], [], [], 0
        for name, tensor in self.params.items():
            c, t = self._param_layout(name, tensor, offset)
            carried.append(c)
            tied += t
            layout.append((name, tuple(tensor.shape), offset))
            offset += tensor.numel()
        tied_blocks = [b for b, _ in tied]
        blocks = carried + tied_blocks + self._edges
        total = sum(b.size for b in blocks)
        edge_index = torch.empty(2, total, dtype=torch.long)
        etype = torch.empty(total, dtype=torch.int16)
        pos = torch.empty(total, dtype=torch.int32)
        start = 0
        for b in blocks:
            start = b.write(edge_index, etype, pos, start)
        tied_slot = torch.cat([s for _, s in tied]) if tied else torch.zeros(0, dtype=torch.long)
        # float64 models keep their precision in the graph; everything else fits float32 exactly
        wide = any(p.dtype == torch.float64 for p in self.params.values())
        value = torch.empty(total, dtype=torch.float64 if wide else torch.float32)
        value[offset + tied_slot.numel() :] = 1.0  # structural edges; the rest is written below
        for (_, _, off), p in zip(layout, self.params.values()):
            value[off : off + p.numel()] = p.detach().reshape(-1)
        value[offset : offset + tied_slot.numel()] = value[tied_slot]
        # nodes that feed parameter or tied edges (known from the short, unexpanded sources)
        sources = torch.zeros(self.num_nodes, dtype=torch.bool)
        for b in carried + tied_blocks:
            sources[b.src.reshape(-1)] = True
        n = self.num_nodes
        index = self._index[:n].clone()
        # pinned neurons carry an index of their own, as input and output neurons do
        pinned = self._pinned[:n] & (index < 0)
        index[pinned] = torch.arange(int(pinned.sum()), dtype=index.dtype)
        data = {
            "edge_index": edge_index,
            "edge_type": etype,
            "edge_pos": pos,
            "edge_value": value,
            "node_type": self._type[:n].clone(),
            "node_depth": self._depth[:n].clone(),
            "node_index": index,
            "node_act": self._act[:n].clone(),
            "num_param_edges": torch.tensor([offset]),
            "num_tied_edges": torch.tensor([tied_slot.numel()]),
            "tied_slot": tied_slot,
        }
        return data, tuple(layout), sources

    def _unused_node(self) -> Tensor:
        """The node holding one parameter's unread scalars. Pinned: unread parameters of equal
        shape (experts this input never routed to) are not interchangeable."""
        node = self.add_nodes(1, NodeType.UNUSED, 0)
        self._pinned[node] = True
        return node

    def _param_layout(self, name: str, tensor: Tensor, offset: int) -> tuple[_Block, list]:
        """The block carrying ``name`` in flat order, and (block, slots) of tied repeats."""
        numel = tensor.numel()
        uses = self._uses[name]
        if not uses:  # never read by the forward: still one slot per scalar (conservation)
            unused = self._unused_node()
            return _block(unused, unused, EdgeType.UNUSED, torch.arange(numel), (numel,)), []
        if all(u.flat is None for u in uses):
            # the slots (8 bytes a scalar) only for a parameter that is read again
            slots = torch.arange(offset, offset + numel) if len(uses) > 1 else None
            return uses[0], [(u, slots) for u in uses[1:]]
        cols = [u.columns() for u in uses]
        flats = torch.cat([u.flat if u.flat is not None else torch.arange(numel) for u in uses])
        src, dst, pos = (torch.cat([c[i] for c in cols]) for i in range(3))
        etype = torch.cat([torch.full((u.size,), u.etype, dtype=torch.int16) for u in uses])
        # the first use of each scalar carries it (a scatter, no sort); later uses are tied
        n = flats.numel()
        claim = torch.full((numel,), n, dtype=torch.long)
        claim.scatter_reduce_(0, flats, torch.arange(n), reduce="amin")
        missing = (claim == n).nonzero().squeeze(1)
        if missing.numel():  # scalars the forward never reads still need their slot
            unused = self._unused_node()
            claim[missing] = n + torch.arange(missing.numel())
            src = torch.cat([src, unused.expand(missing.numel())])
            dst = torch.cat([dst, unused.expand(missing.numel())])
            pos = torch.cat([pos, missing.to(pos.dtype)])
            etype = torch.cat([etype, torch.full((missing.numel(),), int(EdgeType.UNUSED), dtype=torch.int16)])
        carried = _Block(src[claim], dst[claim], pos[claim], 0, (numel,))
        carried.etype = etype[claim]
        repeats = (claim[flats] != torch.arange(n)).nonzero().squeeze(1)
        if repeats.numel() == 0:
            return carried, []
        tied = _Block(src[repeats], dst[repeats], pos[repeats], 0, (repeats.numel(),))
        tied.etype = etype[repeats]
        return carried, [(tied, offset + flats[repeats])]


