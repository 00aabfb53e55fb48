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

import torch
from torch import Tensor

from converters import ParameterGraph, edge_kinds, with_values
from converters.vocab import ODD, POSITIVE_HOMOGENEOUS, EdgeType, NodeType
from converters.writer import PARAMETER

_M1 = 0x7FB5D329728EA185
_M2 = 0x1B873593


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 31)
    x = x * _M1
    x = x ^ (x >> 29)
    return x * _M2 + 0x2545F491


def _dense_hashed(*cols: Tensor) -> Tensor:
    """Dense ids of the rows of ``cols`` through one 64-bit hash (a 1-D unique is much faster
    than a row-wise one). A collision could only merge two classes; the automorphism found is
    verified exactly at the end, so it cannot make a wrong answer."""
    key = _mix(cols[0])
    for c in cols[1:]:
        key = _mix(key ^ c)
    return torch.unique(key, return_inverse=True)[1]


def refine(colors: Tensor, src: Tensor, dst: Tensor, label: Tensor) -> Tensor:
    """Colour refinement (1-WL) to the stable partition; colours come back dense."""
    n = colors.numel()
    colors = torch.unique(colors, return_inverse=True)[1]
    count = int(colors.max()) + 1 if n else 0
    lab = _mix(label * 1_000_003 + 7)
    lab_out = lab * 3
    while True:
        mixed = _mix(colors)  # per node, then one mix per edge
        h_in = torch.zeros(n, dtype=torch.long).index_add_(0, dst, _mix(lab + mixed[src]))
        h_out = torch.zeros(n, dtype=torch.long).index_add_(0, src, _mix(lab_out + mixed[dst] * 5))
        new = _dense_hashed(colors, h_in, h_out)
        new_count = int(new.max()) + 1 if n else 0
        colors = new
        if new_count == count:
            return colors
        count = new_count


def _exact_dense(*cols: Tensor) -> Tensor:
    """Dense ids of the rows of small non-negative-after-shift integer columns, exactly."""
    key = torch.zeros_like(cols[0], dtype=torch.long)
    for c in cols:
        c = c.long() - int(c.min()) if c.numel() else c.long()
        key = key * (int(c.max()) + 1 if c.numel() else 1) + c
    return torch.unique(key, return_inverse=True)[1]


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


def random_automorphism(g: ParameterGraph, generator: torch.Generator) -> Tensor:
    """A random permutation ``pi`` of nodes that maps the graph's structure onto itself
    (and the uses of every shared parameter scalar onto the uses of one scalar).

    Every result is verified exactly (node colours and labelled edges); the quick search that
    matches whole colour classes at once is tried first, the careful one if it fails."""
    node, src, dst, label = _with_ties(g)
    for bold in (True, False):
        pi = _search(node, src, dst, label, generator, bold)
        if pi is not None:
            return pi[: g.num_nodes]
    raise RuntimeError("could not find an automorphism of this graph's structure")


def _search(node, src, dst, label, generator, bold) -> Tensor | None:
    n = node.numel()
    edges = torch.cat([src, src + n]), torch.cat([dst, dst + n]), torch.cat([label, label])
    colors = refine(torch.cat([node, node]), *edges)
    while True:
        a = colors[:n]
        multi = (torch.bincount(a) > 1).nonzero().squeeze(1)
        if multi.numel() == 0:
            break
        k = int(multi[0])
        members_a = (a == k).nonzero().squeeze(1)
        members_b = (colors[n:] == k).nonzero().squeeze(1)
        fresh = int(colors.max()) + 1
        try:
            colors = _individualise(colors, members_a, members_b, fresh, n, edges, generator, bold)
        except RuntimeError:
            return None
    a, b = colors[:n], colors[n:]
    if not torch.equal(torch.sort(a).values, torch.sort(b).values):
        return None
    pi = torch.empty(n, dtype=torch.long)
    pi[torch.argsort(a)] = torch.argsort(b)
    if not torch.equal(node[pi], node) or not _is_automorphism(pi, src, dst, label, n):
        return None
    return pi


def _balanced(colors: Tensor, n: int) -> bool:
    """Both copies have the same colour histogram (else the matching so far is no automorphism)."""
    size = int(colors.max()) + 1
    return torch.equal(torch.bincount(colors[:n], minlength=size), torch.bincount(colors[n:], minlength=size))


def _individualise(colors, members_a, members_b, fresh, n, edges, generator, bold) -> Tensor:
    """Match one node of a colour class in copy A with one in copy B (trying B's members in
    random order until refinement stays balanced), or the whole class at once when it is
    fully symmetric. ``bold`` first tries the whole class at once (one refinement instead of
    two: most classes of a network's graph are fully symmetric)."""
    if bold and members_a.numel() > 1:
        whole = _match_all(colors, members_a, members_b, fresh, n, edges, generator)
        if whole is not None:
            return whole
    for pick in members_b[torch.randperm(members_b.numel(), generator=generator)]:
        trial = colors.clone()
        trial[members_a[0]] = fresh
        trial[n + pick] = fresh
        trial = refine(trial, *edges)
        if not _balanced(trial, n):
            continue  # colour refinement could not tell these apart, but they differ
        rest = trial[members_a[1:]]
        if rest.numel() > 1 and bool((rest == rest[0]).all()):
            whole = _match_all(colors, members_a, members_b, fresh, n, edges, generator)
            if whole is not None:
                return whole
        return trial
    raise RuntimeError("could not find an automorphism of this graph's structure")


def _match_all(colors, members_a, members_b, fresh, n, edges, generator) -> Tensor | None:
    """The whole class matched by a random bijection, refined; ``None`` when unbalanced."""
    perm = members_b[torch.randperm(members_b.numel(), generator=generator)]
    whole = colors.clone()
    whole[members_a] = fresh + torch.arange(members_a.numel())
    whole[n + perm] = fresh + torch.arange(members_a.numel())
    whole = refine(whole, *edges)
    return whole if _balanced(whole, n) else None


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
    _, label = _structure(g)
    src, dst = g.edge_index
    old = torch.argsort(_edge_keys(src, dst, label, n), stable=True)
    new = torch.argsort(_edge_keys(pi[src], pi[dst], label, n), stable=True)
    edge_map = torch.empty_like(old)
    edge_map[old] = new
    value = g.edge_value[edge_map]
    buffers = {}
    index = g.param_index
    for name, (dim, nodes) in index.buffer_nodes.items():
        where = torch.full((n,), -1, dtype=torch.long)
        where[nodes] = torch.arange(nodes.numel())
        target = where[pi[nodes]]
        buf = index.buffers[name]
        moved = torch.empty_like(buf)
        moved.index_copy_(dim, target, buf)
        buffers[name] = moved
    return value[: int(g.num_param_edges)], buffers, edge_map


def _neurons_with(g: ParameterGraph, acts: frozenset) -> Tensor:
    """Hidden neurons with an activation in ``acts`` whose in-edges are all parameters and
    whose out-edges are all dense/conv weights: rescaling or flipping their in-edges and
    compensating on their out-edges keeps the function. Works on batches."""
    n = g.num_nodes
    src, dst = g.edge_index
    etype = g.edge_type.long()
    is_param = edge_kinds(g) == PARAMETER
    weight = torch.zeros_like(is_param)
    for t in (EdgeType.LINEAR, EdgeType.CONV, EdgeType.CONV_TRANSPOSE):
        weight |= etype == int(t)
    ok = torch.zeros(n, dtype=torch.bool, device=src.device)
    for act in acts:
        ok |= g.node_act.long() == int(act)
    ok &= g.node_type.long() == int(NodeType.HIDDEN)
    bad_out = torch.zeros(n, dtype=torch.long, device=src.device).index_add_(0, src, (~(weight & is_param)).long())
    bad_in = torch.zeros(n, dtype=torch.long, device=src.device).index_add_(0, dst, (~is_param).long())
    has_out = torch.bincount(src, minlength=n) > 0
    return ok & (bad_out == 0) & (bad_in == 0) & has_out


def scalable_neurons(g: ParameterGraph) -> Tensor:
    """Neurons with a positively homogeneous activation (ReLU): f(s x) = s f(x), s > 0."""
    return _neurons_with(g, POSITIVE_HOMOGENEOUS)


def flippable_neurons(g: ParameterGraph) -> Tensor:
    """Neurons with an odd activation (tanh): f(-x) = -f(x)."""
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
    pi = random_automorphism(g, gen)
    values, buffers, edge_map = permute_values(g, pi)
    if scale or sign:
        moved = with_values(g, values)
        factor = torch.ones(g.num_nodes)
        if scale:
            log_s = (torch.rand(g.num_nodes, generator=gen) * 2 - 1) * math.log(scale_range)
            factor = torch.where(scalable_neurons(moved), log_s.exp(), factor)
        if sign:
            flips = torch.where(torch.rand(g.num_nodes, generator=gen) < 0.5, -1.0, 1.0)
            factor = torch.where(flippable_neurons(moved), flips, factor)
        src, dst = g.edge_index[:, : values.numel()]
        values = values * factor[dst] / factor[src]
    out = with_values(g, values, buffers)
    return (out, pi, edge_map) if return_maps else out


__all__ = ["flippable_neurons", "random_automorphism", "random_symmetry", "refine",
           "scalable_neurons"]
