"""Neuron groups every permutation of which is a symmetry, and weight matching over them.

A tied group of colour classes (:func:`gmn.weightspace.alignment._tied_groups`: a layer's neurons with the
BatchNorm, residual sums and norms tied to them; an untied class is a group of one class) is
*free* when every permutation of its units, all other nodes fixed, maps the structure onto
itself. With no repeated edges and no shared scalar touching it, that holds exactly when every
block of edges between one of its classes ``C`` and another class ``D`` (one edge label) has
``|C| |D|`` edges (no node of ``D`` can join more than all of ``C``, so each joins all of it),
and every block inside the group joins each unit to itself (``m`` edges), or to every other
unit (``m (m - 1)``), or both. The counts are of exact integer keys, so this is a proof, not a
heuristic. The free groups are Git Re-Basin's permutation groups ``P_i``, found instead of
written; since automorphisms compose, any choice of one permutation per free group is a
symmetry (when every class is free, :mod:`gmn.weightspace.alignment` uses it without a further check).

Every block touching a free group is then a dense tensor ``(|C|, |D|, labels)`` (a kernel's
positions are labels), and weight matching is Ainsworth et al.'s coordinate descent: for each
group in turn, the linear assignment that maximises

.. math::
    \\sum_{\\text{blocks}} \\langle W_A, P_C W_B P_D^\\top \\rangle

with the permutations of the other groups held, until no group improves. Classes that are not
free (attention heads, experts) keep the match of the guided search (:mod:`gmn.weightspace.alignment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .symmetry import _dense_keys

#: Passes of coordinate descent at most (Git Re-Basin's reference code uses 100).
PASSES = 100


@dataclass
class _Block:
    """Weighted edges from class ``src`` to class ``dst`` as a dense ``(rows, cols, labels)``
    index into the edge values (``same``: the edges join each unit to itself, ``cols`` is 1;
    class -1: single nodes, which no symmetry moves). An entry the block lacks indexes one past
    the weighted edges, where a zero is appended."""

    src: int
    dst: int
    same: bool
    index: Tensor


@dataclass
class FreeGroups:
    """The free groups of a structure and the dense blocks of weights around them."""

    classes: list[list[int]]  #: per free group, its colour classes (one per slot)
    units: list[int]  #: per free group, its number of units
    class_nodes: dict[int, Tensor]  #: every open class's nodes, by position
    position: Tensor  #: per graph node, its position in its class
    colors: Tensor  #: per graph node, its class
    group_of_class: Tensor  #: per class, its free group (-1: not free)
    blocks: list[_Block]
    uses: list[list[tuple[int, str]]]  #: per free group, ``(block, "src" | "dst" | "same")``
    neighbours: list[list[int]]  #: per free group, the free groups its cost depends on
    complete: bool  #: every open class is free and there are no tie nodes

    def nodes(self, group: int) -> Tensor:
        """``(units, slots)``: the group's nodes, one row per unit."""
        return torch.stack([self.class_nodes[c] for c in self.classes[group]], 1)

    def placement(self, cls: int, perms: list[Tensor], frame: Tensor | None = None) -> Tensor | None:
        """For each position of class ``cls`` in A, the position in B matched to it: by the
        free group's permutation, else by ``frame`` (A node -> B node); ``None`` for single
        nodes, which stay."""
        if cls < 0:
            return None
        group = int(self.group_of_class[cls])
        if group >= 0:
            return perms[group]
        return self.position[frame[self.class_nodes[cls]]]


@dataclass
class EdgeBlocks:
    """The edges grouped by (source class, target class, label): per block its classes, label
    and edge count, and per edge its block. Made once per structure and read by the tied
    groups and the free groups alike, so that the per-edge work (tens of millions of edges on
    a ResNet-50) is one gather and one sort, and the rest works on the small table."""

    src_class: Tensor
    dst_class: Tensor
    label: Tensor
    count: Tensor
    block_of: Tensor  #: per edge

    @staticmethod
    def of(colors: Tensor, src: Tensor, dst: Tensor, label: Tensor) -> EdgeBlocks:
        classes = int(colors.max()) + 1 if colors.numel() else 1
        kinds = int(label.max()) + 1 if label.numel() else 1
        # a converter writes a layer's edges together, so the class pairs come in a few runs:
        # the runs are found in one linear pass and only they are sorted; the labels then join
        # by counting (a kernel's positions vary from edge to edge: no runs there)
        pair = colors[src].mul_(classes).add_(colors[dst])
        runs, run_of = torch.unique_consecutive(pair, return_inverse=True)
        pairs, pair_of_run = torch.unique(runs, return_inverse=True)
        blocks, block_of, count = _dense_keys(pair_of_run[run_of].mul_(kinds).add_(label))
        pair = pairs[blocks // kinds]
        return EdgeBlocks(pair // classes, pair % classes, blocks % kinds, count, block_of)


def _positions(colors: Tensor, group: Tensor, unit: Tensor) -> Tensor:
    n = colors.numel()
    order = torch.argsort(colors, stable=True)
    size = torch.bincount(colors)
    starts = torch.cumsum(size, 0) - size
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[colors[order]]
    return torch.where(group >= 0, unit, rank)


def free_groups(plan, n: int, group: Tensor, unit: Tensor, src: Tensor, dst: Tensor, edges: EdgeBlocks,
                weighted: int, shared: Tensor) -> FreeGroups:
    """The free groups of a structure (``plan``: :func:`gmn.weightspace.symmetry._plan`; ``group``/``unit``:
    the tied groups; ``edges``: the edge blocks of its stable colouring; ``shared``: edges whose
    value another edge shares, whose ends are never free)."""
    colors = plan.start[0][:n]
    size = torch.bincount(colors)
    position = _positions(colors, group, unit)
    n_classes = size.numel()
    # group id of every open node: its tied group, or its class for untied ones
    gid = torch.where(group >= 0, group, int(group.max()) + 1 + colors if n else group)
    gid = torch.where(size[colors] > 1, gid, torch.full_like(gid, -1))
    gids, gid = torch.unique(gid, return_inverse=True)
    has_closed = bool((gids < 0).any())
    gid = gid - int(has_closed)  # closed nodes: -1
    count = gids.numel() - int(has_closed)
    bad = torch.zeros(count + 1, dtype=torch.bool)  # the last entry absorbs closed nodes

    def mark(nodes: Tensor) -> None:
        g = gid[nodes]
        bad[torch.where(g >= 0, g, torch.full_like(g, count))] = True

    mark(torch.cat([src[shared], dst[shared]]))
    sk = plan.sorted_keys
    dup = (sk[1:] == sk[:-1]).nonzero().squeeze(1)
    if dup.numel():  # repeated edges: the counts below would not prove a block complete
        e = plan.edge_order[torch.cat([dup, dup + 1])]
        e = e[e < src.numel()]
        mark(torch.cat([src[e], dst[e]]))
    first = torch.full((n_classes,), n, dtype=torch.long).scatter_reduce(0, colors, torch.arange(n), "amin")
    # every edge, also between single nodes (such blocks are checked too, and never used); a
    # block inside a group splits by whether its edges join a unit to itself
    g_first = torch.cat([gid, gid.new_full((1,), -1)])[first]  # a colour only tie nodes have: none
    inner = ((g_first[edges.src_class] == g_first[edges.dst_class]) & (g_first[edges.src_class] >= 0))
    maybe = inner[edges.block_of].nonzero().squeeze(1)
    same = torch.zeros(src.numel(), dtype=torch.bool)
    same[maybe] = position[src[maybe]] == position[dst[maybe]]
    blocks, block_of, counts = _dense_keys(edges.block_of * 2 + same.long())
    b_same = (blocks % 2).bool()
    b_cs, b_cd, b_label = edges.src_class[blocks // 2], edges.dst_class[blocks // 2], edges.label[blocks // 2]
    ms, md = size[b_cs], size[b_cd]
    inside = inner[blocks // 2]
    # inside a group, a block holding each unit's own edges and all the others' is two blocks
    ok = torch.where(inside, torch.where(b_same, counts == ms, counts == ms * (ms - 1)), counts == ms * md)
    mark(torch.cat([first[b_cs[~ok]], first[b_cd[~ok]]]))
    free = (~bad[:count]).nonzero().squeeze(1)
    # numbered by their first node: the graph's nodes follow the model, so the groups do too
    # (and a seeded order of descent means the same thing on every graph of the layout)
    open_node = gid >= 0
    lead = torch.full((count,), n, dtype=torch.long).scatter_reduce(
        0, gid[open_node], open_node.nonzero().squeeze(1), "amin")
    free = free[torch.argsort(lead[free])]
    group_of = torch.full((count + 1,), -1, dtype=torch.long)
    group_of[free] = torch.arange(free.numel())
    open_classes = (size > 1).nonzero().squeeze(1)
    group_of_class = torch.full((n_classes,), -1, dtype=torch.long)
    group_of_class[open_classes] = group_of[gid[first[open_classes]]]
    node_order = torch.argsort(colors * n + position)
    starts = torch.cumsum(size, 0) - size
    class_nodes = {int(c): node_order[starts[c]:starts[c] + size[c]] for c in open_classes.tolist()}
    classes: list[list[int]] = [[] for _ in range(free.numel())]
    members = group_of_class[open_classes]
    for c, gr in zip(open_classes.tolist(), members.tolist()):
        if gr >= 0:
            classes[gr].append(c)
    units = [int(size[cl[0]]) for cl in classes]
    table = (b_cs, b_cd, b_label, b_same)
    block_list = _dense_blocks(table, block_of, src, dst, same, size, group_of_class, position, weighted, n)
    uses: list[list[tuple[int, str]]] = [[] for _ in classes]
    neighbours: list[list[int]] = []
    for i, blk in enumerate(block_list):
        ga = int(group_of_class[blk.src]) if blk.src >= 0 else -1
        gb = int(group_of_class[blk.dst]) if blk.dst >= 0 else -1
        if blk.same:
            uses[ga].append((i, "same"))
            continue
        if ga >= 0:
            uses[ga].append((i, "src"))
        if gb >= 0:
            uses[gb].append((i, "dst"))
    for use in uses:
        other = {block_list[i].dst if side == "src" else block_list[i].src for i, side in use if side != "same"}
        neighbours.append(sorted({int(group_of_class[c]) for c in other if c >= 0} - {-1}))
    complete = bool((members >= 0).all()) and plan.node.numel() == n
    return FreeGroups(classes, units, class_nodes, position, colors, group_of_class, block_list, uses,
                      neighbours, complete)


def _dense_blocks(table, block_of, src, dst, same, size, group_of_class, position, weighted, n) -> list[_Block]:
    """The weighted edges touching a free group as dense blocks: one per pair of classes (all
    labels stacked), the single nodes on a side taken together. Works on the table of label
    blocks; per edge, only gathers and in-place arithmetic (these arrays hold every edge)."""
    b_cs, b_cd, b_label, b_same = table
    n_classes = size.numel()
    fixed = n_classes
    wanted = (group_of_class[b_cs] >= 0) | (group_of_class[b_cd] >= 0)
    keep = wanted[block_of]
    if weighted < src.numel():
        keep &= torch.arange(src.numel()) < weighted
    used = (torch.bincount(block_of, weights=keep.double(), minlength=b_cs.numel()) > 0).nonzero().squeeze(1)
    if used.numel() == 0:
        return []
    side_s = torch.where(size[b_cs] > 1, b_cs, torch.full_like(b_cs, fixed))
    side_d = torch.where(size[b_cd] > 1, b_cd, torch.full_like(b_cd, fixed))
    pair_key = (side_s * (n_classes + 1) + side_d) * 2 + b_same.long()
    pairs, pair_at = torch.unique(pair_key[used], return_inverse=True)
    pair_of_block = torch.zeros_like(pair_key)
    pair_of_block[used] = pair_at
    kinds = int(b_label.max()) + 1 if b_label.numel() else 1
    labels, label_at = torch.unique(pair_at * kinds + b_label[used], return_inverse=True)
    per_pair = torch.bincount(labels // kinds, minlength=pairs.numel())
    label_start = torch.cumsum(per_pair, 0) - per_pair
    rank_of_block = torch.zeros_like(pair_key)
    rank_of_block[used] = label_at - label_start[labels[label_at] // kinds]
    p_same = (pairs % 2).bool()
    p_cs, p_cd = pairs // 2 // (n_classes + 1), pairs // 2 % (n_classes + 1)
    rows = torch.where(p_cs == fixed, 0, size[p_cs.clamp_max(n_classes - 1)])
    cols = torch.where(p_cd == fixed, 0, size[p_cd.clamp_max(n_classes - 1)])
    row, col = position[src], position[dst]
    # single nodes' places in their block: ranks among that block's single nodes
    for place, nodes, side, extent in ((row, src, side_s, rows), (col, dst, side_d, cols)):
        lone = ((side == fixed)[block_of] & keep).nonzero().squeeze(1)
        if lone.numel():
            pair = pair_of_block[block_of[lone]]
            rank = _rank(pair * n + nodes[lone], n)
            place[lone] = rank
            extent.scatter_reduce_(0, pair, rank + 1, "amax")
    cols = torch.where(p_same, torch.ones_like(cols), cols)
    col.masked_fill_(same, 0)
    volume = rows * cols * per_pair
    offset = torch.cumsum(volume, 0) - volume
    # an edge's place: its label block's start and strides, one gather each
    pb = pair_of_block
    at = row.mul_((cols * per_pair)[pb][block_of]).add_(col.mul_(per_pair[pb][block_of]))
    at.add_((offset[pb] + rank_of_block)[block_of])
    trash = int(volume.sum())
    at.masked_fill_(~keep, trash)
    flat = torch.full((trash + 1,), weighted, dtype=torch.long)
    flat[at] = torch.arange(src.numel())
    blocks = []
    for i in range(pairs.numel()):
        a, b = int(p_cs[i]), int(p_cd[i])
        index = flat[int(offset[i]):int(offset[i] + volume[i])].view(int(rows[i]), int(cols[i]), int(per_pair[i]))
        blocks.append(_Block(-1 if a == fixed else a, -1 if b == fixed else b, bool(p_same[i]), index))
    return blocks


def _rank(key: Tensor, n: int) -> Tensor:
    """For ``key = pair * n + node``: the node's rank among the distinct nodes of its pair."""
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.searchsorted(values, values // n * n)
    return (torch.arange(values.numel()) - first)[inverse]


class _Values:
    """Each block's weights of both models, dense, in float32, with the copies of the blocks
    that a group reads by their columns, and per free group the norms of A's and B's weights
    around it."""

    def __init__(self, fg: FreeGroups, a: Tensor, b: Tensor):
        pad = torch.zeros(1, dtype=torch.float32)
        a, b = torch.cat([a.float(), pad]), torch.cat([b.float(), pad])
        self.a = [a[blk.index] for blk in fg.blocks]
        self.b = [b[blk.index] for blk in fg.blocks]
        self.a_t = [x.transpose(0, 1).reshape(x.size(1), -1) for x in self.a]
        self.b_t = [x.transpose(0, 1).contiguous() for x in self.b]
        square = [(float(x.double().square().sum()), float(y.double().square().sum())) for x, y in zip(self.a, self.b)]
        self.norms = [(sum(square[i][0] for i, _ in use) ** 0.5, sum(square[i][1] for i, _ in use) ** 0.5)
                      for use in fg.uses]


def _cost(fg: FreeGroups, v: _Values, group: int, perm, version: list[int], cache: dict) -> Tensor:
    """``cost[i, j]``: the weights unit ``i`` of A shares with its neighbours, against unit
    ``j`` of B's with B's neighbours placed by ``perm(class)`` (positions of B matched to A's).
    Each block's term is kept in ``cache`` with the version of the group on its other side,
    and only remade when that group has moved since (usually one neighbour of several)."""
    m = fg.units[group]
    cost = torch.zeros(m, m, dtype=torch.float32)
    for i, side in fg.uses[group]:
        blk = fg.blocks[i]
        cls = -1 if side == "same" else blk.dst if side == "src" else blk.src
        other = int(fg.group_of_class[cls]) if cls >= 0 else -1
        stamp = version[other] if other >= 0 else 0  # a class that is not free stays put
        kept = cache.get((group, i))
        if kept is None or kept[0] != stamp:
            kept = stamp, _term(v, i, side, m, None if cls < 0 else perm(cls))
            cache[(group, i)] = kept
        cost += kept[1]
    return cost


def _term(v: _Values, i: int, side: str, m: int, other: Tensor | None) -> Tensor:
    """Block ``i``'s part of a group's cost, B's other side placed by ``other``."""
    if side == "same":
        return v.a[i].reshape(m, -1) @ v.b[i].reshape(m, -1).T
    if side == "src":
        b = v.b[i] if other is None else v.b[i].index_select(1, other)
        return v.a[i].reshape(m, -1) @ b.reshape(m, -1).T
    b = v.b_t[i] if other is None else v.b_t[i].index_select(1, other)
    return v.a_t[i] @ b.reshape(m, -1).T


class Descent:
    """Git Re-Basin's coordinate descent over the free groups of one pair of models: the dense
    weights (float32, as the reference code: its matrix products are most of the time, and
    twice as fast as in float64) and the given costs are made once, for every :meth:`run` (the
    rounds of alignment run it from several frames). Groups in ``held`` stay where they are;
    ``fixed_cost(group)`` may give a group's cost outright (activation matching), else it is the
    weights'."""

    def __init__(self, fg: FreeGroups, a: Tensor, b: Tensor, held: set[int], fixed_cost=None):
        self.fg, self.held, self.values = fg, held, _Values(fg, a, b)
        self.costs = {}
        for grp in range(len(fg.units)):
            given = fixed_cost(grp) if fixed_cost is not None and grp not in held else None
            if given is not None:
                self.costs[grp] = given

    def run(self, frame: Tensor, seed: int = 0) -> list[Tensor]:
        """Per free group, the permutation of B's units matched to A's (``perm[i]``: B's unit
        for A's unit ``i``), descending from ``frame`` (A node -> B node), which also places
        the classes that are not free; ``seed`` draws the order of the groups in each pass."""
        return _descent(self.fg, self.values, self.costs, self.held, frame, seed)


def _descent(fg: FreeGroups, values: _Values, costs: dict, held: set[int], frame: Tensor, seed: int) -> list[Tensor]:
    """Passes over the groups in random orders until none gains (at most ``PASSES``)."""
    perms = [fg.position[frame[fg.class_nodes[classes[0]]]] for classes in fg.classes]

    def perm(cls: int) -> Tensor | None:
        return fg.placement(cls, perms, frame)

    rng = np.random.default_rng(seed)
    # a group whose neighbours have not moved since it was last matched has the same cost and
    # the same best assignment: it is skipped (the result is the same, the time is not)
    version = [0] * len(fg.units)
    matched_at: list[tuple | None] = [None] * len(fg.units)
    terms: dict = {}
    for _ in range(PASSES):
        progress = False
        for grp in rng.permutation(len(fg.units)).tolist():
            if grp in held or fg.units[grp] < 2:
                continue
            key = () if grp in costs else tuple(version[h] for h in fg.neighbours[grp])
            if matched_at[grp] == key:
                continue
            matched_at[grp] = key
            if grp in costs:
                cost, tolerance = costs[grp], 1e-12
            else:  # a gain must exceed float32's rounding of the costs, or the descent could cycle
                cost = _cost(fg, values, grp, perm, version, terms)
                tolerance = max(1e-12, 1e-9 * values.norms[grp][0] * values.norms[grp][1])
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            cols = torch.as_tensor(cols)
            rows = torch.arange(cols.numel())
            gain = float(cost[rows, cols].double().sum()) - float(cost[rows, perms[grp]].double().sum())
            if gain > tolerance:
                perms[grp], progress = cols, True
                version[grp] += 1
        if not progress:
            break
    return perms


def node_map(fg: FreeGroups, perms: list[Tensor], frame: Tensor) -> Tensor:
    """A node -> B node: the free groups by ``perms``, every other node by ``frame``."""
    p = frame.clone()
    for grp, perm in enumerate(perms):
        nodes = fg.nodes(grp)
        p[nodes.reshape(-1)] = nodes[perm].reshape(-1)
    return p


def moved_values(fg: FreeGroups, values: Tensor, perms: list[Tensor]) -> Tensor:
    """B's edge values in A's frame when the free groups move by ``perms`` and nothing else
    moves: each block's entry ``(i, j)`` takes B's entry ``(perm[i], perm[j])``."""
    out = torch.cat([values, values.new_zeros(1)])
    source = out.clone()
    for blk in fg.blocks:  # every class is free: no frame is needed
        moved = blk.index
        rows = fg.placement(blk.src, perms)
        cols = None if blk.same else fg.placement(blk.dst, perms)
        if rows is not None:
            moved = moved.index_select(0, rows)
        if cols is not None:
            moved = moved.index_select(1, cols)
        out[blk.index.reshape(-1)] = source[moved.reshape(-1)]
    return out[:-1]


__all__ = ["Descent", "EdgeBlocks", "FreeGroups", "free_groups", "moved_values", "node_map"]
