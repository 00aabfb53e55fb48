"""Weight generation in a canonical frame: align the zoo, flow-match its flattened weights.

The recipe of the weight generators that produce working models (DeepWeightFlow, p-diff),
for every architecture :mod:`gmn.weightspace.alignment` aligns, with no permutation spec:

1. **Canonicalise.** Every checkpoint of one architecture is aligned to one reference by
   weight matching (residual streams, heads, experts and tied weights included), so one
   coordinate is one weight of one neuron in all of them.
2. **Encode.** Parameters and float buffers are flattened (a BatchNorm running variance as its
   logarithm, so every generated value is a valid variance), standardised per coordinate over
   the checkpoints, ``u = (x - mu) / sigma``, and optionally projected on the ``components``
   leading principal directions ``V``, whitened: ``w = V u / s`` with ``s`` the components'
   standard deviations. Every latent coordinate then has unit variance, like the noise. (On
   the benchmark's zoos the PCA latent samples far worse models than every coordinate does:
   ``benchmarks/results/generation/``; it is for models too large for a flat MLP.)
3. **Flow matching with clean prediction** (Lipman et al. 2023; Li & He 2025): on the straight
   path ``w_t = (1 - t) w_0 + t w_1``, ``w_0 ~ N(0, I)``, an MLP ``D`` is trained on

   .. math::
       \\min_D \\; \\mathbb{E}_{t, w_0, w_1} \\| D(w_t, t, c) - w_1 \\|^2

   (``c``: the standardised accuracy, dropped at random for classifier-free guidance), and
   samples integrate ``dw/dt = (D(w_t, t, c) - w_t) / (1 - t)`` from noise with Heun's method.
4. **Decode** and write back through the reference's parameter graph; BatchNorm statistics may
   be recomputed on data afterwards (:func:`gmn.weightspace.merging.recompute_batchnorm`).

A flat denoiser is not equivariant: the frame breaks the symmetry first, which is what lets it
learn how the weights of a network go together (``benchmarks/generation_memorisation.py``: a
message-passing denoiser does not, even on eight checkpoints).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import converters
from converters import ParameterGraph

from ..nn.features import sinusoidal
from ..weightspace.merging import _float_buffers, canonicalise
from .generation import (
    clean_to_velocity,
    condition_embedding,
    dropped_condition,
    guided,
    heun,
    property_stats,
    target_condition,
)
from .property import TrainConfig, _Trainer

LOG_BUFFERS = ("running_var",)  # buffers generated as logarithms: always positive after decoding


class CanonicalGenerator(nn.Module):
    """Encoder of the canonical frame, its flow-matching denoiser, and the sampler.

    ``template``: the reference's graph (its structure and buffer layout are what samples are
    written into); ``rows``: the canonicalised checkpoints as flat vectors
    (:func:`flat_rows`); ``components``: PCA latent size (``None``: every coordinate).
    """

    def __init__(self, template: ParameterGraph, rows: Tensor, components: int | None = None, hidden: int = 512,
                 blocks: int = 3, conditioned: bool = False):
        super().__init__()
        self.template = template
        self.buffer_layout = [(k, v.shape) for k, v in _float_buffers(template).items()]
        mean, std = rows.mean(0), rows.std(0) if len(rows) > 1 else torch.ones(rows.size(1))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp_min(1e-6 * float(std.mean().clamp_min(1e-12))))
        basis, spread = self._principal(rows, components)
        self.register_buffer("basis", basis)  # [k, D]; empty: no projection
        self.register_buffer("spread", spread)
        self.register_buffer("target_stats", torch.tensor([0.0, 1.0]))
        size = basis.size(0) if basis.numel() else rows.size(1)
        self.size, self.hidden = size, hidden
        self.inp = nn.Linear(size, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.condition = nn.Linear(1, hidden) if conditioned else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.SiLU(),
                                                  nn.Linear(2 * hidden, hidden)) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, size))

    def _principal(self, rows: Tensor, components: int | None) -> tuple[Tensor, Tensor]:
        if components is None:
            return torch.empty(0), torch.empty(0)
        if not 0 < components < len(rows):
            raise ValueError(f"components must be between 1 and {len(rows) - 1} (checkpoints - 1), got {components}")
        u = (rows - self.mean) / self.std
        _, s, vh = torch.linalg.svd(u.double(), full_matrices=False)
        return vh[:components].float(), (s[:components] / math.sqrt(len(rows) - 1)).float()

    # -- the frame: flat vectors <-> graphs, flat vectors <-> latents
    def unflatten(self, rows: Tensor) -> list[ParameterGraph]:
        """The template with each row's parameter values and buffers."""
        n = int(self.template.num_param_edges)
        out = []
        for row in rows:
            buffers, at = {}, n
            for name, shape in self.buffer_layout:
                size = math.prod(shape)
                value = row[at:at + size].view(shape)
                buffers[name] = value.exp() if name.endswith(LOG_BUFFERS) else value
                at += size
            out.append(converters.with_values(self.template, row[:n], buffers))
        return out

    def encode(self, rows: Tensor) -> Tensor:
        u = (rows - self.mean) / self.std
        return u if not self.basis.numel() else (u @ self.basis.T) / self.spread

    def decode(self, latent: Tensor) -> Tensor:
        u = latent if not self.basis.numel() else (latent * self.spread) @ self.basis
        return u * self.std + self.mean

    # -- the denoiser
    def forward(self, w: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """The clean latent ``w_1`` predicted from ``w_t`` at times ``t`` (per row)."""
        emb = self.time(sinusoidal(t * 1000, self.hidden))
        if self.condition is not None and c is not None:
            emb = emb + condition_embedding(self.condition, c)
        h = self.inp(w) + emb
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def flow_loss(self, w1: Tensor, y: Tensor | None = None, drop_condition: float = 0.2,
                  generator: torch.Generator | None = None) -> Tensor:
        """Clean-prediction flow-matching loss of latents ``w1`` (properties ``y``)."""
        w0 = torch.randn(w1.shape, generator=generator, device="cpu").to(w1.device)
        t = torch.rand(len(w1), generator=generator, device="cpu").to(w1.device)
        wt = (1 - t[:, None]) * w0 + t[:, None] * w1
        c = None
        if self.condition is not None and y is not None:
            c = dropped_condition(y, self.target_stats, drop_condition, generator)
        return F.mse_loss(self(wt, t, c), w1)

    @torch.no_grad()
    def sample(self, count: int, steps: int = 20, target: float | None = None, guidance: float = 1.0,
               seed: int = 0) -> list[ParameterGraph]:
        """``count`` new models of the template's architecture, in its frame; ``target``: the
        property to condition on (classifier-free guidance of weight ``guidance``)."""
        device = self.mean.device
        w = torch.randn(count, self.size, generator=torch.Generator().manual_seed(seed)).to(device)
        c = target_condition(self.condition, self.target_stats, target, count, device)

        def velocity(w: Tensor, t: float) -> Tensor:
            tt = torch.full((count,), t, device=device)
            return clean_to_velocity(guided(lambda cc: self(w, tt, cc), c, guidance), w, 1 - tt[:, None])

        w = heun(velocity, w, steps, euler_last=True)
        return self.unflatten(self.decode(w).cpu())


def flat_rows(graphs: Sequence[ParameterGraph]) -> Tensor:
    """``[N, D]``: each graph's parameter values, then its float buffers in the first graph's
    order (BatchNorm running variances as logarithms)."""
    layout = list(_float_buffers(graphs[0]))
    return torch.stack([_flat(g, layout) for g in graphs])


def _flat(g: ParameterGraph, layout: list[str]) -> Tensor:
    buffers = _float_buffers(g)
    parts = [converters.parameter_values(g)]
    for name in layout:
        value = buffers[name].float().reshape(-1)
        parts.append(value.clamp_min(1e-12).log() if name.endswith(LOG_BUFFERS) else value)
    return torch.cat(parts)


def fit_canonical_generator(graphs: Sequence[ParameterGraph], targets: Tensor | None = None,
                            config: TrainConfig | None = None, components: int | None = None,
                            steps_per_epoch: int = 50, reference: int = 0, aligned: bool = False,
                            out_dir: str | Path | None = None, progress: bool = True) -> CanonicalGenerator:
    """Canonicalise ``graphs`` (checkpoints of one architecture) and train a
    :class:`CanonicalGenerator` on them; ``targets`` (one property per graph) makes it
    conditional. ``config``: ``epochs`` of ``steps_per_epoch`` optimiser steps of
    ``batch_size`` draws, ``hidden`` width, ``layers`` residual blocks, ``lr``; the loss at
    fixed noise on all checkpoints picks the best epoch. Resumes from ``out_dir``.
    ``components``: see the module docstring; ``aligned``: the graphs share one frame already
    (a zoo canonicalised once with :func:`gmn.weightspace.merging.canonicalise`), so they are not aligned again."""
    config = config or TrainConfig(epochs=40, patience=40, lr=1e-3, batch_size=64, hidden=512, layers=3,
                                   weight_decay=0.0)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    frame = list(graphs) if aligned else canonicalise(graphs, graphs[reference])
    rows = flat_rows(frame)  # one template: one buffer order
    model = CanonicalGenerator(frame[reference], rows, components, config.hidden, config.layers, targets is not None)
    model.training_rows = rows  # the canonicalised checkpoints, flat: the zoo in one frame
    device = torch.device(config.device)
    latents = model.encode(rows).to(device)
    y = None
    if targets is not None:
        y = targets.float().to(device)
        model.target_stats.copy_(property_stats(y))
    align_seconds = time.perf_counter() - start
    draw = torch.Generator().manual_seed(config.seed)

    def train_epoch() -> float:
        total = 0.0
        for _ in range(steps_per_epoch):
            pick = torch.randint(len(latents), (config.batch_size,), generator=draw).to(device)
            loss = model.flow_loss(latents[pick], None if y is None else y[pick])
            trainer.step(loss)
            total += loss.item()
        return total / steps_per_epoch

    @torch.no_grad()
    def fixed_noise_loss() -> float:
        gen = torch.Generator().manual_seed(12345)
        return sum(model.flow_loss(latents, y, 0.0, gen).item() for _ in range(8)) / 8

    trainer = _Trainer("canonical-generator", model, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, fixed_noise_loss)
    model.align_seconds, model.fit_seconds = align_seconds, time.perf_counter() - start
    model.history = trainer.state["history"]
    return model.cpu()


__all__ = ["CanonicalGenerator", "fit_canonical_generator", "flat_rows"]
