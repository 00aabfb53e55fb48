"""Scatter reductions: torch-scatter when installed, plain torch otherwise (same results)."""

from __future__ import annotations

import torch
from torch import Tensor

try:  # optional extra: pip install gmn[scatter]
    import torch_scatter
except ImportError:  # pragma: no cover - depends on the environment
    torch_scatter = None

USE_TORCH_SCATTER = torch_scatter is not None


def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum") -> Tensor:
    """Reduce rows of ``src`` (E, d) into ``dim_size`` rows by ``index``: sum, mean, max, min.

    Empty rows are 0 for every reduction. Half-precision sums and means accumulate (and
    return) in float32.
    """
    if src.dtype in (torch.float16, torch.bfloat16) and reduce in ("sum", "mean"):
        src = src.float()  # sums over many edges in 8 mantissa bits lose the small terms
    if USE_TORCH_SCATTER:
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce=reduce)
    shape = (dim_size,) + tuple(src.shape[1:])
    if reduce == "sum":  # index_add_: a 1-D index, and its backward is a cheap index_select
        return src.new_zeros(shape).index_add_(0, index, src)
    if reduce == "mean":
        total = src.new_zeros(shape).index_add_(0, index, src)
        count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
        return total / count.view(-1, *([1] * (src.dim() - 1)))
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    if reduce in ("max", "min"):
        out = src.new_zeros(shape).scatter_reduce(0, idx, src, reduce="a" + reduce, include_self=False)
        return out
    raise ValueError(f"unknown reduction {reduce!r}")


def degree(index: Tensor, dim_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.bincount(index, minlength=dim_size).to(dtype)
