"""Weight generation (issue 6): flow matching with a GMN velocity field, evaluated after Zeng
et al. 2025 ("Generalization or memorization?") on the ``generation`` zoo (small CNNs on
digits, six shapes; one shape held out of training).

    python benchmarks/generation.py --runs 300 --gen-epochs 150

Per architecture: accuracy of generated models against the training checkpoints; novelty as
the distance to the nearest training checkpoint after permutation alignment and as the highest
prediction agreement with one; the noise-added-checkpoint baseline at several noise levels in
the same table; steps of fine-tuning to the training checkpoints' median accuracy from
generated against random initialisations. Writes generation.{txt,json,png} to ``--out``.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from common import metanetwork_options, parse_with_out

from gmn.data import ZooDataset
from gmn.tasks.generation import (
    accuracies,
    fit_generator,
    fresh_initialisations,
    initial_values,
    nearest_aligned,
    prediction_similarity,
    steps_to_accuracy,
    with_noise,
)
from gmn.tasks.property import TrainConfig
from gmn.zoo import build_zoo, datasets

NOISE = (0.25, 0.5, 1.0, 1.5, 2.0)


def shape_of(key: str) -> tuple[int, int]:
    """(depth, width) of a zoo architecture key."""
    arch = json.loads(key)[0]
    return arch["depth"], arch["width"]


def _shape(key: str) -> str:
    return "cnn d{} w{}".format(*shape_of(key))


def generation_zoo(path: str, runs: int, epochs: int = 15) -> ZooDataset:
    """The ``generation`` preset zoo at ``path`` (built, or resumed where it stopped), opened."""
    build_zoo(path, preset="generation", runs=runs, epochs=epochs, checkpoint_epochs=(epochs,),
              workers=os.cpu_count()).close()
    return ZooDataset(path)


def evaluate_architecture(ds, gen, key, reference, data, args) -> list[dict]:
    template, module = ds.templates[key], ds.model(reference[0])[0]
    ref = torch.stack([ds.values[i] for i in reference])
    x, y = data.x_test, data.y_test
    rows = []

    def row(method: str, values: torch.Tensor, exclude_self: bool = False) -> dict:
        acc = accuracies(module, template, values, x, y)
        exclude = torch.arange(len(values)) if exclude_self else None  # a training checkpoint against the others
        dist = nearest_aligned(template, values, ref, 3, exclude)[0]
        sim = prediction_similarity(module, template, values, ref, x, exclude)
        out = {"arch": _shape(key), "method": method, "models": len(values), "acc_median": float(acc.median()),
               "acc_mean": float(acc.mean()), "acc_std": float(acc.std()), "distance": float(dist.median()),
               "similarity": float(sim.median())}
        rows.append(out)
        return out

    row("training checkpoints", ref[: args.samples], exclude_self=True)
    source = _source(args, module, template, args.samples, args.seed)
    row("generated", gen.sample(template, args.samples, steps=args.steps, seed=args.seed, source=source))
    high = float(ds.y[reference, 0].quantile(0.9))
    row(f"generated, acc={high:.2f}", gen.sample(template, args.samples, steps=args.steps, target=high,
                                               guidance=2.0, seed=args.seed, source=source))
    for alpha in NOISE:
        row(f"checkpoint + noise {alpha}", with_noise(template, ref[: args.samples], alpha, seed=args.seed))
    return rows


def _source(args, module, template, count: int, seed: int):
    """Starting values of sampling: Gaussian noise, or fresh initialisations for ``--source init``."""
    return None if args.source == "gaussian" else fresh_initialisations(module, template, count, seed=1000 + seed)


def finetune(ds, gen, key, reference, data, args) -> dict:
    template, module = ds.templates[key], ds.model(reference[0])[0]
    target = float(ds.y[reference, 0].median())
    generated = gen.sample(template, args.finetune_models, steps=args.steps, seed=args.seed + 1,
                           source=_source(args, module, template, args.finetune_models, args.seed + 1))
    steps_gen = [steps_to_accuracy(module, template, v, data, target, max_steps=args.max_steps, seed=i)
                 for i, v in enumerate(generated)]
    steps_rand = [steps_to_accuracy(module, template, None, data, target, max_steps=args.max_steps, seed=i)
                  for i in range(args.finetune_models)]
    return {"arch": _shape(key), "target_acc": target, "steps_generated": steps_gen, "steps_random": steps_rand,
            "median_generated": float(np.median(steps_gen)), "median_random": float(np.median(steps_rand))}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs), 3.2), sharey=True)
    for ax, arch in zip(np.atleast_1d(axes), archs):
        mine = [r for r in rows if r["arch"] == arch]
        noise = [r for r in mine if r["method"].startswith("checkpoint + noise")]
        ax.plot([r["distance"] for r in noise], [r["acc_median"] for r in noise], "o-", c="grey", label="ckpt + noise")
        for r, c in zip([r for r in mine if not r["method"].startswith("checkpoint +")], ("k", "C0", "C1")):
            ax.scatter(r["distance"], r["acc_median"], c=c, label=r["method"], zorder=3)
        ax.set_title(arch, fontsize=9)
        ax.set_xlabel("aligned distance to nearest training ckpt")
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (median)")
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: list[dict], tunes: list[dict]) -> str:
    lines = [f"{'architecture':<14}{'method':<26}{'acc median':>11}{'acc mean±std':>15}{'distance':>10}"
             f"{'similarity':>11}"]
    for r in rows:
        lines.append(f"{r['arch']:<14}{r['method']:<26}{r['acc_median']:>11.3f}"
                     f"{r['acc_mean']:>9.3f}±{r['acc_std']:.3f}{r['distance']:>10.3f}{r['similarity']:>11.3f}")
    lines.append("")
    lines.append(f"{'architecture':<14}{'target acc':>11}{'steps from generated':>22}{'steps from random':>19}")
    for t in tunes:
        lines.append(f"{t['arch']:<14}{t['target_acc']:>11.3f}{t['median_generated']:>22.0f}{t['median_random']:>19.0f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", default="zoos/generation")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--held-out", default="3,12", help="depth,width of the shape left out of training")
    p.add_argument("--source", default="gaussian", choices=("gaussian", "init"),
                   help="flow from Gaussian noise, or from each run's initial weights (paired) to its trained ones")
    p.add_argument("--gen-epochs", type=int, default=150)
    metanetwork_options(p, lr=3e-3)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--steps", type=int, default=20, help="Heun steps per sample")
    p.add_argument("--finetune-models", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/generation")
    args, out = parse_with_out(p)
    ds = generation_zoo(args.zoo, args.runs, args.epochs)
    keys = sorted(set(ds.arch_keys))
    held = [k for k in keys if shape_of(k) == tuple(int(v) for v in args.held_out.split(","))]
    seen = torch.tensor([i for i, k in enumerate(ds.arch_keys) if k not in held])
    perm = seen[torch.randperm(len(seen), generator=torch.Generator().manual_seed(args.seed))]
    val, train = perm[: max(1, len(perm) // 10)], perm[max(1, len(perm) // 10):]
    config = TrainConfig(epochs=args.gen_epochs, lr=args.lr, batch_size=16, hidden=args.hidden, layers=args.layers,
                         patience=args.gen_epochs, seed=args.seed, device=args.device)
    sources = initial_values(ds) if args.source == "init" else None
    gen = fit_generator(ds, train, val, config, conditioned=True, sources=sources, out_dir=out / "state").cpu()
    data = datasets.load("digits")
    rows, tunes = [], []
    for key in keys:
        # seen shapes: compare with the checkpoints the generator trained on; held out: with all of its shape
        reference = [i for i in (train.tolist() if key not in held else range(len(ds))) if ds.arch_keys[i] == key]
        arch_rows = evaluate_architecture(ds, gen, key, reference, data, args)
        for r in arch_rows:
            r["seen"] = key not in held
        rows += arch_rows
        tunes.append({**finetune(ds, gen, key, reference, data, args), "seen": key not in held})
        print(table(arch_rows, tunes[-1:]), flush=True)
    text = (table(rows, tunes) + f"\n\nheld out of training: {[_shape(k) for k in held]}; generator trained "
            f"{len(gen.history)} epochs on {len(train)} checkpoints in {gen.fit_seconds:.0f} s, source {args.source}")
    print(text)
    (out / "generation.txt").write_text(text + "\n")
    (out / "generation.json").write_text(json.dumps({"rows": rows, "finetune": tunes, "args": vars(args),
                                                     "history": gen.history}, indent=1))
    plot(rows, out / "generation.png")


if __name__ == "__main__":
    main()
