"""Weights for tasks nobody trained on: conditional generation against fine-tuning (issue 38).

On a LoRA zoo whose adapters are each trained for one task of a family with a numeric descriptor
(``gmn.zoo.lora``: digits rotated by an angle), descriptors are held out of training, either a band
inside the training range (interpolation) or beyond it (extrapolation). For a held-out task, the
candidates for its adapter are:

- **fine-tuning** a fresh adapter (PEFT's default initialisation, the zoo's recipe): the reference;
- **retrieval**: the training adapter of the nearest descriptor;
- **means**: of the training adapters' products (``gmn.lora.merge``) or of their canonical factors;
- **task arithmetic**: the products of the two neighbouring descriptors' adapters, weighted by
  inverse descriptor distance (linear interpolation when they bracket the task);
- **generation**: the conditional flow generator (``gmn.tasks.canonical_generation``) sampled at the
  task's descriptor, and fine-tuning for a few steps from it.

Every candidate is written with ``adapters.to_peft`` and loaded with ``peft.PeftModel.from_pretrained``,
so what is scored is the folder a user gets. ``benchmarks/conditional_generation.py`` runs it all.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from converters import ParameterGraph, with_values

from ..zoo.lora import _accuracy, rotate


# ------------------------------------------------------------------------------ held-out descriptors
@dataclass(frozen=True)
class DescriptorSplit:
    """Which adapters train the generator: those with a descriptor inside ``train_range`` (closed)
    and outside the open ``band``; tasks inside the band are interpolation, beyond the range extrapolation."""

    band: tuple[float, float]
    train_range: tuple[float, float]

    def train_indices(self, descriptors: Tensor) -> list[int]:
        """The zoo indices kept for training (every adapter whose task is not held out)."""
        return [i for i, d in enumerate(descriptors.tolist()) if self.kind(d) is None]

    def kind(self, descriptor: float) -> str | None:
        """``interpolation``, ``extrapolation``, or None for a training descriptor."""
        if not self.train_range[0] <= descriptor <= self.train_range[1]:
            return "extrapolation"
        if self.band[0] < descriptor < self.band[1]:
            return "interpolation"
        return None

    def check(self, tasks: list[float]) -> list[str]:
        """Each held-out task's kind; a task the split would train on is refused (it would be seen)."""
        kinds = [self.kind(t) for t in tasks]
        if None in kinds:
            raise ValueError(f"task {tasks[kinds.index(None)]} is not held out by band {self.band} and range "
                             f"{self.train_range}")
        return kinds


def nearest_descriptor(descriptors: Tensor, query: float) -> int:
    """Retrieval: the index of the descriptor nearest to ``query`` (the first on ties)."""
    return int((descriptors - query).abs().argmin())


def neighbour_weights(descriptors: Tensor, query: float) -> list[tuple[int, float]]:
    """Task arithmetic's two adapters and weights: the nearest descriptor below and above ``query``
    when both exist (linear interpolation), else the two nearest (extrapolation); weights are inverse
    descriptor distances summing to 1, so they stay convex (a linear extrapolation from two close
    descriptors would scale the update many times over)."""
    d = descriptors.double() - query
    below, above = (d <= 0).nonzero().flatten(), (d > 0).nonzero().flatten()
    if len(below) and len(above):
        pair = [int(below[d[below].abs().argmin()]), int(above[d[above].abs().argmin()])]
    else:
        pair = [int(i) for i in d.abs().argsort()[:2]]
    inverse = [1.0 / max(abs(float(d[i])), 1e-9) for i in pair]
    return [(i, w / sum(inverse)) for i, w in zip(pair, inverse)]


def canonical_mean(graphs: list[ParameterGraph], canonical: list[Tensor]) -> ParameterGraph:
    """The average of adapters' canonical factors (``gmn.lora.canonical_values``), in the first graph:
    what the generator's frame averages to, unlike the mean of products (which is full rank)."""
    return with_values(graphs[0], torch.stack(canonical).mean(0))


# ------------------------------------------------------------------------------ scoring a folder
@dataclass
class Task:
    """One rotated-digits task: its descriptor and the rotated train and test images."""

    angle: float
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @classmethod
    def rotated(cls, data, angle: float) -> Task:
        """The zoo's task at ``angle`` degrees (``data``: the zoo's dataset, ``gmn.zoo.datasets.load``)."""
        return cls(angle, rotate(data.x_train, angle), data.y_train, rotate(data.x_test, angle), data.y_test)

    def accuracy(self, model: nn.Module) -> float:
        return _accuracy(model.eval(), self.x_test, self.y_test)  # the zoo's own scoring


def load_adapter(graph: ParameterGraph, base: nn.Module, folder: str | Path, trainable: bool = False) -> nn.Module:
    """``graph`` written as a PEFT folder and loaded over a copy of ``base`` as a user would load it."""
    import peft

    from converters import to_peft

    to_peft(graph, None, folder, overwrite=True)
    return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder), is_trainable=trainable)


def fresh_adapter(base: nn.Module, rank: int, alpha: float, targets: list[str], seed: int) -> nn.Module:
    """A new adapter with PEFT's default initialisation (``B = 0``), as the zoo starts each one."""
    import peft

    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    return peft.get_peft_model(copy.deepcopy(base), config)


@dataclass
class Curve:
    """Test accuracy after each optimiser step (index 0: before training) and the training seconds
    spent up to it (evaluation excluded)."""

    accuracy: list[float]
    seconds: list[float]

    def steps_to(self, target: float) -> int | None:
        """The first step whose accuracy reaches ``target`` (None: never within the curve)."""
        return next((k for k, a in enumerate(self.accuracy) if a >= target), None)


def finetune_curve(model: nn.Module, task: Task, steps: int, seed: int, lr: float = 1e-2,
                   batch_size: int = 64) -> Curve:
    """``steps`` Adam steps on the task's training images, the zoo's recipe (``gmn.zoo.lora._fit``:
    batches of 64 drawn without replacement per epoch, lr 1e-2), scored on its test images after each."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = Curve([task.accuracy(model)], [0.0])
    batches: list[Tensor] = []
    while len(curve.accuracy) <= steps:
        if not batches:
            batches = list(torch.randperm(len(task.y_train), generator=gen).split(batch_size))
        batch = batches.pop(0)
        model.train()
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(task.x_train[batch]), task.y_train[batch]).backward()
        opt.step()
        curve.seconds.append(curve.seconds[-1] + time.perf_counter() - start)
        curve.accuracy.append(task.accuracy(model))
    return curve


def reference_steps(train_size: int, epochs: int, batch_size: int = 64) -> int:
    """The optimiser steps of the zoo's recipe: ``epochs`` passes of batches of ``batch_size``."""
    return epochs * math.ceil(train_size / batch_size)


__all__ = ["Curve", "DescriptorSplit", "Task", "canonical_mean", "finetune_curve", "fresh_adapter", "load_adapter",
           "nearest_descriptor", "neighbour_weights", "reference_steps"]
