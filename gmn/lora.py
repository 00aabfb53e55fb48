"""LoRA adapters' GL(r) symmetry: the balanced SVD canonical form.

An adapted module computes ``s * B @ A``; for every invertible ``M``, ``(B M^-1, M A)`` is the same
adapter. Rank-node permutations are automorphisms of the adapter graph (``gmn.weightspace.symmetry`` moves them);
the rest of GL(r) is removed by :func:`canonicalise`, which writes every module in the balanced SVD
form of its product ``B A = U S V^T``::

    B' = U S^(1/2),  A' = S^(1/2) V^T,  singular values in decreasing order,

computed from QR factors of ``A^T`` and ``B`` and an SVD of the ``r x r`` core ``R_B R_A^T``, so it
costs ``O((m + n) r^2)`` and never forms the ``m x n`` product. Sign rule: each left singular vector
(column of ``U``) has its entry of largest magnitude positive (the first such entry where two tie),
and its right vector follows. Singular values at most ``rtol`` times the largest are zero (an
untrained module, PEFT's zero-initialised ``B``, the rank a product lost): their rows of ``A'`` and
columns of ``B'`` are zero, so they have one form whatever ``M`` was. Equal singular values leave a
rotation of their vectors free, which no canonical form can fix; :func:`canonical_values` reports
where. DoRA magnitudes, ``lora_B`` biases and whole tensors are unchanged (the DoRA norm depends on
the product only). Convolutions flatten ``A`` past its rows (``B`` is 1x1); embeddings are ``B A``
over the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from adapters import lora_pairs
from converters import ParameterGraph, parameter_values, with_values

#: singular values at most this times the module's largest are taken as zero
RTOL = 1e-9
#: singular values closer than this times the largest are reported as equal (a free rotation)
EQUAL_RTOL = 1e-6


@dataclass(frozen=True)
class ModuleSpectrum:
    """What canonicalisation found in one module: its singular values (of ``B A``, decreasing, zeros
    included up to the rank) and the index ranges ``[i, j)`` of equal nonzero ones (a free rotation)."""

    module: str
    singular_values: tuple[float, ...]
    free_rotations: tuple[tuple[int, int], ...]


def balanced_svd(a: Tensor, b: Tensor, rtol: float = RTOL) -> tuple[Tensor, Tensor, Tensor]:
    """``(A', B', S)``: the canonical factors of ``B @ A`` (``A`` is ``r x n``, ``B`` is ``m x r``), in
    float64, of the same shapes, and its ``r`` singular values (decreasing, zeros included)."""
    a, b = a.double(), b.double()
    r = a.shape[0]
    qa, ra = torch.linalg.qr(a.T)  # a.T = qa ra: (n, k1), (k1, r)
    qb, rb = torch.linalg.qr(b)  # b = qb rb: (m, k2), (k2, r)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return _balanced(qb @ u, s, qa @ vh.T, r, rtol)  # left (m, k), right (n, k)


def _balanced(left: Tensor, s: Tensor, right: Tensor, r: int, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(A', B', S)`` of rank ``r`` from singular vectors and values: small values zeroed, the sign
    rule applied, ``S^(1/2)`` on both sides; zero rows and columns beyond the ``k`` values given."""
    s = torch.where(s > rtol * s.max().clamp(min=torch.finfo(s.dtype).tiny), s, torch.zeros_like(s))
    pick = left.abs().argmax(dim=0)
    sign = torch.where(left[pick, torch.arange(left.shape[1])] < 0, -1.0, 1.0).to(s)
    root = s.sqrt() * sign
    k = min(s.numel(), r)
    new_b = torch.zeros(left.shape[0], r, dtype=s.dtype)
    new_a = torch.zeros(r, right.shape[0], dtype=s.dtype)
    new_b[:, :k] = (left * root)[:, :k]
    new_a[:k] = (right * root).T[:k]
    full = torch.zeros(max(r, s.numel()), dtype=s.dtype)
    full[: s.numel()] = s
    return new_a, new_b, full[:r] if s.numel() <= r else full


def _free(s: Tensor, rtol: float) -> tuple[tuple[int, int], ...]:
    """Runs of equal nonzero singular values (length 2 or more)."""
    top = float(s.max()) if s.numel() else 0.0
    runs, start = [], 0
    for i in range(1, s.numel() + 1):
        if i == s.numel() or s[i] == 0 or abs(float(s[i - 1] - s[i])) > rtol * top:
            if i - start > 1 and s[start] > 0:
                runs.append((start, i))
            start = i
    return tuple(runs)


def canonical_values(g: ParameterGraph, rtol: float = RTOL,
                     equal_rtol: float = EQUAL_RTOL) -> tuple[Tensor, list[ModuleSpectrum]]:
    """The adapter graph's parameter values in canonical form, and each module's spectrum."""
    values = parameter_values(g).clone()
    index = g.param_index
    spectra = []
    for a_name, b_name in lora_pairs(name for name, _, _ in index.params):
        ea, eb = index.edge_ids(a_name), index.edge_ids(b_name)
        shape_a = next(shape for name, shape, _ in index.params if name == a_name)
        shape_b = next(shape for name, shape, _ in index.params if name == b_name)
        a = values[ea].reshape(shape_a[0], -1)
        b = values[eb].reshape(shape_b[0], -1)
        new_a, new_b, s = balanced_svd(a, b, rtol)
        values[ea] = new_a.reshape(-1).to(values.dtype)
        values[eb] = new_b.reshape(-1).to(values.dtype)
        module = a_name.removesuffix(".lora_A.weight").removesuffix(".lora_embedding_A")
        spectra.append(ModuleSpectrum(module, tuple(s.tolist()), _free(s, equal_rtol)))
    return values, spectra


def canonicalise(g: ParameterGraph, rtol: float = RTOL) -> ParameterGraph:
    """A copy of adapter graph ``g`` with every module in balanced SVD form (see the module's doc)."""
    values, _ = canonical_values(g, rtol)
    return with_values(g, values)




# ------------------------------------------------------------------------------ merging, retrieval
def _products(g: ParameterGraph) -> dict[str, tuple[float, Tensor, Tensor, tuple, tuple]]:
    """Per module of a one-adapter graph: (scaling, A and B flattened past their first axis in float64, A's
    parameter name, A's shape, B's shape)."""
    from adapters import adapters_in, modules_of

    found = adapters_in(g)
    if len(found) != 1:
        raise ValueError(f"merging and distances take graphs of one adapter; this one holds {len(found)}")
    adapter = found[0]
    out = {}
    for m in modules_of(found):
        if set(m.keys) - {"A", "B"}:
            raise ValueError(f"{m.module}: DoRA magnitudes and lora_B biases do not add; not merged")
        a, b = (adapter.tensors[m.keys[r]].double() for r in ("A", "B"))
        out[m.module] = (m.scaling, a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), m.keys["A"],
                         tuple(a.shape), tuple(b.shape))
    whole = set(adapter.tensors) - {k for m in modules_of(found) for k in m.keys.values()}
    if whole:
        raise ValueError(f"{sorted(whole)[0]} is a whole tensor (modules_to_save, bias); not merged")
    return out


MERGES = ("task-arithmetic", "ties", "dare")


def merge(graphs: list[ParameterGraph], weights: list[float] | None = None, rank: int | None = None,
          base=None, *, method: str = "task-arithmetic", density: float = 0.2,
          seed: int = 0) -> tuple[ParameterGraph, dict[str, float]]:
    """Merge adapters of one base on their low-rank products ``w_i s_i B_i A_i``, module by module.

    ``task-arithmetic``: their sum, exact at rank ``sum_i r_i`` (the factors stacked; no ``m x n``
    product) when ``rank`` is None, else its balanced SVD truncated to ``rank``. ``ties`` (each
    product trimmed to its ``density`` largest magnitudes, signs elected, agreeing entries averaged)
    and ``dare`` (entries kept with probability ``density``, rescaled, summed) act on the entries of
    the products, so they form each module's ``m x n`` product and return its SVD truncated to
    ``rank`` (default: the largest ``r_i``). Each module's relative Frobenius error of truncation,
    ``|dropped S| / |S|``, is returned (zero when exact). The result's scaling is 1 (``lora_alpha = r``,
    or ``sqrt(r)`` with rsLoRA); a module of only some adapters counts as zero in the others.
    ``base`` as in ``from_peft``."""
    import json
    import re

    from adapters import Adapter, adapters_in, build, meta_base

    if isinstance(base, (str, Path)):  # a Hugging Face folder, as from_peft takes it
        base = meta_base(Path(base))
    weights = [1.0] * len(graphs) if weights is None else list(weights)
    if len(weights) != len(graphs) or not graphs:
        raise ValueError(f"{len(weights)} weights for {len(graphs)} graphs")
    if method not in MERGES or not 0 < density <= 1:
        raise ValueError(f"method must be one of {', '.join(MERGES)} (got {method!r}) and density in (0, 1]")
    gen = torch.Generator().manual_seed(seed)
    parts = [_products(g) for g in graphs]
    first = adapters_in(graphs[0])[0]
    config, dtype = dict(first.config), next(iter(first.tensors.values())).dtype
    rsl = bool(config.get("use_rslora"))
    tensors, ranks, alphas, errors = {}, {}, {}, {}
    for module in sorted({m for p in parts for m in p}):
        found = [(w, p[module]) for w, p in zip(weights, parts) if module in p]
        key, a_shape, b_shape = found[0][1][3], found[0][1][4], found[0][1][5]
        if method == "task-arithmetic":
            a, b, errors[module] = _stacked(found, rank)
        else:
            size = (found[0][1][2].shape[0], found[0][1][1].shape[1])
            tasks = torch.stack([w * p[module][0] * (p[module][2] @ p[module][1]) if module in p
                                 else torch.zeros(size, dtype=torch.float64) for w, p in zip(weights, parts)])
            a, b, errors[module] = _dense(_combine(tasks.flatten(1), method, density, gen).view(size),
                                          rank or max(f[1].shape[0] for _, f in found))
        r = a.shape[0]
        tensors[key] = a.reshape(r, *a_shape[1:]).to(dtype)
        tensors[key.replace("lora_A.weight", "lora_B.weight").replace("lora_embedding_A", "lora_embedding_B")] = \
            b.reshape(b_shape[0], r, *b_shape[2:]).to(dtype)
        ranks[re.escape(module)] = r
        alphas[re.escape(module)] = math.sqrt(r) if rsl else float(r)
    config.update(r=max(ranks.values()), lora_alpha=alphas[max(ranks, key=ranks.get)], rank_pattern=ranks,
                  alpha_pattern=alphas, target_modules=sorted({m.rsplit(".", 1)[-1] for p in parts for m in p}))
    text = json.dumps(config, indent=2, sort_keys=True)
    merged = build([Adapter("default", "", json.loads(text), text, tensors)], base, "merged adapter")
    return merged, errors


def _stacked(found: list, rank: int | None) -> tuple[Tensor, Tensor, float]:
    """The weighted products' sum as stacked factors, truncated to ``rank`` by the balanced SVD."""
    a = torch.cat([f[1] for _, f in found])
    b = torch.cat([w * f[0] * f[2] for w, f in found], dim=1)
    if rank is None or rank >= a.shape[0]:
        return a, b, 0.0
    a, b, s = balanced_svd(a, b)
    return a[:rank], b[:, :rank], float(s[rank:].norm() / s.norm().clamp_min(1e-300))


def _combine(tasks: Tensor, method: str, density: float, gen: torch.Generator) -> Tensor:
    """TIES or DARE over the rows of ``tasks`` (one flattened product per adapter)."""
    if method == "ties":
        from .weightspace.merging import _ties

        return _ties(tasks, density)
    keep = torch.rand(tasks.shape, generator=gen, dtype=torch.float64) < density
    return (tasks * keep / density).sum(0)


def _dense(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Balanced factors of rank ``rank`` of a dense update, and the relative error of truncation."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    a, b, _ = _balanced(u, s, vh.T, rank, 0.0)
    return a, b, float(s[rank:].norm() / s.norm().clamp_min(1e-300))


def _product_norm(a: Tensor, b: Tensor) -> float:
    """``|B A|_F`` from QR factors (``|R_B R_A^T|_F``): no ``m x n`` product, no cancellation of squares."""
    return float(torch.linalg.matrix_norm(torch.linalg.qr(b)[1] @ torch.linalg.qr(a.T)[1].T))


def product_distances(query: ParameterGraph, graphs: list[ParameterGraph]) -> Tensor:
    """``sqrt(sum over modules |s_q B_q A_q - s_i B_i A_i|_F^2)`` from the query to each graph: the
    distance of the adapters' weight updates, invariant to all of GL(r) per module (no canonical frame
    needed). Each module's difference is one stacked low-rank product, ``[s_q B_q, -s_i B_i] [A_q; A_i]``,
    whose norm comes from QR factors: ``O((m + n) r^2)``, never an ``m x n`` product."""
    q = _products(query)
    out = []
    for g in graphs:
        p = _products(g)
        total = 0.0
        for module in q.keys() | p.keys():
            parts = [(1.0, q[module])] if module in q else []
            parts += [(-1.0, p[module])] if module in p else []
            a = torch.cat([f[1] for _, f in parts])
            b = torch.cat([sign * f[0] * f[2] for sign, f in parts], dim=1)
            total += _product_norm(a, b) ** 2
        out.append(math.sqrt(total))
    return torch.tensor(out, dtype=torch.float64)


def nearest(query: ParameterGraph, graphs: list[ParameterGraph], k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` graphs nearest to ``query`` by :func:`product_distances`: ``(index, distance)``."""
    d = product_distances(query, graphs)
    order = torch.argsort(d)[:k]
    return [(int(i), float(d[i])) for i in order]


__all__ = ["EQUAL_RTOL", "MERGES", "RTOL", "ModuleSpectrum", "balanced_svd", "canonical_values", "canonicalise",
           "merge", "nearest", "product_distances"]
