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

from .vocab import Activation, EdgeType, NodeType


class ConversionError(ValueError):
    """A model (or file) cannot be turned into a parameter graph; the message says why."""


@dataclass(frozen=True)
class ParamIndex:
    """Where each parameter scalar lives in the graph, and what else the state_dict holds.

    ``params[i] = (name, shape, offset)``: the parameter's scalars are parameter edges
    ``offset .. offset + numel`` in flat order. ``aliases`` maps tied names to their
    canonical name. ``buffers`` are kept verbatim; ``buffer_nodes[name] = (dim, nodes)``
    says that slice ``j`` of that buffer along ``dim`` belongs to node ``nodes[j]``, so a
    permutation of those nodes permutes the buffer too (BatchNorm running statistics).
    """

    params: tuple[tuple[str, tuple[int, ...], int], ...]
    state_keys: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, Tensor] = field(default_factory=dict)
    buffer_nodes: dict[str, tuple[int, Tensor]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  #: parameters not stored as float32

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

    def __inc__(self, key: str, value, *args, **kwargs):
        if key == "tied_slot":
            return self.edge_index.size(1) if self.edge_index is not None else 0
        return super().__inc__(key, value, *args, **kwargs)


def _grow(buf: Tensor, size: int) -> Tensor:
    if size <= buf.numel():
        return buf
    new = torch.zeros(max(size, 2 * buf.numel()), dtype=buf.dtype)
    new[: buf.numel()] = buf
    return new


@dataclass
class _ParamUse:
    src: Tensor
    dst: Tensor
    etype: int
    pos: Tensor
    flat: Tensor | None  # flat indices covered, None for "all, in order"


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
        self._uses: dict[str, list[_ParamUse]] = {name: [] for name in params}
        self._edges: list[tuple[Tensor, Tensor, int, Tensor]] = []
        self.buffer_nodes: dict[str, tuple[int, Tensor]] = {}

    # nodes ------------------------------------------------------------------
    def add_nodes(self, n: int, ntype: NodeType, depth: int, index: Tensor | None = None) -> Tensor:
        start, end = self.num_nodes, self.num_nodes + n
        for attr in ("_type", "_depth", "_index", "_act"):
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
    ) -> None:
        """Edges carrying parameter ``name``: scalar ``flat[i]`` (or ``i``) on edge ``i``."""
        n = src.numel() if flat is None else flat.numel()
        if flat is None and n != self.params[name].numel():
            raise ConversionError(f"rule gave {n} edges for {name} of {self.params[name].numel()} scalars")
        self._uses[name].append(_ParamUse(src, dst, int(etype), _as_pos(pos, n), flat))

    def edges(self, src: Tensor, dst: Tensor, etype: EdgeType, pos: Tensor | int = 0) -> None:
        """Structural (parameter-free) edges."""
        self._edges.append((src, dst, int(etype), _as_pos(pos, src.numel())))

    # result -----------------------------------------------------------------
    def finish(self) -> tuple[dict[str, Tensor], tuple[tuple[str, tuple[int, ...], int], ...]]:
        p_parts, t_parts, tied_slot = [], [], []
        layout, offset = [], 0
        for name, tensor in self.params.items():
            parts, slots = self._param_layout(name, tensor, offset)
            p_parts.append(parts[0])
            if parts[1] is not None:
                t_parts.append(parts[1])
                tied_slot.append(slots)
            layout.append((name, tuple(tensor.shape), offset))
            offset += tensor.numel()
        s_parts = [(s, d, torch.full((s.numel(),), t, dtype=torch.int16), p) for s, d, t, p in self._edges]
        cols = list(zip(*(p_parts + t_parts + s_parts))) if (p_parts or s_parts) else [[]] * 4
        src, dst, etype, pos = (torch.cat(c) if c else torch.zeros(0, dtype=torch.long) for c in cols)
        n_s = sum(s.numel() for s, *_ in self._edges)
        values = self._values(offset, tied_slot, n_s)
        n = self.num_nodes
        data = {
            "edge_index": torch.stack([src.long(), dst.long()]),
            "edge_type": etype.to(torch.int16),
            "edge_pos": pos.to(torch.int32),
            "edge_value": values,
            "node_type": self._type[:n].clone(),
            "node_depth": self._depth[:n].clone(),
            "node_index": self._index[:n].clone(),
            "node_act": self._act[:n].clone(),
            "num_param_edges": torch.tensor([offset]),
            "num_tied_edges": torch.tensor([sum(t.numel() for t in tied_slot)]),
            "tied_slot": torch.cat(tied_slot) if tied_slot else torch.zeros(0, dtype=torch.long),
        }
        return data, tuple(layout)

    def _values(self, num_params: int, tied_slot: list[Tensor], num_struct: int) -> Tensor:
        flat = [t.detach().reshape(-1).float() for t in self.params.values()]
        pvals = torch.cat(flat) if flat else torch.zeros(0)
        tied = pvals[torch.cat(tied_slot)] if tied_slot else torch.zeros(0)
        return torch.cat([pvals, tied, torch.ones(num_struct)])

    def _param_layout(self, name: str, tensor: Tensor, offset: int):
        """Parameter edges of ``name`` in flat order, plus tied edges for repeated uses."""
        numel = tensor.numel()
        uses = self._uses[name]
        if len(uses) == 1 and uses[0].flat is None:
            u = uses[0]
            etype = torch.full((numel,), u.etype, dtype=torch.int16)
            return ((u.src, u.dst, etype, u.pos), None), None
        if not uses:
            unused = self.add_nodes(1, NodeType.UNUSED, 0)
            flat = torch.arange(numel)
            src = unused.expand(numel)
            etype = torch.full((numel,), int(EdgeType.UNUSED), dtype=torch.int16)
            return ((src, src, etype, flat), None), None
        flats = torch.cat([u.flat if u.flat is not None else torch.arange(numel) for u in uses])
        src = torch.cat([u.src.reshape(-1) for u in uses])
        dst = torch.cat([u.dst.reshape(-1) for u in uses])
        pos = torch.cat([u.pos for u in uses])
        etype = torch.cat([torch.full((u.src.numel(),), u.etype, dtype=torch.int16) for u in uses])
        # the first use of each scalar carries it; later uses become tied edges
        order = torch.sort(flats, stable=True).indices
        sorted_flat = flats[order]
        first = torch.ones_like(sorted_flat, dtype=torch.bool)
        first[1:] = sorted_flat[1:] != sorted_flat[:-1]
        carried, tied = order[first], order[~first]
        covered = torch.zeros(numel, dtype=torch.bool)
        covered[sorted_flat[first]] = True
        if not bool(covered.all()):
            # scalars the forward never reads still need their slot (conservation)
            missing = (~covered).nonzero().squeeze(1)
            unused = self.add_nodes(1, NodeType.UNUSED, 0)
            flats = torch.cat([flats, missing])
            src = torch.cat([src, unused.expand(missing.numel())])
            dst = torch.cat([dst, unused.expand(missing.numel())])
            pos = torch.cat([pos, missing.to(pos.dtype)])
            etype = torch.cat([etype, torch.full((missing.numel(),), int(EdgeType.UNUSED), dtype=torch.int16)])
            carried = torch.cat([carried, torch.arange(len(order), len(order) + missing.numel())])
            carried = carried[torch.argsort(flats[carried])]
        param_part = (src[carried], dst[carried], etype[carried], pos[carried])
        if tied.numel() == 0:
            return (param_part, None), None
        tied_part = (src[tied], dst[tied], etype[tied], pos[tied])
        return (param_part, tied_part), offset + flats[tied]


def _as_pos(pos: Tensor | int, n: int) -> Tensor:
    if isinstance(pos, int):
        return torch.full((n,), pos, dtype=torch.int32)
    return pos.reshape(-1).to(torch.int32).expand(n) if pos.numel() == 1 else pos.reshape(-1).to(torch.int32)
