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
            # running statistics, and the per-expert routing bias of aux-loss-free balancing (DeepSeek-V3)
            if b.is_floating_point() and b.numel() and any(
                    k in name for k in ("running_var", "running_mean", "e_score_correction_bias")):
                b.add_(torch.rand(b.shape, generator=gen, dtype=b.dtype) * 0.5)
    return model


def fresh_inputs(inputs: tuple, seed: int) -> tuple:
    """Inputs like ``inputs`` (same shapes and dtypes) with new values: token ids drawn in the
    range the originals span, floats from a normal distribution; ``None`` stays."""
    gen = torch.Generator().manual_seed(1000 + seed)

    def fresh(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=gen, dtype=t.dtype) * t.std().clamp(min=1e-3) + t.mean()
        if t.dtype == torch.bool:
            return t
        return torch.randint(int(t.min()), int(t.max()) + 1, t.shape, generator=gen, dtype=t.dtype)
    return tuple(fresh(t) for t in inputs)


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
