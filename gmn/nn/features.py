"""Positional features for the encoders."""

from __future__ import annotations

import torch
from torch import Tensor


def sinusoidal(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal features of integer positions (any range)."""
    half = dim // 2
    scale = torch.log(torch.tensor(max_period)) / max(half, 1)
    freqs = torch.exp(-torch.arange(half, device=x.device, dtype=torch.float32) * scale.to(x.device))
    angles = x.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], -1)
