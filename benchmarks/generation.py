"""Weight generation: canonical-frame flow matching on zoos of small CNNs, a ResNet with
BatchNorm and a ViT (digits), evaluated after Zeng et al. 2025 ("Generalization or
memorization?").

    python benchmarks/generation.py

Per architecture, one generator per ``--generators`` entry (``flat``: every coordinate of the
canonicalised weights; ``pca``: their ``--components`` leading principal components; ``gmn``:
the equivariant message-passing flow of :mod:`gmn.tasks.generation`, for comparison) is
trained on all of that architecture's checkpoints and samples ``--samples`` models from noise.
Reported per row: test accuracy (median, and over the training checkpoints' median), the share
reaching 90% of that median, novelty as the aligned distance to the nearest training
checkpoint and as the highest prediction agreement with one, and the noise-added-checkpoint
baseline at several noise levels in the same table (novelty at equal accuracy); BatchNorm
models also after their statistics are recomputed on training data; the steps of fine-tuning
to the checkpoints' median from generated against random initialisations; the time to train
each generator and to sample. Writes generation.{txt,json,png} to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import parse_with_out
from tqdm import tqdm

import converters
from gmn.data import ZooDataset
from gmn.tasks.canonical_generation import fit_canonical_generator
from gmn.tasks.generation import (
    accuracies,
    fit_generator,
    nearest_aligned,
    prediction_similarity,
    steps_to_accuracy,
    with_noise,
)
from gmn.tasks.property import TrainConfig
from gmn.weightspace.merging import canonicalise, recompute_batchnorm
from gmn.zoo import build_zoo, datasets

NOISE = (0.05, 0.1, 0.25, 0.5)
ZOOS = {  # name: (preset, runs)
    "generation": ("generation", 300),
    "generation-resnet": ("generation-resnet", 64),
    "generation-vit": ("generation-vit", 64),
}


def open_zoo(root: Path, preset: str, runs: int, epochs: int) -> ZooDataset:
    """The preset's zoo under ``root`` (built, or resumed where it stopped), opened."""
    path = root / preset
    build_zoo(path, preset=preset, runs=runs, epochs=epochs, checkpoint_epochs=(epochs,),
              workers=os.cpu_count()).close()
    return ZooDataset(path, ("test_acc",))


def arch_name(key: str) -> str:
    arch = json.loads(key)[0]
    if arch["family"] == "cnn":
        return "cnn d{depth} w{width}".format(**arch)
    if arch["family"] == "rescnn":
        return "resnet-bn b{blocks} w{width}".format(**arch)
    return "vit d{depth} w{dim} h{heads}".format(**arch)


class Architecture:
    """One architecture of a zoo: its checkpoints as graphs, its module and its data."""

    def __init__(self, ds: ZooDataset, key: str, data):
        self.name, self.data, self.dataset = arch_name(key), data, ds
        self.index = [i for i, k in enumerate(ds.arch_keys) if k == key]
        self.template = ds.templates[key]
        self.module = ds.model(self.index[0])[0].eval()
        start = time.perf_counter()
        # one frame for the generators and for every distance (samples of a canonical generator are in it)
        self.graphs = canonicalise([ds.get(i) for i in self.index], ds.get(self.index[0]))
        self.align_s = time.perf_counter() - start
        self.values, self.buffers = _as_rows(self.graphs)
        self.acc = ds.y[self.index, 0]
        self.has_batchnorm = any(k.endswith("running_var") for k in self.template.param_index.buffers)

    def recalibrated(self, graphs: list) -> list:
        batches = [(x,) for x in self.data.x_train.split(128)]
        out = []
        for g in graphs:
            g.model = self.module
            out.append(recompute_batchnorm(g, batches))
        return out


def evaluate(arch: Architecture, method: str, values: torch.Tensor, buffers: list | None,
             exclude_self: bool = False, in_frame: bool = True, **extra) -> dict:
    x, y = arch.data.x_test, arch.data.y_test
    acc = accuracies(arch.module, arch.template, values, x, y, buffers)
    exclude = torch.arange(len(values)) if exclude_self else None  # a checkpoint against the others
    # the nearest checkpoint in the frame, aligned pairwise: an upper bound, "proven" where exact
    near = nearest_aligned(arch.template, values, arch.values, 1, exclude, in_frame=in_frame, budget=1)
    sim = prediction_similarity(arch.module, arch.template, values, arch.values, x, exclude, buffers, arch.buffers)
    median = float(arch.acc.median())
    return {"arch": arch.name, "method": method, "models": len(values), "acc_median": float(acc.median()),
            "acc_ratio": float(acc.median()) / median, "good": float((acc >= 0.9 * median).float().mean()),
            "acc_mean": float(acc.mean()), "acc_std": float(acc.std()), "distance": float(near.distance.median()),
            "proven": float(near.proven.float().mean()), "similarity": float(sim.median()), **extra}


def _as_rows(graphs: list) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([converters.parameter_values(g) for g in graphs]), [dict(g.param_index.buffers) for g in graphs]


def generator_rows(arch: Architecture, kind: str, args, out: Path) -> tuple[list[dict], list]:
    """Train generator ``kind`` on the architecture's checkpoints, sample, evaluate."""
    config = TrainConfig(epochs=args.gen_epochs, lr=1e-3, batch_size=64, hidden=args.gen_hidden, weight_decay=0.0,
                         patience=args.gen_epochs, seed=args.seed, device=args.device)
    # one folder per generator and settings: a rerun with other settings trains afresh
    state = out / "state" / "-".join([arch.name.replace(" ", "-"), kind, f"e{args.gen_epochs}", f"h{args.gen_hidden}",
                                      f"c{args.components}", f"s{args.seed}"])
    start = time.perf_counter()
    if kind == "gmn":
        ds_config = TrainConfig(epochs=args.gen_epochs, lr=3e-3, batch_size=16, patience=args.gen_epochs,
                                seed=args.seed, device=args.device)
        gen = _gmn_generator(arch, ds_config, state)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        values = gen.sample(arch.template, args.samples, steps=args.steps, seed=args.seed)
        graphs = [converters.with_values(arch.graphs[0], v) for v in values]
    else:
        components = args.components if kind == "pca" else None
        gen = fit_canonical_generator(arch.graphs, arch.acc, config, components=components, aligned=True,
                                      out_dir=state)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        graphs = gen.sample(args.samples, steps=args.steps, seed=args.seed)
    timing = {"fit_s": fit, "sample_s": time.perf_counter() - start}
    in_frame = kind != "gmn"
    rows = [evaluate(arch, f"{kind}", *_as_rows(graphs), in_frame=in_frame, **timing)]
    if arch.has_batchnorm:
        rows.append(evaluate(arch, f"{kind} + BN recomputed", *_as_rows(arch.recalibrated(graphs)), in_frame=in_frame))
    if kind == "flat":
        high = float(arch.acc.quantile(0.9))
        rows.append(evaluate(arch, f"{kind}, acc={high:.2f}",
                             *_as_rows(gen.sample(args.samples, steps=args.steps, target=high, guidance=2.0,
                                                  seed=args.seed))))
    return rows, graphs


def _gmn_generator(arch: Architecture, config: TrainConfig, state: Path):
    """The equivariant GMN flow trained on this architecture alone (its own zoo subset)."""
    ds = arch.dataset
    train = torch.tensor(arch.index)
    return fit_generator(ds, train, train[: max(1, len(train) // 10)], config, out_dir=state).cpu()


def finetune(arch: Architecture, graphs: list, args) -> dict:
    target = float(arch.acc.median())
    picked = graphs[: args.finetune_models]
    steps_gen = [steps_to_accuracy(arch.module, arch.template, converters.parameter_values(g), arch.data, target,
                                   max_steps=args.max_steps, seed=i, buffers=dict(g.param_index.buffers))
                 for i, g in enumerate(picked)]
    steps_rand = [steps_to_accuracy(arch.module, arch.template, None, arch.data, target, max_steps=args.max_steps,
                                    seed=i) for i in range(len(picked))]
    return {"arch": arch.name, "target_acc": target, "steps_generated": steps_gen, "steps_random": steps_rand,
            "median_generated": float(np.median(steps_gen)), "median_random": float(np.median(steps_rand))}


def table(rows: list[dict], tunes: list[dict]) -> str:
    head = (f"{'architecture':<20}{'method':<26}{'acc median':>11}{'/ ckpts':>8}{'good':>6}{'acc mean±std':>15}"
            f"{'distance':>10}{'proven':>7}{'similarity':>11}{'fit s':>8}{'sample s':>9}")
    lines = [head]
    for r in rows:
        fit = f"{r['fit_s']:>8.0f}{r['sample_s']:>9.1f}" if "fit_s" in r else ""
        lines.append(f"{r['arch']:<20}{r['method']:<26}{r['acc_median']:>11.3f}{r['acc_ratio']:>8.2f}{r['good']:>6.2f}"
                     f"{r['acc_mean']:>9.3f}±{r['acc_std']:.3f}{r['distance']:>10.3f}{r['proven']:>7.2f}"
                     f"{r['similarity']:>11.3f}{fit}")
    lines += ["", f"{'architecture':<20}{'target acc':>11}{'steps from generated':>22}{'steps from random':>19}"]
    for t in tunes:
        lines.append(f"{t['arch']:<20}{t['target_acc']:>11.3f}{t['median_generated']:>22.0f}"
                     f"{t['median_random']:>19.0f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs), 3.4), sharey=False)
    for ax, name in zip(np.atleast_1d(axes), archs):
        mine = [r for r in rows if r["arch"] == name]
        noise = [r for r in mine if r["method"].startswith("checkpoint + noise")]
        ax.plot([r["distance"] for r in noise], [r["acc_median"] for r in noise], "o-", c="grey",
                label="checkpoint + noise")
        others = [r for r in mine if not r["method"].startswith("checkpoint + noise")]
        for k, r in enumerate(others):
            ax.scatter(r["distance"], r["acc_median"], c=f"C{k}", label=r["method"], zorder=3)
        ax.set_title(name, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("aligned distance to nearest checkpoint")
        ax.legend(fontsize=5)
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo-root", default="zoos", help="folder of the zoos (built there when missing)")
    p.add_argument("--zoos", default=",".join(ZOOS), help=f"comma-separated, from {', '.join(ZOOS)}")
    p.add_argument("--archs", default="", help="comma-separated name prefixes to keep (e.g. 'cnn d2,vit'); "
                                               "default: every architecture")
    p.add_argument("--epochs", type=int, default=15, help="training epochs of every zoo run")
    p.add_argument("--generators", default="flat,pca", help="comma-separated: flat, pca, gmn")
    p.add_argument("--components", type=int, default=24, help="PCA latent size of the pca generator")
    p.add_argument("--gen-epochs", type=int, default=40, help="generator epochs (50 optimiser steps each)")
    p.add_argument("--gen-hidden", type=int, default=512)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="Heun steps per sample")
    p.add_argument("--finetune-models", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/generation")
    args, out = parse_with_out(p)
    kinds = args.generators.split(",")
    rows, tunes = [], []
    for name in args.zoos.split(","):
        preset, runs = ZOOS[name]
        ds = open_zoo(Path(args.zoo_root), preset, runs, args.epochs)
        data = datasets.load("digits")
        for key in sorted(set(ds.arch_keys), key=arch_name):
            if args.archs and not any(arch_name(key).startswith(a) for a in args.archs.split(",")):
                continue
            arch = Architecture(ds, key, data)
            n = min(args.samples, len(arch.index))
            mine = [evaluate(arch, "training checkpoints", arch.values[:n], arch.buffers[:n], exclude_self=True,
                             fit_s=arch.align_s, sample_s=0.0)]
            generated = {}
            for kind in tqdm(kinds, desc=arch.name, unit="generator"):
                got, generated[kind] = generator_rows(arch, kind, args, out)
                mine += got
            ref = arch.values[: args.samples]
            for alpha in NOISE:
                mine.append(evaluate(arch, f"checkpoint + noise {alpha}",
                                     with_noise(arch.template, ref, alpha, seed=args.seed), arch.buffers[: len(ref)]))
            tunes.append(finetune(arch, generated[kinds[0]], args))
            rows += mine
            print(table(mine, tunes[-1:]), flush=True)
    text = (table(rows, tunes) + f"\n\ngenerators: {kinds} ({args.gen_epochs} epochs of 50 steps, batch 64, hidden "
            f"{args.gen_hidden}; pca: {args.components} components); {args.samples} samples of {args.steps} "
            "Heun steps; good: share of models reaching 90% of the checkpoints' median accuracy; distance: to the "
            "nearest checkpoint in the canonical frame, aligned pairwise (an upper bound of the nearest aligned "
            "distance; proven: share of rows where no other checkpoint's permutation-proof lower bound is below it); "
            "fit s of the training checkpoints: aligning them to one frame; fine-tuning from the first generator's "
            f"samples ({kinds[0]})")
    print(text)
    (out / "generation.txt").write_text(text + "\n")
    (out / "generation.json").write_text(json.dumps({"rows": rows, "finetune": tunes, "args": vars(args)}, indent=1))
    plot(rows, out / "generation.png")


if __name__ == "__main__":
    main()
