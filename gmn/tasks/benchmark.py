"""The property-prediction benchmark: zoo -> data set -> every method on one split ->
table, JSON and a plot of predicted against true values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..data import ZooDataset, split_by_run
from ..zoo import build_zoo
from .property import METANETWORKS, MethodResult, TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn


def run_methods(dataset: ZooDataset, methods: tuple[str, ...], config: TrainConfig, test_families: tuple[str, ...] = (),
                out_dir: Path | None = None, progress: bool = True) -> tuple[list[MethodResult], dict[str, str]]:
    """Every method on one split grouped by run; returns results and the methods skipped (why)."""
    split = split_by_run(dataset.run, dataset.family, seed=config.seed, test_families=test_families)
    results, skipped = [], {}
    for method in methods:
        if method == "statnn":
            results.append(fit_statnn(dataset, split, config.seed))
        elif method == "mlp":
            try:
                results.append(fit_flat_mlp(dataset, split, config, out_dir, progress))
            except ValueError as err:
                skipped["mlp"] = str(err)
        elif method in METANETWORKS:
            results.append(fit_metanetwork(dataset, split, method, config, out_dir, progress))
        else:
            raise ValueError(f"unknown method {method!r}")
    return results, skipped


def format_table(results: list[MethodResult], skipped: dict[str, str] | None = None, title: str = "") -> str:
    targets = results[0].targets
    head = f"{'method':<10}" + "".join(f"{t + ' tau':>14}{'R2':>8}{'MAE':>8}" for t in targets) + f"{'seconds':>9}"
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{s['tau']:>14.3f}{s['r2']:>8.3f}{s['mae']:>8.4f}" for s in r.scores.values())
        lines.append(f"{r.method:<10}{cells}{r.seconds:>9.1f}")
    for method, why in (skipped or {}).items():
        lines.append(f"{method:<10}  skipped: {why}")
    return "\n".join(lines)


def plot(results: list[MethodResult], path: Path, target: int = 0, title: str = "") -> None:
    """Predicted against true values of one target, one panel per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        true, pred = r.true[:, target], r.pred[:, target]
        ax.scatter(true, pred, s=6, alpha=0.6)
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        ax.set_title(f"{r.method}  tau={r.scores[r.targets[target]]['tau']:.3f}", fontsize=9)
        ax.set_xlabel(f"true {r.targets[target]}")
    axes[0][0].set_ylabel("predicted")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def property_benchmark(out: str | Path = "gmn-bench", preset: str = "small-cnn", runs: int = 100,
                       dataset: str = "digits", epochs: int = 8, workers: int | None = None,
                       backend: str = "process", zoo: str | Path | None = None,
                       methods: tuple[str, ...] = ("statnn", "mlp", "pna", "gmn"),
                       targets: tuple[str, ...] = ("test_acc", "gap"), test_families: tuple[str, ...] = (),
                       config: TrainConfig | None = None, progress: bool = True) -> str:
    """Build (or resume) the zoo, run every method, write ``property.{txt,json,png}`` to
    ``out`` and return the table. ``zoo`` uses an existing zoo folder instead of building."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config or TrainConfig()
    if zoo is None:
        zoo = out / f"zoo-{preset}-{dataset}"
        build_zoo(zoo, preset, runs, dataset, epochs, workers=workers, backend=backend, progress=progress).close()
    data = ZooDataset(zoo, targets, progress=progress)
    title = (f"{len(data)} checkpoints of {len(set(data.run.tolist()))} runs, {len(set(data.family))} families "
             f"({Path(zoo).name})" + (f", test families held out: {', '.join(test_families)}" if test_families else ""))
    # training state resumes only for the same zoo, targets, split and settings
    key = json.dumps([str(Path(zoo).resolve()), len(data), targets, test_families, config.__dict__], sort_keys=True)
    state_dir = out / "checkpoints" / hashlib.sha1(key.encode()).hexdigest()[:12]
    results, skipped = run_methods(data, methods, config, test_families, state_dir, progress)
    table = format_table(results, skipped, title)
    (out / "property.txt").write_text(table + "\n")
    (out / "property.json").write_text(json.dumps({
        "zoo": str(zoo), "members": len(data), "config": config.__dict__, "skipped": skipped,
        "results": [{"method": r.method, "scores": r.scores, "seconds": r.seconds, "history": r.history,
                     "pred": np.asarray(r.pred).tolist(), "true": np.asarray(r.true).tolist()} for r in results],
    }, indent=1))
    try:
        plot(results, out / "property.png", title=title)
    except ImportError:
        table += "\n(no plot: pip install matplotlib)"
    return table
