"""Learning curves of property prediction: test tau against the number of training checkpoints.

Every method runs on the same split per seed (grouped by run, as ``gmn bench property``); the
training part is cut to the first runs of a seeded shuffle until it holds at least N
checkpoints (validation and test parts stay whole), so a smaller training set is a subset of
every larger one. Metanetworks use ``gmn bench property``'s defaults; with ``--ensemble K`` each
is also fitted as a small ensemble (seeds seed..seed+K-1, the first the single model; predictions
averaged; method ``NAME xK``, its members' scores in the row). Rows are appended to
``learning_curve.jsonl`` as they finish (a killed run resumes); then the table (mean ± std over
seeds, and the mean paired difference to StatNN on the same test checkpoints) and a plot.

    python benchmarks/learning_curve.py --zoo gmn-bench/zoo-small-cnn-digits --sizes 80,160,320,all \\
        --methods statnn,gmn,pna --seeds 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from converters.io import atomic_write
from gmn.data import Split, ZooDataset, split_by_run
from gmn.tasks.property import MethodResult, TrainConfig, fit_metanetwork, fit_statnn

#: ``gmn bench property``'s metanetwork defaults (gmn/cli/train.py)
MAIN_JOB = {"epochs": 30, "lr": 3e-3, "hidden": 32, "layers": 3, "patience": 10, "normalise": True,
            "pool": "mean+attn", "probes": 16}


def cut(split: Split, run: torch.Tensor, size: int | None, seed: int) -> Split:
    """``split`` with its training part cut to whole runs, at least ``size`` checkpoints (None: all)."""
    if size is None or size >= len(split.train):
        return split
    runs = torch.unique(run[split.train])
    runs = runs[torch.randperm(len(runs), generator=torch.Generator().manual_seed(1000 + seed))]
    counts = torch.bincount(run[split.train], minlength=int(run.max()) + 1)[runs]
    keep = runs[: int((counts.cumsum(0) < size).sum()) + 1]
    return Split(split.train[torch.isin(run[split.train], keep)], split.val, split.test)


def fit_ensemble(data: ZooDataset, split: Split, kind: str, members: int,
                 seed: int) -> tuple[MethodResult, list[dict]]:
    """``members`` metanetworks of ``kind`` seeded ``seed .. seed+members-1``: their averaged
    test predictions, and each member's scores."""
    fits = [fit_metanetwork(data, split, kind, TrainConfig(**MAIN_JOB, seed=seed + k), progress=False)
            for k in range(members)]
    mean = MethodResult(f"{kind} x{members}", np.mean([f.pred for f in fits], 0), fits[0].true, fits[0].targets,
                        sum(f.seconds for f in fits))
    return mean, [f.scores for f in fits]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _size(text: str) -> int | None:
    return None if text == "all" else int(text)


def format_table(rows: list[dict], target: str, title: str) -> str:
    stat = {(r["size"], r["seed"]): r["scores"][target]["tau"] for r in rows if r["method"] == "statnn"}
    head = f"{'method':<8}{'train ckpts':>12}{'seeds':>6}{target + ' tau':>18}{'- statnn':>11}{'s/seed':>8}"
    lines = [title, head, "-" * len(head)]
    for method in dict.fromkeys(r["method"] for r in rows):
        for size in dict.fromkeys(r["size"] for r in rows):
            mine = [r for r in rows if r["method"] == method and r["size"] == size]
            if not mine:
                continue
            taus = [r["scores"][target]["tau"] for r in mine]
            diffs = [r["scores"][target]["tau"] - stat[(size, r["seed"])] for r in mine if (size, r["seed"]) in stat]
            spread = f"{np.mean(taus):.3f}±{np.std(taus, ddof=1) if len(taus) > 1 else 0:.3f}"
            count, diff = int(np.mean([r["train"] for r in mine])), np.mean(diffs) if diffs else float("nan")
            lines.append(f"{method:<8}{count:>12}{len(mine):>6}{spread:>18}{diff:>+11.3f}"
                         f"{np.mean([r['seconds'] for r in mine]):>8.0f}")
    return "\n".join(lines)


def plot(rows: list[dict], target: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        by_size: dict = {}
        for r in rows:
            if r["method"] == method:
                by_size.setdefault(r["size"], []).append((r["train"], r["scores"][target]["tau"]))
        points = sorted((np.mean([t for t, _ in v]), np.mean([s for _, s in v]),
                         np.std([s for _, s in v], ddof=1) if len(v) > 1 else 0.0) for v in by_size.values())
        x, y, err = map(np.array, zip(*points))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ticks = sorted({r["train"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training checkpoints")
    ax.set_ylabel(f"{target} Kendall tau (test)")
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", required=True)
    p.add_argument("--targets", default="test_acc,gap")
    p.add_argument("--sizes", default="80,160,320,all", help="training checkpoints per point (all: the whole part)")
    p.add_argument("--methods", default="statnn,gmn,pna")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--ensemble", type=int, default=1, help="metanetworks per ensemble (1: single models)")
    p.add_argument("--out", default="benchmarks/results/property")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "learning_curve.jsonl"
    targets = tuple(args.targets.split(","))
    data = ZooDataset(args.zoo, targets, progress=False)
    sizes = [_size(s) for s in args.sizes.split(",")]
    for seed in range(args.seed, args.seed + args.seeds):
        full = split_by_run(data.run, data.family, seed=seed)
        for size in sizes:
            split = cut(full, data.run, size, seed)
            for method in args.methods.split(","):
                name = method if method == "statnn" or args.ensemble == 1 else f"{method} x{args.ensemble}"
                if any(r["method"] == name and r["size"] == (size or "all") and r["seed"] == seed
                       for r in _rows(log)):
                    continue
                members = None
                if method == "statnn":
                    result = fit_statnn(data, split, seed)
                elif args.ensemble > 1:
                    result, members = fit_ensemble(data, split, method, args.ensemble, seed)
                else:
                    result = fit_metanetwork(data, split, method, TrainConfig(**MAIN_JOB, seed=seed), progress=False)
                row = {"method": name, "size": size or "all", "train": len(split.train), "seed": seed,
                       "seconds": result.seconds, "epochs": len(result.history), "scores": result.scores}
                if members is not None:
                    row["member_scores"] = members
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("method", "size", "train", "seed")}
                                 | {t: round(s["tau"], 3) for t, s in result.scores.items()}), flush=True)
    rows = _rows(log)
    title = (f"{len(data)} checkpoints ({Path(args.zoo).name}); val {len(full.val)}, test {len(full.test)} per seed; "
             f"metanetworks: {json.dumps(MAIN_JOB)}")
    command = "python benchmarks/learning_curve.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table = "\n\n".join(format_table(rows, t, title) for t in targets) + f"\n\ncommand: {command}"
    atomic_write(out / "learning_curve.txt", lambda tmp: Path(tmp).write_text(table + "\n"))
    atomic_write(out / "learning_curve.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"zoo": args.zoo, "command": command, "config": MAIN_JOB, "rows": rows}, indent=1)))
    plot(rows, targets[0], out / "learning_curve.png", title.split(";")[0])
    print(table)


if __name__ == "__main__":
    main()
