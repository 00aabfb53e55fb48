"""LoRA adapters' GL(r) symmetry: the balanced SVD canonical form.

An adapted module computes ``s * B @ A``; for every invertible ``M``, ``(B M^-1, M A)`` is the same
adapter. Rank-node permutations are automorphisms of the adapter graph (``gmn.symmetry`` moves them);
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

from dataclasses import dataclass

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
    left, right = qb @ u, qa @ vh.T  # (m, k), (n, k)
    s = torch.where(s > rtol * s.max().clamp(min=torch.finfo(s.dtype).tiny), s, torch.zeros_like(s))
    pick = left.abs().argmax(dim=0)
    sign = torch.where(left[pick, torch.arange(left.shape[1])] < 0, -1.0, 1.0).to(s)
    root = s.sqrt() * sign
    new_b = torch.zeros_like(b)
    new_a = torch.zeros_like(a)
    k = s.numel()
    new_b[:, :k] = left * root
    new_a[:k] = (right * root).T
    full = torch.zeros(r, dtype=s.dtype)
    full[:k] = s
    return new_a, new_b, full


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


__all__ = ["EQUAL_RTOL", "RTOL", "ModuleSpectrum", "balanced_svd", "canonical_values", "canonicalise"]
