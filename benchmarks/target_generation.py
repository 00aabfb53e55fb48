"""Whole models generated for a requested accuracy, inside and beyond the training range (issue 38, item 4).

    python benchmarks/target_generation.py --zoo ZOO [--quantile 0.8] [--samples 16] [--guidance 1,2,4]

On the zoo's most common architecture (canonicalised into one frame), the checkpoints whose test
accuracy is above the ``--quantile`` quantile are held out: the generator never sees a model that
good. Of the rest, ``--interpolation`` checkpoints are held out too. The accuracy-conditioned
canonical flow (``gmn generate --target``'s generator) is trained on what is left; then, for each
held-out checkpoint's accuracy as the requested target, ``--samples`` models are generated
(classifier-free guidance ``--guidance``) and their test accuracy measured.

Reported per requested target: the generated models' median accuracy, the median absolute gap
to the request, the share within 0.02 of it, and novelty (relative distance to the nearest
training checkpoint in the frame); beside it, what a user has without a generator: retrieval (the
training checkpoint whose accuracy is nearest the request) and the best training checkpoint.
Writes ``target.{txt,json,png}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from generation import Architecture, _as_rows

from gmn.data import ZooDataset
from gmn.tasks.canonical_generation import fit_canonical_generator
from gmn.tasks.generation import accuracies, nearest_aligned
from gmn.tasks.property import TrainConfig
from gmn.zoo import datasets

WITHIN = 0.02


def held_out(acc: torch.Tensor, quantile: float, interpolation: int, seed: int) -> dict[str, torch.Tensor]:
    """Indices (into ``acc``) of the training checkpoints and of the two held-out sets: every
    checkpoint above the quantile (extrapolation) and ``interpolation`` drawn from the rest."""
    top = float(acc.quantile(quantile))
    above = (acc > top).nonzero().flatten()
    rest = (acc <= top).nonzero().flatten()
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    return {"train": rest[interpolation:], "interpolation": rest[:interpolation], "extrapolation": above}


def _targets(acc: torch.Tensor, members: torch.Tensor, count: int) -> list[float]:
    """``count`` requested accuracies spread over the held-out members' (their quantiles)."""
    values = acc[members].sort().values
    picks = torch.linspace(0, len(values) - 1, min(count, len(values))).round().long()
    return [float(values[i]) for i in picks]


def run(args) -> dict:
    ds = ZooDataset(args.zoo, ("test_acc",))
    key = Counter(ds.arch_keys).most_common(1)[0][0]
    data = datasets.load(ds.members[ds.arch_keys.index(key)]["dataset"])
    arch = Architecture(ds, key, data)
    parts = held_out(arch.acc, args.quantile, args.interpolation, args.seed)
    train = parts["train"]
    config = TrainConfig(epochs=args.gen_epochs, patience=args.gen_epochs, lr=1e-3, batch_size=64,
                         hidden=args.gen_hidden, layers=3, weight_decay=0.0, seed=args.seed)
    start = time.perf_counter()
    gen = fit_canonical_generator([arch.graphs[i] for i in train], arch.acc[train], config, aligned=True,
                                  progress=True)
    fit_s = time.perf_counter() - start
    train_acc = arch.acc[train]
    frame = arch.values[train]
    rows = []
    for where in ("interpolation", "extrapolation"):
        for target in _targets(arch.acc, parts[where], args.targets):
            retrieved = float(train_acc[(train_acc - target).abs().argmin()])
            base = {"held_out": where, "target": target, "train_max": float(train_acc.max())}
            rows.append({**base, "method": "retrieval", "acc_median": retrieved, "gap_median": abs(retrieved - target),
                         "within": float(abs(retrieved - target) <= WITHIN), "distance": 0.0})
            for guidance in args.guidance:
                graphs = gen.sample(args.samples, steps=args.steps, target=target, guidance=guidance, seed=args.seed)
                values, _ = _as_rows(graphs)
                acc = accuracies(arch.module, arch.template, values, data.x_test, data.y_test)
                gap = (acc - target).abs()
                distance = nearest_aligned(arch.template, values, frame, 1, in_frame=True, budget=1).distance
                rows.append({**base, "method": f"generated, guidance {guidance:g}", "acc_median": float(acc.median()),
                             "acc_max": float(acc.max()), "gap_median": float(gap.median()),
                             "within": float((gap <= WITHIN).float().mean()),
                             "distance": float(distance.median())})
            print(format_rows(rows[-1 - len(args.guidance):], header=False), flush=True)
    return {"arch": arch.name, "zoo": str(args.zoo), "checkpoints": len(arch.index), "train": len(train),
            "train_range": [float(train_acc.min()), float(train_acc.max())], "quantile": args.quantile,
            "held_out_max": float(arch.acc.max()), "fit_s": fit_s, "samples": args.samples, "rows": rows,
            "command": "python " + " ".join(sys.argv)}


def format_rows(rows: list[dict], header: bool = True) -> str:
    head = f"{'held out':<14}{'target':>7}  {'method':<24}{'acc median':>11}{'|gap| median':>13}" \
           f"{'within 0.02':>12}{'distance':>9}"
    lines = [head] if header else []
    for r in rows:
        lines.append(f"{r['held_out']:<14}{r['target']:>7.3f}  {r['method']:<24}{r['acc_median']:>11.3f}"
                     f"{r['gap_median']:>13.3f}{r['within']:>12.2f}{r['distance']:>9.3f}")
    return "\n".join(lines)


def summary(report: dict) -> str:
    lines = []
    for where in ("interpolation", "extrapolation"):
        for method in dict.fromkeys(r["method"] for r in report["rows"]):
            rows = [r for r in report["rows"] if r["held_out"] == where and r["method"] == method]
            if rows:
                ratio = np.median([r["acc_median"] / r["target"] for r in rows])
                lines.append(f"{where:<14}{method:<26} median |gap| {np.median([r['gap_median'] for r in rows]):.3f}"
                             f"  within {WITHIN}: {np.mean([r['within'] for r in rows]):.2f}"
                             f"  accuracy reached / requested {ratio:.3f}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    lo, hi = report["train_range"]
    ax.axvspan(lo, hi, color="0.92", label="training checkpoints' accuracies")
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["method"] == method]
        ax.plot([r["target"] for r in rows], [r["acc_median"] for r in rows], "o", label=method, alpha=0.8)
    edge = [min(lo, 0.0), max(report["held_out_max"], 1.0)]
    ax.plot(edge, edge, "k--", lw=1, label="accuracy = request")
    ax.set_xlabel("requested test accuracy")
    ax.set_ylabel("test accuracy reached (median of samples)")
    ax.set_title(f"{report['arch']}: generating for a requested accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", required=True, help="a classifier zoo of the built-in families (test_acc targets)")
    p.add_argument("--quantile", type=float, default=0.8, help="checkpoints above this accuracy quantile held out")
    p.add_argument("--interpolation", type=int, default=20, help="checkpoints held out inside the range")
    p.add_argument("--targets", type=int, default=5, help="requested accuracies per held-out set")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--guidance", default="1,2,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--gen-epochs", type=int, default=40)
    p.add_argument("--gen-hidden", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/generation")
    args = p.parse_args()
    args.guidance = [float(g) for g in args.guidance.split(",")]
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    text = (f"{report['arch']} ({report['checkpoints']} checkpoints; generator trained on {report['train']} with "
            f"accuracy {report['train_range'][0]:.3f}-{report['train_range'][1]:.3f}; best held out "
            f"{report['held_out_max']:.3f}; {report['samples']} samples per request; fit {report['fit_s']:.0f} s)\n"
            f"made by: {report['command']}\n\n{format_rows(report['rows'])}\n\n{summary(report)}\n")
    print(text)
    (out / "target.txt").write_text(text)
    (out / "target.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "target.png")


if __name__ == "__main__":
    main()
