"""Permutation alignment of two models of one architecture, for any architecture.

Ainsworth et al. 2023 ("Git Re-Basin") align model B to model A by choosing, for each group of
interchangeable neurons, the permutation that maximises the inner product of the weights the
neurons share with their neighbours (a linear assignment per group, coordinate descent over the
groups). Their groups are written by hand per architecture. On a parameter graph they come from
the graph. The groups every permutation of which is a symmetry (:mod:`gmn.free_groups`: a plain
network's layers, a residual stream with its norms, a transformer's MLP neurons) are matched by
exactly that coordinate descent. The classes that are not free (queries and keys, whose
permutations must respect heads; experts) are matched by a guided automorphism search: the
permutations allowed are the automorphisms of the structure, and the search that
finds a random one (individualisation and colour refinement on two copies of the structure,
:mod:`gmn.weightspace.symmetry`) finds a *good* one when each individualisation step, instead of a random
matching of a colour class of copy A with the same class of copy B, takes the linear assignment
that maximises the weight similarity:

.. math::
    \\sigma = \\arg\\max_\\sigma \\sum_i \\langle F_A(u_i), F_B(v_{\\sigma(i)}) \\rangle ,

where ``F(u)`` holds the values of the parameter edges of ``u`` and of the neurons *tied* to it,
keyed by edge type, position, direction and the other endpoint (in the reference's frame: B's
endpoint is named by the A node it is matched to, or by the previous sweep's match). Neurons are
tied when two colour classes are joined one to one by edges of one kind (a residual stream:
every block's output, its sum and the next norm's neurons; BatchNorm after a convolution), so
a residual stream is matched as one permutation, as Git Re-Basin's hand-written ``P_bg``
groups. A class whose members have no weights of their own (attention heads, experts) is
matched by its members' children: the similarity of two heads is the value of the best
assignment of their query, key and output neurons (TransFusion's two-level matching), and the
neurons inside matched heads are then matched within them, because refinement has split their
class by head. The search first places every class; rounds of coordinate descent over the free
groups and of the search for the rest (the free groups placed first) then alternate until the
permutation is stable. Every result is an automorphism of the structure with its tied weights
(proven by the free groups' counts, or checked exactly after a search), so the aligned model
computes the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from converters import ParameterGraph, with_values
from converters.vocab import EdgeType, NodeType

from .free_groups import Descent, EdgeBlocks, FreeGroups, free_groups, moved_values, node_map
from .symmetry import _assign, _csr, _labels, _moved_buffers, _Plan, _plan, _ranges

#: Classes without weights of their own (heads, experts) up to this size are matched pairwise by
#: the best assignment of their children; larger ones by their children's summed features.
PAIRWISE_CHILDREN = 64


@dataclass
class _Template:
    """What alignment needs that depends on the structure only."""

    plan: _Plan
    n: int  #: graph nodes
    weighted: int  #: parameter and tied edges (the edges that carry values)
    src: Tensor
    dst: Tensor
    label: Tensor  #: structure label of every graph edge
    kinds: int
    out_weighted: tuple[Tensor, Tensor]  #: CSR of weighted edges by source
    in_weighted: tuple[Tensor, Tensor]
    out_all: tuple[Tensor, Tensor]  #: CSR of all graph edges by source
    in_all: tuple[Tensor, Tensor]
    group: Tensor  #: tied group of each node (-1: none)
    unit: Tensor  #: the node's unit within its group
    slot: Tensor  #: the node's place within its unit (its class's column in the group)
    members: list[Tensor]  #: per group, ``(units, slots)`` nodes: one row per unit
    unit_key: Tensor  #: dense id of each node's unit (untied nodes are their own unit)
    unit_count: int
    unit_degree: Tensor  #: weighted edges of each node's whole unit
    free: FreeGroups  #: the groups every permutation of which is a symmetry

    def tied(self, nodes: Tensor) -> Tensor:
        """``(len(nodes), slots)``: every node with the nodes tied to it (all nodes must be of
        one group, or all untied)."""
        group = int(self.group[nodes[0]])
        if group < 0:
            return nodes.view(-1, 1)
        return self.members[group][self.unit[nodes]]


def _template(g: ParameterGraph) -> _Template:
    """The template of ``g``'s structure, kept with its plan (graphs that share a structure,
    as a zoo's members do after ``with_values``, share both)."""
    plan = _plan(g)
    if "alignment" not in plan.derived:
        plan.derived["alignment"] = _make_template(g, plan)
    return plan.derived["alignment"]


def _make_template(g: ParameterGraph, plan: _Plan) -> _Template:
    n = g.num_nodes
    src, dst = g.edge_index
    label = _labels(g)  # from the plan just made
    weighted = int(g.num_param_edges) + int(g.num_tied_edges)
    ws, wd = src[:weighted], dst[:weighted]
    if plan.node.numel() == n:  # no shared scalars: the plan's refiner holds these indexes
        out_all, in_all = plan.refiner.out_edges, plan.refiner.in_edges
    else:
        out_all, in_all = _csr(src, n), _csr(dst, n)
    edges = EdgeBlocks.of(plan.start[0][:n], src, dst, label)
    group, unit, slot, members = _tied_groups(plan.start[0][:n], src, dst, edges)
    own = torch.where(group >= 0, group * n + unit, len(members) * n + torch.arange(n))
    _, unit_key = torch.unique(own, return_inverse=True)
    unit_count = int(unit_key.max()) + 1 if n else 0
    degree = (torch.bincount(ws, minlength=n) + torch.bincount(wd, minlength=n)).double()
    unit_degree = torch.zeros(unit_count, dtype=torch.float64).index_add_(0, unit_key, degree)[unit_key]
    p = int(g.num_param_edges)
    shared = torch.cat([torch.unique(g.tied_slot.long()), torch.arange(p, weighted)]) if weighted > p else \
        torch.zeros(0, dtype=torch.long)
    free = free_groups(plan, n, group, unit, src, dst, edges, weighted, shared)
    return _Template(plan, n, weighted, src, dst, label, int(label.max()) + 1 if label.numel() else 1,
                     _prefix_csr(out_all, ws, weighted), _prefix_csr(in_all, wd, weighted), out_all, in_all,
                     group, unit, slot, members,
                     unit_key, unit_count, unit_degree, free)


def _prefix_csr(csr: tuple[Tensor, Tensor], index: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The CSR of the first ``count`` edges, from the CSR of all of them: a stable sort
    restricted to a prefix of the edges is the full sort without the others (no second sort)."""
    order, ptr = csr
    sub = torch.zeros_like(ptr)
    sub[1:] = torch.cumsum(torch.bincount(index, minlength=ptr.numel() - 1), 0)
    return order[order < count], sub


def _tied_groups(colors: Tensor, src: Tensor, dst: Tensor, edges: EdgeBlocks):
    """Colour classes joined one to one by edges of one label, merged into groups whose units
    (one node per class) must move together; a link that contradicts the units found so far
    (the matchings around a cycle do not compose to the identity) is left out."""
    n = colors.numel()
    size = torch.bincount(colors)
    pos = torch.empty(n, dtype=torch.long)
    order = torch.argsort(colors, stable=True)
    starts = torch.cumsum(size, 0) - size
    pos[order] = torch.arange(n) - starts[colors[order]]
    cs, cd, count = edges.src_class, edges.dst_class, edges.count
    # a link: a block of as many edges as either class has nodes, between two classes of one size
    link = (size[cs] > 1) & (size[cs] == size[cd]) & (cs != cd) & (count == size[cs])
    e_link = link[edges.block_of].nonzero().squeeze(1)
    which = edges.block_of[e_link]
    e_link = e_link[torch.argsort(which, stable=True)]
    linked = link.nonzero().squeeze(1)
    start_e = torch.cumsum(count[linked], 0) - count[linked]
    adjacency: dict[int, list[tuple[int, Tensor]]] = {}
    for i, at in zip(linked.tolist(), start_e.tolist()):
        e = e_link[at:at + int(count[i])]
        a, b = pos[src[e]], pos[dst[e]]
        m = int(size[cs[i]])
        if torch.unique(a).numel() != m or torch.unique(b).numel() != m:
            continue
        forward = torch.empty(m, dtype=torch.long)
        forward[a] = b  # position in class cs -> position in class cd
        backward = torch.empty(m, dtype=torch.long)
        backward[b] = a
        x, y = int(cs[i]), int(cd[i])
        adjacency.setdefault(x, []).append((y, forward))
        adjacency.setdefault(y, []).append((x, backward))
    group = torch.full((n,), -1, dtype=torch.long)
    unit = torch.full((n,), -1, dtype=torch.long)
    slot_of = torch.zeros(n, dtype=torch.long)
    members: list[Tensor] = []
    members_of = [order[starts[c]:starts[c] + size[c]] for c in range(size.numel())]
    seen: dict[int, Tensor] = {}
    for root in sorted(adjacency):
        if root in seen:
            continue
        seen[root] = torch.arange(int(size[root]))  # unit of each position
        classes, queue = [root], [root]
        while queue:
            x = queue.pop()
            for y, forward in adjacency[x]:
                units = torch.empty_like(seen[x])
                units[forward] = seen[x]
                if y not in seen:
                    seen[y] = units
                    classes.append(y)
                    queue.append(y)
        table = torch.empty(int(size[root]), len(classes), dtype=torch.long)
        for slot, c in enumerate(classes):
            table[seen[c], slot] = members_of[c]
            group[members_of[c]] = len(members)
            unit[members_of[c]] = seen[c]
            slot_of[members_of[c]] = slot
        members.append(table)
    return group, unit, slot_of, members


def _incident(csr: tuple[Tensor, Tensor], nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Edges incident to ``nodes`` through a CSR index, and the position in ``nodes`` of each."""
    order, ptr = csr
    counts = ptr[nodes + 1] - ptr[nodes]
    return _ranges(order, ptr, nodes), torch.repeat_interleave(torch.arange(nodes.numel()), counts)


def _features(t: _Template, values: Tensor, members: Tensor, frame: Tensor):
    """``(row, key, value)`` of the weighted edges of ``members`` and their tied nodes. The key
    names the other endpoint through ``frame`` (or by its slot when it is tied to the same unit),
    the edge's label, its direction and the slot of the member's tied node it touches."""
    nodes = t.tied(members)
    slots = nodes.size(1)
    flat = nodes.reshape(-1)
    rows, keys, vals = [], [], []
    for csr, far, direction in ((t.out_weighted, t.dst, 0), (t.in_weighted, t.src, 1)):
        e, owner = _incident(csr, flat)
        other = far[e]
        name = frame[other]
        same = (t.group[other] == t.group[flat[owner]]) & (t.unit[other] == t.unit[flat[owner]]) & (t.group[other] >= 0)
        if bool(same.any()):
            name = name.clone()
            name[same] = t.n + t.slot[other[same]]
        rows.append(owner // slots)
        keys.append(((name * t.kinds + t.label[e]) * 2 + direction) * slots + owner % slots)
        vals.append(values[e])
    return torch.cat(rows), torch.cat(keys), torch.cat(vals)


def _dense(pairs: list[tuple[Tensor, Tensor, Tensor]], sizes: list[int]) -> list[Tensor]:
    """Dense feature matrices over one shared key space."""
    slots, inverse = torch.unique(torch.cat([k for _, k, _ in pairs]), return_inverse=True)
    out, at = [], 0
    for (rows, keys, vals), m in zip(pairs, sizes):
        f = torch.zeros(m, slots.numel(), dtype=torch.float64)
        f.index_put_((rows, inverse[at:at + keys.numel()]), vals.double(), accumulate=True)
        out.append(f)
        at += keys.numel()
    return out


def _similarity(t, a, b, members_a, members_b, frame_b) -> Tensor:
    fa, fb = _dense([_features(t, a, members_a, torch.arange(t.n)), _features(t, b, members_b, frame_b)],
                    [members_a.numel(), members_b.numel()])
    return fa @ fb.T


def _children(t: _Template, colors: Tensor, members: Tensor, offset: int):
    """Neighbours (along any graph edge) of ``members`` whose colour class is not yet a single
    node, grouped by (colour, label, direction): ``(member position, group key, child)``."""
    rows, keys, kids = [], [], []
    for csr, far, direction in ((t.out_all, t.dst, 0), (t.in_all, t.src, 1)):
        e, owner = _incident(csr, members)
        child = far[e]
        rows.append(owner)
        keys.append((colors[offset + child] * t.kinds + t.label[e]) * 2 + direction)
        kids.append(child)
    rows, keys, kids = torch.cat(rows), torch.cat(keys), torch.cat(kids)
    counts = torch.bincount(colors)
    free = counts[colors[offset + kids]] > 1
    return rows[free], keys[free], kids[free]


def _mixed_features(t: _Template, values: Tensor, nodes: Tensor, frame: Tensor):
    """``_features`` of nodes from several groups, group by group, rows indexing ``nodes``."""
    grp = t.group[nodes]
    rows, keys, vals = [], [], []
    for key in torch.unique(grp).tolist():
        at = (grp == key).nonzero().squeeze(1)
        r, k, v = _features(t, values, nodes[at], frame)
        rows.append(at[r])
        keys.append(k)
        vals.append(v)
    return torch.cat(rows), torch.cat(keys), torch.cat(vals)


def _child_similarity(t, colors, a, b, members_a, members_b, frame_b, total) -> Tensor:
    """Similarity of members without weights of their own, from their children: per pair, the
    value of the best assignment of their children (group key by group key); for large
    classes, the inner product of summed child features."""
    m = members_a.numel()
    score = torch.zeros(m, m, dtype=torch.float64)
    ra, ka, ca = _children(t, colors, members_a, 0)
    rb, kb, cb = _children(t, colors, members_b, total)
    if ca.numel() == 0 or cb.numel() == 0:
        return score
    kids_a, at_a = torch.unique(ca, return_inverse=True)
    kids_b, at_b = torch.unique(cb, return_inverse=True)
    fa, fb = _dense([_mixed_features(t, a, kids_a, torch.arange(t.n)), _mixed_features(t, b, kids_b, frame_b)],
                    [kids_a.numel(), kids_b.numel()])
    fa, fb = fa[at_a], fb[at_b]
    for key in torch.unique(ka).tolist():
        sa, sb = ka == key, kb == key
        if m > PAIRWISE_CHILDREN:
            pa = torch.zeros(m, fa.size(1), dtype=torch.float64).index_add_(0, ra[sa], fa[sa])
            pb = torch.zeros(m, fb.size(1), dtype=torch.float64).index_add_(0, rb[sb], fb[sb])
            score += pa @ pb.T
            continue
        for i in range(m):
            xa = fa[sa & (ra == i)]
            for j in range(m):
                xb = fb[sb & (rb == j)]
                if xa.size(0) and xb.size(0):
                    sim = (xa @ xb.T).numpy()
                    r, c = linear_sum_assignment(sim, maximize=True)
                    score[i, j] += float(sim[r, c].sum())
    return score


def _frame(state: tuple, total: int, n: int, previous: Tensor) -> Tensor:
    """The reference node each node of B stands for: its match where its colour is already a
    single node in both copies, else the previous sweep's match."""
    a, b = state[0][:total], state[0][total:]
    single = torch.bincount(a, minlength=int(state[0].max()) + 1) == 1
    where = torch.full((single.numel(),), -1, dtype=torch.long)
    where[a[single[a]]] = single[a].nonzero().squeeze(1)
    frame = previous.clone()
    placed = single[b[:n]]
    frame[placed] = where[b[:n][placed]]
    return frame


class _Resolved:
    """How many weighted edges join each tied unit to nodes already placed (a single node of
    their colour), kept up to date as nodes get placed: the search resolves the class whose
    weights say most about it first (the first layer after the inputs, the residual stream
    after the embedding), so no class is matched on a frame that is still a guess."""

    def __init__(self, t: _Template):
        self.t = t
        self.placed = torch.zeros(t.n, dtype=torch.bool)
        self.count = torch.zeros(t.n, dtype=torch.float64)

    def update(self, colors: Tensor) -> None:
        t = self.t
        single = torch.bincount(colors)[colors[: t.n]] == 1
        new = (single & ~self.placed).nonzero().squeeze(1)
        if new.numel():
            e, _ = _incident(t.out_weighted, new)
            self.count.index_add_(0, t.dst[e], torch.ones(e.numel(), dtype=torch.float64))
            e, _ = _incident(t.in_weighted, new)
            self.count.index_add_(0, t.src[e], torch.ones(e.numel(), dtype=torch.float64))
        self.placed |= single

    def unit_score(self) -> Tensor:
        """Per node: the placed-neighbour edges of its whole unit."""
        t = self.t
        return torch.zeros(t.unit_count, dtype=torch.float64).index_add_(0, t.unit_key, self.count)[t.unit_key]


def _next_class(t: _Template, colors: Tensor, counts: Tensor, open_nodes: Tensor, resolved: _Resolved) -> int:
    """The open colour class to match next: graph nodes before tie nodes; the most placed
    weights per member first (classes without weights score as their best neighbouring class);
    then the smaller class."""
    graph_open = open_nodes[: t.n]
    if not bool(graph_open.any()):
        return int(colors[open_nodes].min())
    members = graph_open.nonzero().squeeze(1)
    score = resolved.unit_score()[members]
    weightless = t.unit_degree[members] == 0
    if bool(weightless.any()):
        lone = members[weightless]
        node_score = torch.zeros(t.n, dtype=torch.float64)
        node_score[members] = score
        for csr, far in ((t.out_all, t.dst), (t.in_all, t.src)):
            e, owner = _incident(csr, lone)
            best = torch.zeros(lone.numel(), dtype=torch.float64).scatter_reduce(
                0, owner, node_score[far[e]], "amax", include_self=True)
            score[weightless] = torch.maximum(score[weightless], best)
    cls = colors[members]
    top = int(cls.max()) + 1
    mean = torch.zeros(top, dtype=torch.float64).index_add_(0, cls, score) / counts[:top].clamp_min(1)
    best = mean[cls].max()
    tied = cls[mean[cls] >= best - 1e-9]
    sizes = counts[tied]
    return int(tied[sizes == sizes.min()].min())


def _start(t: _Template, nodes_a: Tensor, nodes_b: Tensor) -> tuple | None:
    """The search's state with ``nodes_a[i]`` matched to ``nodes_b[i]`` (``None``: no symmetry)."""
    if nodes_a.numel() == 0:
        return t.plan.start
    return _assign(t.plan.refiner, t.plan.start, nodes_a, nodes_b, t.plan.node.numel())


def _sweep(t: _Template, similarity, previous: Tensor, state: tuple, bold: bool) -> tuple[Tensor, Tensor] | None:
    """One pass of the guided search from ``state``: the node map reference -> g (over the
    structure's nodes) and its edge map, or ``None`` when it ends in no automorphism (``bold``
    assigns whole classes at once; without it, one pair at a time).
    ``similarity(colors, members_a, members_b, frame)`` scores matching member ``i`` of A's
    class with member ``j`` of B's."""
    plan = t.plan
    total = plan.node.numel()
    resolved = _Resolved(t)
    resolved.update(state[0][:total])
    while True:
        colors = state[0]
        counts = torch.bincount(colors[:total])
        open_a = counts[colors[:total]] > 1
        if not bool(open_a.any()):
            break
        k = _next_class(t, colors[:total], counts, open_a, resolved)
        members_a = (colors[:total] == k).nonzero().squeeze(1)
        members_b = (colors[total:] == k).nonzero().squeeze(1)
        if members_a.numel() != members_b.numel():
            return None
        sim = torch.zeros(members_a.numel(), members_b.numel(), dtype=torch.float64)
        if int(members_a.max()) < t.n:
            sim = similarity(colors, members_a, members_b, _frame(state, total, t.n, previous))
        new = None
        if bold:
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            new = _assign(plan.refiner, state, members_a, members_b[torch.as_tensor(cols)], total)
        if new is None:
            for j in torch.argsort(sim[0], descending=True, stable=True).tolist():
                new = _assign(plan.refiner, state, members_a[:1], members_b[j:j + 1], total)
                if new is not None:
                    break
        if new is None:
            return None
        state = new
        resolved.update(state[0][:total])
    a_col, b_col = state[0][:total], state[0][total:]
    if not torch.equal(torch.sort(a_col).values, torch.sort(b_col).values):
        return None
    pi = torch.empty(total, dtype=torch.long)
    pi[torch.argsort(a_col)] = torch.argsort(b_col)
    edge_map = plan.edge_map(pi)
    return None if edge_map is None else (pi, edge_map)


def _weight_similarity(t: _Template, a: Tensor, b: Tensor):
    total = t.plan.node.numel()

    def similarity(colors, members_a, members_b, frame):
        sim = _similarity(t, a, b, members_a, members_b, frame)
        if not bool(sim.any()):
            sim = _child_similarity(t, colors, a, b, members_a, members_b, frame, total)
        return sim
    return similarity


def _standardised(acts: dict, nodes: Tensor) -> Tensor:
    x = torch.stack([acts[int(u)] for u in nodes], 1)
    x = x - x.mean(0)
    return x / x.norm(dim=0).clamp_min(1e-12)


def _correlation(acts_a: dict, acts_b: dict, nodes_a: Tensor, nodes_b: Tensor) -> Tensor | None:
    """Correlation of the activations of tied units, summed over the slots that have
    activations in both models (``None``: no slot has)."""
    sim = None
    for s in range(nodes_a.size(1)):
        if all(int(u) in acts_a for u in nodes_a[:, s]) and all(int(u) in acts_b for u in nodes_b[:, s]):
            part = _standardised(acts_a, nodes_a[:, s]).T @ _standardised(acts_b, nodes_b[:, s])
            sim = part if sim is None else sim + part
    return sim


def _activation_similarity(t: _Template, acts_a: dict, acts_b: dict, fallback):
    """The guided search's similarity by activations; classes without them fall back to weights."""
    def similarity(colors, members_a, members_b, frame):
        sim = _correlation(acts_a, acts_b, t.tied(members_a), t.tied(members_b))
        if sim is None or not bool(sim.any()):
            return fallback(colors, members_a, members_b, frame)
        return sim
    return similarity


def _activation_cost(t: _Template, acts_a: dict, acts_b: dict):
    """A free group's cost by activations (``None`` when it has none: matched by weights)."""
    def cost(group: int) -> Tensor | None:
        nodes = t.free.nodes(group)
        return _correlation(acts_a, acts_b, nodes, nodes)
    return cost


def _residual_stream(t: _Template, g: ParameterGraph) -> Tensor:
    """Nodes of the tied groups that hold residual sums (the stream every block reads and writes)."""
    residual = g.edge_type.long() == int(EdgeType.RESIDUAL)
    sums = torch.unique(g.edge_index[1][residual])
    sums = sums[g.node_type[sums].long() == int(NodeType.SUM)]
    groups = torch.unique(t.group[sums])
    groups = groups[groups >= 0].tolist()
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([t.members[i].reshape(-1) for i in groups])


def _moved_values(t: _Template, g: ParameterGraph, found: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, dict]:
    """The node map reference -> g, and ``g``'s values and buffers in the reference's frame,
    from the node map over the structure's nodes and the edge map it induces (checked)."""
    pi, edge_map = found
    p = pi[: t.n]
    values = g.edge_value[_inverse(edge_map[: t.src.numel()])]
    return p, values[: int(g.num_param_edges)], _moved_buffers(g, _inverse(p))


def same_template(a: ParameterGraph, b: ParameterGraph) -> bool:
    """Whether two graphs share one structure (the same architecture, activations included),
    values aside."""
    return (torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_type, b.edge_type)
            and torch.equal(a.edge_pos, b.edge_pos) and torch.equal(a.node_type, b.node_type)
            and torch.equal(a.node_act, b.node_act))


def _check_template(reference: ParameterGraph, g: ParameterGraph) -> None:
    if not same_template(reference, g):
        raise ValueError("alignment needs two graphs of the same architecture (one template)")


def _inverse(p: Tensor) -> Tensor:
    inverse = torch.empty_like(p)
    inverse[p] = torch.arange(p.numel())
    return inverse


def _held(t: _Template, keep: Tensor) -> set[int]:
    """The free groups holding nodes that must stay where they are."""
    groups = t.free.group_of_class[torch.unique(t.free.colors[keep])]
    return set(groups[groups >= 0].tolist())


def _completed(t: _Template, g: ParameterGraph, similarity, perms: list[Tensor], frame: Tensor,
               keep: Tensor) -> tuple[Tensor, Tensor, dict] | None:
    """The free groups placed by ``perms`` (``keep`` where it is), the other classes by the
    guided search from ``frame``: the node map reference -> g and g's values and buffers in
    the reference's frame (``None``: the groups' match does not extend to a symmetry)."""
    fg = t.free
    p = node_map(fg, perms, frame)
    if fg.complete:
        # Every class is free and no scalar is shared: the counts of free_groups prove that p
        # is an automorphism, and the values move block by block (no sort of every edge).
        values = moved_values(fg, g.edge_value[: t.weighted], perms)
        return p, values[: int(g.num_param_edges)], _moved_buffers(g, _inverse(p))
    placed = torch.zeros(t.n, dtype=torch.bool)
    for group in range(len(fg.units)):
        placed[fg.nodes(group).reshape(-1)] = True
    placed[keep] = True
    nodes = placed.nonzero().squeeze(1)
    return _searched(t, g, similarity, _start(t, nodes, p[nodes]), p)


def _searched(t: _Template, g: ParameterGraph, similarity, state: tuple | None,
              frame: Tensor) -> tuple[Tensor, Tensor, dict] | None:
    """The guided search from ``state`` (whole classes at once, then pair by pair), the open
    classes' frame ``frame``: the node map and g's moved values and buffers, or ``None``."""
    for bold in (True, False):
        found = None if state is None else _sweep(t, similarity, _inverse(frame), state, bold)
        if found is not None:
            return _moved_values(t, g, found)
    return None


def _guided(t: _Template, g: ParameterGraph, similarity, frame: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, dict]:
    """The guided search alone (every class matched by it), from ``frame``."""
    found = _searched(t, g, similarity, _start(t, keep, keep), frame)
    if found is None:
        raise ValueError("alignment found no symmetry of this architecture's structure")
    return found


def _descend(t: _Template, g: ParameterGraph, a: Tensor, b: Tensor, similarity, iterations: int,
             keep_residual_stream: bool, fixed_cost=None, seed: int = 0) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Coordinate descent over the free groups (Git Re-Basin) and the guided search for the
    classes that are not free, alternated until the match is stable; the best match by
    ``<a, p(b)>``, with ``g``'s values and buffers moved by it."""
    keep = _residual_stream(t, g) if keep_residual_stream else torch.zeros(0, dtype=torch.long)
    held = _held(t, keep)
    n = int(g.num_param_edges)
    frame = torch.arange(t.n)  # reference node -> g node: where the descent starts
    best, best_score = None, 0.0

    def keep_best(found):
        nonlocal best, best_score
        score = float(found[1][:n].double() @ a[:n])
        if best is None or score > best_score:
            best, best_score = found, score
        return found[0]

    if not t.free.complete:  # heads, experts: the guided search places every class first
        frame = keep_best(_guided(t, g, similarity, frame, keep))
    descent = Descent(t.free, a, b, held, fixed_cost)
    for _ in range(max(1, iterations)):
        perms = descent.run(frame, seed)
        found = _completed(t, g, similarity, perms, frame, keep)
        if found is None:  # the groups' match does not extend: match every class by the search
            found = _guided(t, g, similarity, frame, keep)
        p = keep_best(found)
        if t.free.complete or torch.equal(p, frame):
            break
        frame = p
    return best


def _weight_matching(reference, g, iterations, keep_residual_stream, seed):
    _check_template(reference, g)
    t = _template(g)
    a, b = reference.edge_value[: t.weighted].double(), g.edge_value[: t.weighted].double()
    return _descend(t, g, a, b, _weight_similarity(t, a, b), iterations, keep_residual_stream, seed=seed)


def _activation_matching(reference, g, inputs, iterations, keep_residual_stream, seed):
    from ..activations import neuron_activations

    _check_template(reference, g)
    t = _template(g)
    a, b = reference.edge_value[: t.weighted].double(), g.edge_value[: t.weighted].double()
    acts_a = neuron_activations(reference, None, inputs)
    acts_b = neuron_activations(g, None, inputs)
    similarity = _activation_similarity(t, acts_a, acts_b, _weight_similarity(t, a, b))
    return _descend(t, g, a, b, similarity, iterations, keep_residual_stream, _activation_cost(t, acts_a, acts_b),
                    seed)


def weight_matching(reference: ParameterGraph, g: ParameterGraph, iterations: int = 10,
                    keep_residual_stream: bool = False, seed: int = 0) -> Tensor:
    """Node map ``p`` (an automorphism of the structure with its tied weights) such that ``g``'s
    value on edge ``(p[u], p[v])`` is close to ``reference``'s value on ``(u, v)``; both graphs
    must share one template. ``iterations`` bounds the rounds of coordinate descent over the
    free groups and guided search for the rest; ``keep_residual_stream`` leaves the residual
    stream's neurons where they are; ``seed`` draws the order in which groups are matched."""
    return _weight_matching(reference, g, iterations, keep_residual_stream, seed)[0]


def activation_matching(reference: ParameterGraph, g: ParameterGraph, inputs: tuple, iterations: int = 10,
                        keep_residual_stream: bool = False, seed: int = 0) -> Tensor:
    """Like :func:`weight_matching`, but neurons are matched by the correlation of their
    activations on ``inputs`` (a batch of the user's data, run through each graph's model);
    neurons without activations of their own (see :mod:`gmn.activations`) by weights."""
    return _activation_matching(reference, g, inputs, iterations, keep_residual_stream, seed)[0]


def align(reference: ParameterGraph, g: ParameterGraph, iterations: int = 10, keep_residual_stream: bool = False,
          inputs: tuple | None = None, seed: int = 0) -> ParameterGraph:
    """``g`` relabelled by the neuron permutation that brings it closest to ``reference``: the
    same function, comparable coordinates (buffers move along). With ``inputs``, neurons are
    matched by activations (:func:`activation_matching`), otherwise by weights."""
    if inputs is None:
        _, values, buffers = _weight_matching(reference, g, iterations, keep_residual_stream, seed)
    else:
        _, values, buffers = _activation_matching(reference, g, inputs, iterations, keep_residual_stream, seed)
    return with_values(g, values, buffers)  # keeps g's model attached


def aligned_distance(reference: ParameterGraph, g: ParameterGraph) -> float:
    """Relative L2 distance ``|a - align(a, b)| / |a|`` between parameter vectors."""
    n = int(reference.num_param_edges)
    a, b = reference.edge_value[:n], align(reference, g).edge_value[:n]
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


__all__ = ["activation_matching", "align", "aligned_distance", "same_template", "weight_matching"]
