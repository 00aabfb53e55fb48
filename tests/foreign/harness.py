"""Checks every foreign model goes through: conservation, round trip, functional call, and
symmetry soundness (random symmetries leave float64 outputs unchanged)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import converters


def perturb(model: nn.Module, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """float64 (unless the model cannot run in it), eval, every parameter and every BatchNorm
    running statistic moved by noise (1/0 initialisations hide wrong permutations)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
        for name, b in model.named_buffers():
            if b.is_floating_point() and b.numel() and ("running_var" in name or "running_mean" in name):
                b.add_(torch.rand(b.shape, generator=gen, dtype=b.dtype) * 0.5)
    return model


def flat_output(out) -> torch.Tensor:
    """Every float tensor of a model's output (tensors, tuples, dicts, HF ModelOutputs), flattened."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1).double() if out.is_floating_point() else torch.zeros(0, dtype=torch.float64)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [flat_output(o) for o in out]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return torch.zeros(0, dtype=torch.float64)


def run(model: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return flat_output(model(*inputs))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def rebuilt(model: nn.Module, g) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.load_state_dict(converters.to_state_dict(g), strict=True)
    clone.train()  # drop eval-time caches computed from the old weights (LeViT's attention biases)
    return clone.eval()


def unique_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() already drops tied duplicates
