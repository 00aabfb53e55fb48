"""Adapters for tasks nobody trained on: a hypernetwork from a task's descriptor to its adapter.

Text-to-LoRA's recipe (Charakorn et al. 2025) on a built LoRA zoo (:mod:`gmn.zoo.lora`: one base,
adapters each trained on digits rotated by an angle). An MLP :math:`H` maps a task's descriptor
:math:`d` (standardised over the training adapters) to an adapter's factors, per coordinate in the
zoo's frame: :math:`v(d) = \\mu + \\sigma \\odot H(d)`, with :math:`\\mu, \\sigma` the training
adapters' mean and spread, in the GL(r)-canonical frame (``gmn.lora.canonical_values``) or over the
raw factors. It is trained in two stages, on the training adapters' descriptors only:

1. **reconstruction** (what the zoo alone teaches): :math:`\\min_H \\sum_i \\|H(d_i) - u_i\\|^2`, with
   :math:`u_i` the standardised factors of training adapter :math:`i`;
2. **task loss** (what makes the adapter work): :math:`\\min_H \\mathbb{E}_{i}\\,
   \\mathrm{CE}(f(R_{d_i} x; W + s\\,B(d_i) A(d_i)), y)`, the base with the generated adapter run through
   PEFT's own LoRA layers (``torch.func.functional_call``) on training images rotated by :math:`d_i`;
   a fifth of the training descriptors is kept for validation (early stopping on their loss).

A new task's adapter is one forward pass of :math:`H`. Independently trained adapters of nearby
descriptors sit in different basins (their mean works worse than either), so a map fitted to them
alone interpolates between basins; the task loss instead makes :math:`H` one smooth family of working
adapters, which is what lets it answer descriptors between and beyond the training ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import converters
from converters import ParameterGraph

from .lora_editing import AdapterTasks, _Runner
from .property import TrainConfig, _Trainer

#: the default training: 40 epochs of 50 steps of 16 descriptors, patience 10, AdamW 1e-3, width 256, 3 layers
HYPERNETWORK_CONFIG = TrainConfig(epochs=40, patience=10, lr=1e-3, batch_size=16, hidden=256, layers=3,
                                  weight_decay=0.0)


class AdapterHypernetwork(nn.Module):
    """Descriptor -> adapter factors: an MLP of ``layers`` hidden layers of width ``hidden`` whose
    output, scaled per coordinate by the training adapters' spread and shifted by their mean, is the
    flat factor vector of ``template`` (a graph of the zoo's adapter layout). The last layer starts at
    zero, so the untrained network gives the mean adapter of its frame. Not ``conditioned``: the input is
    always zero, one adapter for every task (the multi-task baseline: what the descriptor buys)."""

    def __init__(self, template: ParameterGraph, rows: Tensor, descriptors: Tensor, hidden: int = 256,
                 layers: int = 3, conditioned: bool = True):
        super().__init__()
        self.template, self.conditioned = template, conditioned
        std = rows.std(0)
        self.register_buffer("mean", rows.mean(0))
        self.register_buffer("std", std.clamp_min(1e-6 * float(std.mean().clamp_min(1e-12))))
        self.register_buffer("d_mean", descriptors.float().mean())
        self.register_buffer("d_std", descriptors.float().std().clamp_min(1e-12))
        sizes = [1] + [hidden] * layers
        body = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.SiLU())]
        self.net = nn.Sequential(*body, nn.Linear(hidden, rows.size(1)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def standardised(self, descriptors: Tensor) -> Tensor:
        """``[N, D]``: the network's output, the factors standardised per coordinate."""
        z = (descriptors.float().to(self.mean.device) - self.d_mean) / self.d_std
        return self.net(z[:, None] if self.conditioned else torch.zeros_like(z)[:, None])

    def forward(self, descriptors: Tensor) -> Tensor:
        """``[N, D]``: the flat factors of each descriptor's adapter."""
        return self.mean + self.std * self.standardised(descriptors)

    @torch.no_grad()
    def adapters(self, descriptors: Sequence[float]) -> list[ParameterGraph]:
        """The template with each descriptor's factors: graphs ``adapters.to_peft`` writes as folders."""
        values = self(torch.tensor(list(descriptors), dtype=torch.float32)).cpu()
        return [converters.with_values(self.template, row) for row in values]


def _task_split(count: int, seed: int, fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """Training and validation members of the training adapters (a seeded fifth for validation)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * count))
    return order[n_val:], order[:n_val]


def fit_adapter_hypernetwork(template: ParameterGraph, rows: Tensor, descriptors: Tensor, tasks: AdapterTasks,
                             model: nn.Module, config: TrainConfig | None = None, steps_per_epoch: int = 50,
                             reconstruction_steps: int = 500, images: int = 64, task_loss: bool = True,
                             conditioned: bool = True, out_dir: str | Path | None = None,
                             progress: bool = True) -> AdapterHypernetwork:
    """Train an :class:`AdapterHypernetwork` on the training adapters' factors ``rows`` (``[N, D]`` in
    ``template``'s layout, in the frame the network is to write) and ``descriptors`` (``[N]``):
    ``reconstruction_steps`` full-batch steps on the factors, then (``task_loss``) ``config.epochs`` of
    ``steps_per_epoch`` steps, each on ``config.batch_size`` training descriptors with ``images`` of
    their task (``tasks``: the zoo's images and each member's angle, indexed like ``rows``), through
    ``model`` (a ``PeftModel`` of the zoo's base); early stopping on the validation descriptors' loss.
    ``conditioned``: see :class:`AdapterHypernetwork`. Resumes from ``out_dir``."""
    config = config or HYPERNETWORK_CONFIG
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    net = AdapterHypernetwork(template, rows.float(), descriptors, config.hidden, config.layers, conditioned)
    _reconstruct(net, rows.float(), descriptors, reconstruction_steps, config.lr)
    net.reconstruction_seconds = time.perf_counter() - start
    net.history = []
    if task_loss:
        net.history = _fit_task_loss(net, descriptors, tasks, model, config, steps_per_epoch, images, out_dir,
                                     progress)
    net.fit_seconds = time.perf_counter() - start
    return net.eval()


def _reconstruct(net: AdapterHypernetwork, rows: Tensor, descriptors: Tensor, steps: int, lr: float) -> None:
    """Stage 1: regress the standardised factors of the training adapters on their descriptors."""
    targets = (rows - net.mean) / net.std
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net.standardised(descriptors), targets).backward()
        opt.step()


def _fit_task_loss(net: AdapterHypernetwork, descriptors: Tensor, tasks: AdapterTasks, model: nn.Module,
                   config: TrainConfig, steps_per_epoch: int, images: int, out_dir, progress: bool) -> list[dict]:
    """Stage 2: the cross-entropy of the base with each generated adapter on its task's images."""
    runner = _Runner(model, [n for n, _, _ in net.template.param_index.params])
    train, val = _task_split(len(descriptors), config.seed)
    draw = torch.Generator().manual_seed(config.seed)

    def losses(members: Tensor, generator: torch.Generator) -> Tensor:
        out = []
        for member, row in zip(members.tolist(), net(descriptors[members])):
            x, y = tasks.batch(member, images, generator)
            out.append(F.cross_entropy(runner.logits(converters.to_state_dict(net.template, row), x), y))
        return torch.stack(out)

    def train_epoch() -> float:
        total = 0.0
        for _ in range(steps_per_epoch):
            pick = train[torch.randint(len(train), (config.batch_size,), generator=draw)]
            loss = losses(pick, draw).mean()
            trainer.step(loss)
            total += loss.item()
        return total / steps_per_epoch

    def val_loss() -> float:
        with torch.no_grad():
            return float(losses(val, torch.Generator().manual_seed(12345)).mean())

    trainer = _Trainer("adapter-hypernetwork", net, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    return trainer.state["history"]


__all__ = ["HYPERNETWORK_CONFIG", "AdapterHypernetwork", "fit_adapter_hypernetwork"]
