"""Symmetries of parameter graphs: random function-preserving reparametrisations.

A random automorphism of the graph's *structure* (types, depths, indices, activations,
edge types and positions; not values) is found by colour refinement with
individualisation on two copies of the graph at once. Because the graph's automorphisms
are the model's symmetries (DESIGN.md, contract 3), moving every edge value along it
gives the graph of an equivalent model: permuted hidden neurons, heads, experts, with
channel-ordered buffers (BatchNorm statistics) carried along. Optionally, neurons with
positively homogeneous activations (ReLU) are rescaled as well.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from converters import ParameterGraph, edge_kinds, with_values
from converters.vocab import ODD, POSITIVE_HOMOGENEOUS, Activation, EdgeType, NodeType
from converters.writer import PARAMETER

_M1 = 0x7FB5D329728EA185
_M2 = 0x1B873593


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 31)
    x = x * _M1
    x = x ^ (x >> 29)
    return x * _M2 + 0x2545F491


def _csr(index: Tensor, n: int) -> tuple[Tensor, Tensor]:
    order = torch.sort(index.int() if n < 2**31 else index, stable=True).indices
    ptr = torch.zeros(n + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(index, minlength=n), 0)
    return order, ptr


def _ranges(order: Tensor, ptr: Tensor, nodes: Tensor) -> Tensor:
    """Edges (positions in ``order``'s edge list) incident to ``nodes``, through a CSR index."""
    starts, counts = ptr[nodes], ptr[nodes + 1] - ptr[nodes]
    total = int(counts.sum())
    offsets = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return order[torch.repeat_interleave(starts, counts) + torch.arange(total) - offsets]


class _Refiner:
    """Colour refinement (1-WL) that only touches the edges of nodes whose colour changed.

    Each node keeps the sum of hashed (edge label, neighbour colour) messages along and against
    its edges; when a neighbour's colour changes the sums are corrected by the difference, so a
    refinement step costs the edges of the changed nodes, not the whole graph. A class that
    does not split keeps its colour id (so it changes nothing); the parts of a class that splits
    get fresh ids ordered by (old colour, hash), which is canonical. Several copies of the
    graph (as many as ``colors`` holds) are refined together (the automorphism search matches
    two), sharing one edge index; identical copies refine identically, colour ids included.
    A 64-bit hash collision could only merge two classes, and every automorphism built on this
    is verified exactly.
    """

    def __init__(self, src: Tensor, dst: Tensor, label: Tensor, n: int):
        self.n, self.src, self.dst = n, src, dst
        kinds = torch.arange(int(label.max()) + 1 if label.numel() else 1)
        self.lab_in = _mix(kinds * 1_000_003 + 7)[label]  # hashed per label, gathered per edge
        self.lab_out = _mix(kinds * 998_244_353 + 11)[label]
        self.out_edges = _csr(src, n)
        self.in_edges = _csr(dst, n)

    def messages(self, colors: Tensor) -> tuple[Tensor, Tensor]:
        h_in, h_out = torch.zeros_like(colors), torch.zeros_like(colors)
        for c in range(colors.numel() // max(self.n, 1)):
            mixed, at = _mix(colors[c * self.n:(c + 1) * self.n]), c * self.n
            h_in[at:at + self.n].index_add_(0, self.dst, _mix(self.lab_in + mixed[self.src]))
            h_out[at:at + self.n].index_add_(0, self.src, _mix(self.lab_out + mixed[self.dst]))
        return h_in, h_out

    def _update(self, h_in: Tensor, h_out: Tensor, changed: Tensor, old: Tensor, new: Tensor) -> Tensor:
        """Correct the sums for ``changed`` nodes' new colours; returns the nodes whose sums moved
        (with repeats)."""
        touched = [changed]
        for c in range(h_in.numel() // max(self.n, 1)):
            at = c * self.n
            mine = (changed >= at) & (changed < at + self.n)
            if not bool(mine.any()):
                continue
            local = changed[mine] - at
            self._where[local] = torch.arange(local.numel())
            m_old, m_new = _mix(old[mine]), _mix(new[mine])
            e = _ranges(*self.out_edges, local)  # u -> v with u changed: v's incoming sum
            k, lab, dst = self._where[self.src[e]], self.lab_in[e], at + self.dst[e]
            h_in.index_add_(0, dst, _mix(lab + m_new[k]) - _mix(lab + m_old[k]))
            e = _ranges(*self.in_edges, local)
            k, lab, src = self._where[self.dst[e]], self.lab_out[e], at + self.src[e]
            h_out.index_add_(0, src, _mix(lab + m_new[k]) - _mix(lab + m_old[k]))
            touched += [dst, src]
        return torch.cat(touched)

    def _split(self, colors: Tensor, h_in: Tensor, h_out: Tensor, touched: Tensor | None, top: int):
        """Split, in place, the classes whose sums differ inside; only classes with a ``touched``
        member can (the others were stable and nothing reached them). Returns the nodes whose
        colour changed, their old colours and the largest colour id now."""
        if touched is None:
            members = torch.arange(colors.numel())
        else:
            classes = colors[touched]
            self._affected[classes] = True
            members = self._affected[colors].nonzero().squeeze(1)
            self._affected[classes] = False
        key = _mix(_mix(h_in[members]) ^ (h_out[members] * 0x9E3779B97F4A7C15))
        order = torch.argsort(key, stable=True)
        order = order[torch.argsort(colors[members[order]], stable=True)]
        nodes, c, k = members[order], colors[members[order]], key[order]
        new_class = torch.ones_like(c, dtype=torch.bool)
        new_class[1:] = c[1:] != c[:-1]
        new_group = new_class.clone()
        new_group[1:] |= k[1:] != k[:-1]
        moving = new_group & ~new_class
        if not bool(moving.any()):
            return None, None, top
        group = torch.cumsum(new_group.long(), 0) - 1
        first = torch.cummax(torch.where(new_class, group, torch.full_like(group, -1)), 0).values
        fresh = torch.cumsum(moving.long(), 0)
        going = group != first
        changed, old = nodes[going], c[going]
        colors[changed] = top + fresh[going]
        return changed, old, top + int(fresh[-1])

    def stable(self, colors: Tensor, prev: Tensor, h_in: Tensor, h_out: Tensor):
        """Refine ``colors`` to the stable partition; ``h_in``/``h_out`` are the sums for ``prev``
        (none of them is modified)."""
        colors, h_in, h_out = colors.clone(), h_in.clone(), h_out.clone()
        changed = (colors != prev).nonzero().squeeze(1)
        old = prev[changed]
        top = int(colors.max())
        self._where = torch.full((self.n,), -1, dtype=torch.long)
        self._affected = torch.zeros(2 * colors.numel() + 2, dtype=torch.bool)
        touched = None  # the first split looks at every class
        while True:
            if changed is not None and changed.numel():
                touched = self._update(h_in, h_out, changed, old, colors[changed])
            elif touched is not None:
                return colors, h_in, h_out
            changed, old, top = self._split(colors, h_in, h_out, touched, top)
            if changed is None:
                return colors, h_in, h_out


def refine(colors: Tensor, src: Tensor, dst: Tensor, label: Tensor) -> Tensor:
    """Colour refinement (1-WL) to the stable partition; colours come back dense."""
    n = colors.numel()
    if n == 0:
        return colors
    colors = torch.unique(colors, return_inverse=True)[1]
    refiner = _Refiner(src, dst, label, n)
    colors, _, _ = refiner.stable(colors, colors, *refiner.messages(colors))
    return torch.unique(colors, return_inverse=True)[1]


def _dense_keys(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.unique(key, return_inverse=True, return_counts=True)`` of non-negative keys: by
    counting when the key space is small (no sort of every entry), else by sorting."""
    if key.numel() and int(key.max()) < 1 << 22:
        count = torch.bincount(key)
        present = count > 0
        return present.nonzero().squeeze(1), (torch.cumsum(present, 0) - 1)[key], count[present]
    return torch.unique(key, return_inverse=True, return_counts=True)


def _exact_dense(*cols: Tensor) -> Tensor:
    """Dense ids of the rows of small non-negative-after-shift integer columns, exactly."""
    key = torch.zeros_like(cols[0], dtype=torch.long)
    for c in cols:
        c = c.long() - int(c.min()) if c.numel() else c.long()
        key = key * (int(c.max()) + 1 if c.numel() else 1) + c
    return _dense_keys(key)[1]


def _structure(g: ParameterGraph) -> tuple[Tensor, Tensor]:
    node = _exact_dense(g.node_type, g.node_depth, g.node_index, g.node_act)
    edge = _exact_dense(g.edge_type, g.edge_pos)
    return node, edge


def _with_ties(g: ParameterGraph) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Node colours, edges and labels of the structure, where every parameter scalar used by
    several edges (tied weights, a layer applied twice) is a node joined to a node per use:
    an automorphism must then move all uses of one scalar to the uses of one scalar."""
    node, label = _structure(g)
    src, dst = g.edge_index
    p, t = int(g.num_param_edges), int(g.num_tied_edges)
    if t == 0:
        return node, src, dst, label
    n, kinds = g.num_nodes, int(label.max()) + 1
    slot = g.tied_slot.long()
    scalars, scalar_of = torch.unique(slot, return_inverse=True)
    uses = torch.cat([scalars, torch.arange(p, p + t)])  # the first use of each scalar, then repeats
    owner = torch.cat([torch.arange(scalars.numel()), scalar_of])
    use_node = n + torch.arange(uses.numel())
    scalar_node = n + uses.numel() + owner
    colours = int(node.max()) + 1
    node = torch.cat([node, torch.full((uses.numel(),), colours), torch.full((scalars.numel(),), colours + 1)])
    src = torch.cat([src, src[uses], use_node, scalar_node])
    dst = torch.cat([dst, use_node, dst[uses], use_node])
    label = torch.cat([label, kinds + label[uses], torch.full((uses.numel(),), 2 * kinds),
                       torch.full((uses.numel(),), 2 * kinds + 1)])
    return node, src, dst, label


@dataclass
class _Plan:
    """What an automorphism search needs that depends on the graph's structure only."""

    node: Tensor  #: colours of the structure's nodes (graph nodes, then tie nodes)
    src: Tensor
    dst: Tensor
    label: Tensor
    refiner: _Refiner  #: over the structure (the searches refine two copies)
    start: tuple  #: the stable refinement both searches start from
    edge_order: Tensor  #: the structure's edges sorted by (src, dst, label) ...
    sorted_keys: Tensor  #: ... and their keys
    kinds: int  #: number of edge labels (the keys' last digit)
    _work: tuple | None = None  #: reused buffers of ``edge_map``
    #: what other modules derive from the structure alone (alignment's template), kept as long
    #: as the plan is
    derived: dict = field(default_factory=dict)

    def edge_map(self, pi: Tensor) -> Tensor | None:
        """Edge ``e`` of the relabelled structure is edge ``edge_map[e]`` moved there; ``None``
        when ``pi`` (over the structure's nodes) is no automorphism. One sort: an exact check.
        The keys are built in place in buffers kept with the plan: on graphs of tens of millions
        of edges, fresh allocations of that size cost more than the arithmetic."""
        n, e = self.node.numel(), self.src.numel()
        if self._work is None:
            self._work = tuple(torch.empty(e, dtype=torch.long) for _ in range(3))
        keys, other, order = self._work
        torch.index_select(pi, 0, self.src, out=keys)
        torch.index_select(pi, 0, self.dst, out=other)
        keys.mul_(n).add_(other).mul_(self.kinds).add_(self.label)
        torch.sort(keys, stable=True, out=(other, order))
        if not torch.equal(other, self.sorted_keys) or not torch.equal(self.node[pi], self.node):
            return None
        edge_map = torch.empty_like(order)
        edge_map[self.edge_order] = order
        return edge_map


_PLANS: dict[tuple, tuple[weakref.ref, _Plan]] = {}


def _plan_key(g: ParameterGraph) -> tuple:
    fields = (g.edge_index, g.node_type, g.node_depth, g.node_index, g.node_act, g.edge_type, g.edge_pos,
              g.tied_slot)
    return tuple((t.data_ptr(), tuple(t.shape), t._version) for t in fields)


def _found(key: tuple, edge_index: Tensor) -> _Plan | None:
    hit = _PLANS.get(key)
    return hit[1] if hit is not None and hit[0]() is edge_index else None


def _cached_plan(g: ParameterGraph) -> _Plan | None:
    """The plan of ``g``'s structure if one was made and is still valid (never makes one)."""
    return _found(_plan_key(g), g.edge_index)


def _labels(g: ParameterGraph) -> Tensor:
    """The structure label of every graph edge: the plan's first labels when it is cached (its
    graph edges come before the tie edges), else computed."""
    plan = _cached_plan(g)
    return plan.label[: g.edge_index.size(1)] if plan is not None else _structure(g)[1]


def _plan(g: ParameterGraph) -> _Plan:
    """The structure's plan, cached while ``g.edge_index`` lives unmodified (graphs that share
    it, as ``with_values`` copies do, share the plan)."""
    ei = g.edge_index
    key = _plan_key(g)
    hit = _found(key, ei)
    if hit is not None:
        return hit
    node, src, dst, label = _with_ties(g)
    n = node.numel()
    refiner = _Refiner(src, dst, label, n)
    colors = torch.unique(node, return_inverse=True)[1]
    # both copies start alike and refine alike: one is refined, and doubled
    start = tuple(torch.cat([x, x]) for x in refiner.stable(colors, colors, *refiner.messages(colors)))
    sorted_keys, order = torch.sort(_edge_keys(src, dst, label, n), stable=True)
    kinds = int(label.max()) + 1 if label.numel() else 1
    plan = _Plan(node, src, dst, label, refiner, start, order, sorted_keys, kinds)
    if len(_PLANS) >= 8:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = (weakref.ref(ei), plan)
    return plan


def random_automorphism(g: ParameterGraph, generator: torch.Generator) -> Tensor:
    """A random permutation ``pi`` of nodes that maps the graph's structure onto itself
    (and the uses of every shared parameter scalar onto the uses of one scalar).

    Every result is verified exactly (node colours and labelled edges); the quick search that
    matches whole colour classes at once is tried first, the careful one if it fails. What
    depends on the structure only is computed once per graph (see ``_plan``)."""
    return _sample(g, generator)[0]


def _sample(g: ParameterGraph, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random automorphism and the map of the graph's edges it induces (verified)."""
    plan = _plan(g)
    for bold in (True, False):
        found = _search(plan, generator, bold)
        if found is not None:
            pi, edge_map = found
            return pi[: g.num_nodes], edge_map[: g.edge_index.size(1)]
    raise RuntimeError("could not find an automorphism of this graph's structure")


def _search(plan: _Plan, generator, bold) -> tuple[Tensor, Tensor] | None:
    n = plan.node.numel()
    state = plan.start
    while True:
        a = state[0][:n]
        multi = (torch.bincount(a) > 1).nonzero().squeeze(1)
        if multi.numel() == 0:
            break
        k = int(multi[0])
        members_a = (a == k).nonzero().squeeze(1)
        members_b = (state[0][n:] == k).nonzero().squeeze(1)
        state = _individualise(plan.refiner, state, members_a, members_b, n, generator, bold)
        if state is None:
            return None
    a, b = state[0][:n], state[0][n:]
    if not torch.equal(torch.sort(a).values, torch.sort(b).values):
        return None
    pi = torch.empty(n, dtype=torch.long)
    pi[torch.argsort(a)] = torch.argsort(b)
    edge_map = plan.edge_map(pi)
    return None if edge_map is None else (pi, edge_map)


def _balanced(colors: Tensor, n: int) -> bool:
    """Both copies have the same colour histogram (else the matching so far is no automorphism)."""
    size = int(colors.max()) + 1
    return torch.equal(torch.bincount(colors[:n], minlength=size), torch.bincount(colors[n:], minlength=size))


def _assign(refiner, state, members_a, members_b, n):
    """Refined state after giving ``members_a[i]`` and ``n + members_b[i]`` fresh colour ``i``;
    ``None`` when the two copies' histograms then differ."""
    colors = state[0].clone()
    fresh = int(colors.max()) + 1 + torch.arange(members_a.numel())
    colors[members_a] = fresh
    colors[n + members_b] = fresh
    new = refiner.stable(colors, *state)
    return new if _balanced(new[0], n) else None


def _individualise(refiner, state, members_a, members_b, n, generator, bold):
    """Match one node of a colour class in copy A with one in copy B (trying B's members in
    random order until refinement stays balanced), or the whole class at once when it is
    fully symmetric. ``bold`` first tries the whole class at once (one refinement instead of
    two: most classes of a network's graph are fully symmetric)."""
    def whole():
        perm = members_b[torch.randperm(members_b.numel(), generator=generator)]
        return _assign(refiner, state, members_a, perm, n)

    if bold and members_a.numel() > 1:
        done = whole()
        if done is not None:
            return done
    for pick in members_b[torch.randperm(members_b.numel(), generator=generator)]:
        trial = _assign(refiner, state, members_a[:1], pick.view(1), n)
        if trial is None:
            continue  # colour refinement could not tell these apart, but they differ
        rest = trial[0][members_a[1:]]
        if rest.numel() > 1 and bool((rest == rest[0]).all()):
            done = whole()
            if done is not None:
                return done
        return trial
    return None


def _edge_keys(src: Tensor, dst: Tensor, label: Tensor, n: int) -> Tensor:
    return (src * n + dst) * (int(label.max()) + 1 if label.numel() else 1) + label


def _is_automorphism(pi: Tensor, src: Tensor, dst: Tensor, label: Tensor, n: int) -> bool:
    before = torch.sort(_edge_keys(src, dst, label, n)).values
    after = torch.sort(_edge_keys(pi[src], pi[dst], label, n)).values
    return torch.equal(before, after)


def permute_values(g: ParameterGraph, pi: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Parameter values, buffers and edge map of the graph relabelled by automorphism ``pi``
    (edge ``e`` of the result carries what edge ``edge_map[e]`` of ``g`` carried)."""
    n = g.num_nodes
    label = _labels(g)
    src, dst = g.edge_index
    keys, old = torch.sort(_edge_keys(src, dst, label, n), stable=True)
    moved, new = torch.sort(_edge_keys(pi[src], pi[dst], label, n), stable=True)
    edge_map = torch.empty_like(old)
    edge_map[old] = new
    if not torch.equal(keys, moved) or not _keeps_ties(g, edge_map):
        raise ValueError("pi is not an automorphism of this graph's structure (with its tied weights)")
    return _moved(g, pi, edge_map)


def _keeps_ties(g: ParameterGraph, edge_map: Tensor) -> bool:
    """Whether the edge map sends all uses of each shared scalar onto all uses of one scalar."""
    p, t = int(g.num_param_edges), int(g.num_tied_edges)
    if t == 0:
        return True
    image = torch.empty_like(edge_map)
    image[edge_map] = torch.arange(edge_map.numel())  # edge e of g lands on edge image[e]
    scalar = torch.full((edge_map.numel(),), -1, dtype=torch.long)
    scalar[:p] = torch.arange(p)
    scalar[p:p + t] = g.tied_slot.long()
    uses = torch.arange(p + t)
    target = scalar[image[uses]]
    if bool((target < 0).any()):
        return False
    lo = torch.full((p,), p, dtype=torch.long).scatter_reduce(0, scalar[uses], target, "amin")
    hi = torch.full((p,), -1, dtype=torch.long).scatter_reduce(0, scalar[uses], target, "amax")
    return torch.equal(lo, hi) and torch.equal(torch.sort(lo).values, torch.arange(p))


def _moved(g: ParameterGraph, pi: Tensor, edge_map: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    value = g.edge_value[edge_map]
    return value[: int(g.num_param_edges)], _moved_buffers(g, pi), edge_map


def _moved_buffers(g: ParameterGraph, pi: Tensor) -> dict[str, Tensor]:
    """Buffers whose slices belong to nodes (running statistics), carried along by ``pi``.

    A symmetry may move a whole layer onto another of the same structure (two like branches of
    an Inception block): its statistics then move into the other layer's buffers. Buffers of
    one layer share their nodes; the ``i``-th buffer of a layer (mean, variance) goes to the
    ``i``-th of the layer it lands on."""
    index = g.param_index
    layers: dict[tuple, list[str]] = {}
    for name, (dim, nodes) in index.buffer_nodes.items():
        layers.setdefault((dim, tuple(nodes.tolist())), []).append(name)
    owner = torch.full((g.num_nodes,), -1, dtype=torch.long)
    slot = torch.full((g.num_nodes,), -1, dtype=torch.long)
    keys = list(layers)
    for i, (_, nodes) in enumerate(keys):
        owner[list(nodes)] = i
        slot[list(nodes)] = torch.arange(len(nodes))
    moved = {name: index.buffers[name].clone() for names in layers.values() for name in names}
    for (dim, nodes), names in layers.items():
        image = pi[list(nodes)]
        if bool((owner[image] < 0).any()):
            raise ValueError(f"the permutation moves neurons of {names[0]!r}'s channels onto neurons without "
                             "running statistics")
        for target in torch.unique(owner[image]).tolist():
            there = layers[keys[target]]
            if len(there) != len(names):
                raise ValueError(f"the permutation moves {names} onto {there}: not one statistic per statistic")
            rows = (owner[image] == target).nonzero().squeeze(1)
            for src, dst in zip(names, there):
                moved[dst].index_copy_(dim, slot[image[rows]], index.buffers[src].index_select(dim, rows))
    return moved


def _neurons_with(g: ParameterGraph, acts: frozenset) -> Tensor:
    """Hidden neurons whose in-edges are all parameters and which reach dense/conv weights
    only through an activation in ``acts``: rescaling or flipping their in-edges and
    compensating on the weights they feed keeps the function. The activation is the
    neuron's own, or that of its one copy through a ``SCALED`` edge (``sin(30 x)``: a number
    times ``x`` keeps both symmetries), whose out-edges then carry the compensation
    (:func:`scaled_copies`). Works on batches."""
    n = g.num_nodes
    src, dst = g.edge_index
    etype = g.edge_type.long()
    is_param = edge_kinds(g) == PARAMETER
    weight = torch.zeros_like(is_param)
    for t in (EdgeType.LINEAR, EdgeType.CONV, EdgeType.CONV_TRANSPOSE):
        weight |= etype == int(t)
    has_act = torch.zeros(n, dtype=torch.bool, device=src.device)
    for act in acts:
        has_act |= g.node_act.long() == int(act)
    bad_out = torch.zeros(n, dtype=torch.long, device=src.device).index_add_(0, src, (~(weight & is_param)).long())
    bad_in = torch.zeros(n, dtype=torch.long, device=src.device).index_add_(0, dst, (~is_param).long())
    out_deg = torch.bincount(src, minlength=n)
    in_deg = torch.bincount(dst, minlength=n)
    feeds_weights = (bad_out == 0) & (out_deg > 0)
    hidden = (g.node_type.long() == int(NodeType.HIDDEN)) & (bad_in == 0)
    direct = hidden & has_act & feeds_weights
    # h -> SCALED -> t with t's activation in acts, t read by weights only, h and t nothing else
    scaled = etype == int(EdgeType.SCALED)
    copy_ok = (g.node_type.long()[dst] == int(NodeType.ACTIVATION)) & has_act[dst] & feeds_weights[dst] \
        & (in_deg[dst] == 1) & (out_deg[src] == 1) & (g.node_act.long()[src] == int(Activation.NONE))
    through = torch.zeros(n, dtype=torch.bool, device=src.device)
    through[src[scaled & copy_ok]] = True
    return direct | (hidden & through)


def scaled_copies(g: ParameterGraph, units: Tensor) -> tuple[Tensor, Tensor]:
    """``(unit, copy)`` node pairs of each unit's ``SCALED`` copy: the copy is the unit times a
    number, so it moves with the unit (``factor[copy] = factor[unit]``) and its out-edges compensate."""
    src, dst = g.edge_index
    copy = (g.edge_type.long() == int(EdgeType.SCALED)) & units[src]
    return src[copy], dst[copy]


def scalable_neurons(g: ParameterGraph) -> Tensor:
    """Neurons with a positively homogeneous activation (ReLU): f(s x) = s f(x), s > 0."""
    return _neurons_with(g, POSITIVE_HOMOGENEOUS)


def flippable_neurons(g: ParameterGraph) -> Tensor:
    """Neurons with an odd activation (tanh, sin): f(-x) = -f(x)."""
    return _neurons_with(g, ODD)


def random_symmetry(
    g: ParameterGraph,
    seed: int = 0,
    *,
    scale: bool = False,
    sign: bool = False,
    scale_range: float = 4.0,
    return_maps: bool = False,
):
    """The graph of a random function-preserving reparametrisation of ``g``'s model.

    Permutes hidden neurons, heads, experts (every symmetry the graph's structure has);
    with ``scale``, also rescales ReLU-like neurons by factors in ``[1/scale_range,
    scale_range]``; with ``sign``, flips tanh-like neurons at random. Input/output neurons
    and non-permutable structure stay fixed. With ``return_maps``, also returns
    ``(node_map, edge_map)``: node ``n`` of ``g`` is node ``node_map[n]`` of the result, and
    edge ``e`` of the result is edge ``edge_map[e]`` of ``g`` moved there.
    """
    gen = torch.Generator().manual_seed(seed)
    pi, edge_map = _sample(g, gen)
    values, buffers, edge_map = _moved(g, pi, edge_map)
    if scale or sign:
        moved = with_values(g, values)
        factor = torch.ones(g.num_nodes)
        units = torch.zeros(g.num_nodes, dtype=torch.bool)
        if scale:
            log_s = (torch.rand(g.num_nodes, generator=gen) * 2 - 1) * math.log(scale_range)
            scalable = scalable_neurons(moved)
            units |= scalable
            factor = torch.where(scalable, log_s.exp(), factor)
        if sign:
            flips = torch.where(torch.rand(g.num_nodes, generator=gen) < 0.5, -1.0, 1.0)
            flippable = flippable_neurons(moved)
            units |= flippable
            factor = torch.where(flippable, flips, factor)
        unit, copy = scaled_copies(moved, units)
        factor[copy] = factor[unit]
        src, dst = g.edge_index[:, : values.numel()]
        values = values * factor[dst] / factor[src]
    out = with_values(g, values, buffers)
    return (out, pi, edge_map) if return_maps else out


__all__ = ["flippable_neurons", "random_automorphism", "random_symmetry", "refine",
           "scalable_neurons", "scaled_copies"]
