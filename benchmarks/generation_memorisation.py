"""Can the generator at least memorise? Flow matching on a handful of checkpoints of one shape.

    python benchmarks/generation_memorisation.py --checkpoints 8 --steps 2000

A generative model that cannot reproduce its few training checkpoints will not produce
working new ones. Each row trains a velocity field on the same ``--checkpoints`` CNNs of the
``generation`` zoo (one shape) with the same optimiser steps and batch, then samples 16
models from Gaussian noise:

- ``gmn``: :class:`gmn.tasks.generation.WeightGenerator` (equivariant: no neuron identities);
- ``mlp``: an MLP over the flattened weight vector, the checkpoints first aligned to the first
  one by weight matching (what p-diff-style generators do: one fixed architecture, one frame);

each with ``velocity`` or ``clean`` (end point) prediction. Reported: the final training loss
(in each prediction's own units), the generated models' median test accuracy against the
checkpoints', and their nearest aligned distance to a checkpoint (near 0: a copy).
Writes generation_memorisation.{txt,json,png} to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import metanetwork_options, parse_with_out
from generation import generation_zoo, shape_of
from torch import nn
from tqdm import tqdm

import converters
from gmn.alignment import align
from gmn.tasks.generation import (
    accuracies,
    clean_to_velocity,
    fit_generator,
    heun,
    nearest_aligned,
    parameter_scale,
)
from gmn.tasks.property import TrainConfig
from gmn.zoo import datasets


class FlatVelocity(nn.Module):
    """``(z_t, t) -> v`` or ``z_1`` over a flattened weight vector of one architecture."""

    def __init__(self, size: int, hidden: int = 512):
        super().__init__()
        self.inp, self.time = nn.Linear(size, hidden), nn.Linear(1, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, size))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(self.inp(z) + self.time(t[:, None]))


def fit_flat(targets: torch.Tensor, prediction: str, steps: int, batch: int, lr: float,
             seed: int) -> tuple[FlatVelocity, float]:
    torch.manual_seed(seed)
    net = FlatVelocity(targets.size(1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in tqdm(range(steps), desc=f"mlp {prediction}", leave=False):
        z1 = targets[torch.randint(len(targets), (batch,))]
        z0, t = torch.randn_like(z1), torch.rand(batch)
        zt = (1 - t[:, None]) * z0 + t[:, None] * z1
        loss = F.mse_loss(net(zt, t), z1 - z0 if prediction == "velocity" else z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return net, float(np.mean(losses[-max(1, steps // 10):]))


@torch.no_grad()
def sample_flat(net: FlatVelocity, prediction: str, count: int, size: int, steps: int, seed: int) -> torch.Tensor:
    """The sampler of :meth:`WeightGenerator.sample`, on flat vectors."""
    z = torch.randn(count, size, generator=torch.Generator().manual_seed(seed))

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        out = net(z, torch.full((count,), t))
        return out if prediction == "velocity" else clean_to_velocity(out, z, torch.tensor(1 - t))

    return heun(velocity, z, steps, euler_last=prediction == "clean")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", default="zoos/generation")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--shape", default="2,8", help="depth,width of the CNNs")
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per row")
    p.add_argument("--batch", type=int, default=16)
    metanetwork_options(p, lr=1e-3)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/generation")
    args, out = parse_with_out(p)
    ds = generation_zoo(args.zoo, args.runs)
    depth, width = (int(v) for v in args.shape.split(","))
    members = [i for i, k in enumerate(ds.arch_keys) if shape_of(k) == (depth, width)][: args.checkpoints]
    key = ds.arch_keys[members[0]]
    template, module = ds.templates[key], ds.model(members[0])[0]
    data = datasets.load("digits")
    scale = parameter_scale(template)
    values = torch.stack([ds.values[i] for i in members])
    frame = converters.with_values(template, values[0])
    aligned = torch.stack([align(frame, converters.with_values(template, v)).edge_value[: values.size(1)]
                           for v in values])
    rows = []

    def row(model: str, prediction: str, loss: float, generated: torch.Tensor) -> None:
        acc = accuracies(module, template, generated, data.x_test, data.y_test)
        dist = nearest_aligned(template, generated, values, 3)[0]
        rows.append({"model": model, "prediction": prediction, "final_loss": loss, "acc_median": float(acc.median()),
                     "acc_max": float(acc.max()), "distance": float(dist.median())})
        print(rows[-1], flush=True)

    epochs = 20  # the members repeated so that 20 epochs make --steps steps
    train = torch.tensor(members).repeat(-(-args.steps * args.batch // (epochs * len(members))))
    for prediction in ("velocity", "clean"):
        config = TrainConfig(epochs=epochs, lr=args.lr, batch_size=args.batch, hidden=args.hidden, layers=args.layers,
                             patience=epochs, seed=args.seed, device=args.device)
        gen = fit_generator(ds, train, torch.tensor(members), config, prediction=prediction).cpu()
        loss = gen.history[-1]["val_loss"]
        row("gmn", prediction, loss, gen.sample(template, args.samples, steps=40, seed=args.seed + 1))
        net, loss = fit_flat(aligned / scale, prediction, args.steps, args.batch, args.lr, args.seed)
        z = sample_flat(net, prediction, args.samples, aligned.size(1), 40, args.seed + 1)
        row("mlp (aligned, flattened)", prediction, loss, z * scale)
    checkpoints = accuracies(module, template, values, data.x_test, data.y_test)
    lines = [f"{len(members)} checkpoints of cnn d{depth} w{width} (median test accuracy "
             f"{float(checkpoints.median()):.3f}); {args.steps} optimiser steps of batch {args.batch} per row; "
             f"{args.samples} samples from Gaussian noise, 40 Heun steps",
             f"{'model':<26}{'prediction':<12}{'loss':>8}{'acc median':>12}{'acc max':>9}{'distance':>10}"]
    lines += [f"{r['model']:<26}{r['prediction']:<12}{r['final_loss']:>8.3f}{r['acc_median']:>12.3f}"
              f"{r['acc_max']:>9.3f}{r['distance']:>10.3f}" for r in rows]
    text = "\n".join(lines)
    print(text)
    (out / "generation_memorisation.txt").write_text(text + "\n")
    (out / "generation_memorisation.json").write_text(json.dumps({"rows": rows, "args": vars(args),
                                                                  "checkpoint_acc": checkpoints.tolist()}, indent=1))
    plot(rows, float(checkpoints.median()), out / "generation_memorisation.png")


def plot(rows: list[dict], reference: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels = [f"{r['model'].split()[0]}\n{r['prediction']}" for r in rows]
    ax.bar(labels, [r["acc_median"] for r in rows], color=["C0" if r["model"] == "gmn" else "C1" for r in rows])
    ax.axhline(reference, c="k", ls="--", label="training checkpoints (median)")
    ax.axhline(0.1, c="grey", ls=":", label="chance")
    ax.set_ylabel("generated test accuracy (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
