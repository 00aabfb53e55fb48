"""The property-prediction benchmark: zoo -> data set -> every method on one split ->
table, JSON and a plot of predicted against true values."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from converters.files import atomic_write

from ..choices import METHODS
from ..data import Split, ZooDataset, split_by_run
from ..zoo import build_zoo
from .nfn_baseline import MODES as NFN_METHODS
from .nfn_baseline import fit_nfn
from .probe_baseline import fit_probe
from .property import MethodResult, TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn, json_safe


def run_methods(dataset: ZooDataset, methods: tuple[str, ...], config: TrainConfig, test_families: tuple[str, ...] = (),
                out_dir: Path | None = None, progress: bool = True,
                split: Split | str | Path | None = None) -> tuple[list[MethodResult], dict[str, str]]:
    """Every method on one split grouped by run (``config.seed`` draws the split and the
    initialisation), or on ``split`` (a :class:`Split`, or a published split file: see
    :func:`gmn.zoo.formats.split_by_index_file`; ``config.seed`` then draws the initialisation
    only); returns results and the methods skipped (why)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    split = _fixed_split(dataset, split, test_families)
    if split is None:
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
        elif method in NFN_METHODS or method == "probe":
            try:
                results.append(fit_nfn(dataset, split, method, config, out_dir, progress) if method in NFN_METHODS
                               else fit_probe(dataset, split, config, out_dir, progress))
            except ValueError as err:  # no nfn package, no MLP/CNN layout, inputs that are not real
                skipped[method] = str(err)
        else:
            results.append(fit_metanetwork(dataset, split, method, config, out_dir, progress))
    return results, skipped


def _fixed_split(dataset: ZooDataset, split: Split | str | Path | None, test_families: tuple[str, ...]) -> Split | None:
    """``split`` as member indices (a split file read against ``dataset``), or None for a split by run."""
    if split is None:
        return None
    if test_families:
        raise ValueError("a given split and test_families both choose the test part: give one")
    if isinstance(split, Split):
        return split
    from ..zoo.formats import split_by_index_file

    return split_by_index_file(dataset, split)


def _spread(values: list[float], signed: bool = False) -> str:
    if not np.isfinite(values).all():
        return "n/a"  # an undefined tau (constant predictions) is no score, and no 0
    mean = f"{float(np.mean(values)):{'+' if signed else ''}.3f}"
    return mean if len(values) == 1 else f"{mean}±{float(np.std(values, ddof=1)):.3f}"


#: fewer test checkpoints than this and a Kendall tau says little: its standard error (no
#: correlation) is sqrt(2(2n+5) / (9n(n-1))), 0.13 at 30, 0.64 at 3 (where tau can only be
#: -1, -1/3, 1/3 or 1)
MIN_TEST = 30


def tau_standard_error(n: int) -> float:
    """Kendall tau's standard error for ``n`` pairs of uncorrelated values."""
    return float(np.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))) if n > 1 else float("inf")


def small_test_warning(n: int) -> str | None:
    """One line when ``n`` test checkpoints are too few for the scores to mean much."""
    if n >= MIN_TEST:
        return None
    return (f"warning: {n} test checkpoint{'s' if n != 1 else ''} per seed: Kendall tau's standard error is about "
            f"{tau_standard_error(n):.2f} (sqrt(2(2n+5)/(9n(n-1)))), so scores below {MIN_TEST} test checkpoints "
            f"(error {tau_standard_error(MIN_TEST):.2f}) are mostly noise; use a bigger zoo")


def _counts(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def format_table(runs: list[list[MethodResult]], skipped: dict[str, str] | None = None, title: str = "") -> str:
    """One row per method: each score as mean ± standard deviation over the seeds' runs
    (``runs[seed][method]``), with StatNN among the methods each tau's paired difference to
    StatNN's on the same test checkpoints (mean ± std over seeds), the test checkpoints per
    seed, and the mean seconds per seed; below :data:`MIN_TEST` test checkpoints a warning
    line says how little the scores mean."""
    targets = runs[0][0].targets
    names = [r.method for r in runs[0]]
    stat = names.index("statnn") if "statnn" in names else None
    diff_head = f"{'- statnn':>14}" if stat is not None else ""
    head = (f"{'method':<10}" + "".join(f"{t + ' tau':>20}{diff_head}{'R2':>14}{'MAE':>16}" for t in targets)
            + f"{'n test':>8}{'s/seed':>9}")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for i, first in enumerate(runs[0]):
        per_seed = [seed[i] for seed in runs]
        cells = ""
        for t in targets:
            cells += f"{_spread([r.scores[t]['tau'] for r in per_seed]):>20}"
            if stat is not None:
                diffs = [seed[i].scores[t]["tau"] - seed[stat].scores[t]["tau"] for seed in runs]
                cells += f"{_spread(diffs, signed=True):>14}"
            cells += (f"{_spread([r.scores[t]['r2'] for r in per_seed]):>14}"
                      f"{_spread([r.scores[t]['mae'] for r in per_seed]):>16}")
        count = _counts([len(r.true) for r in per_seed])
        lines.append(f"{first.method:<10}{cells}{count:>8}{np.mean([r.seconds for r in per_seed]):>9.1f}")
    for method, why in (skipped or {}).items():
        lines.append(f"{method:<10}  skipped: {why}")
    warning = small_test_warning(min(len(r.true) for seed in runs for r in seed))
    return "\n".join(lines + ([warning] if warning else []))


def plot(runs: list[list[MethodResult]], path: Path, title: str = "", first_seed: int = 0) -> None:
    """Predicted against true values (PNG): one row per target, one panel per method, every
    seed's test checkpoints in its own colour (``runs[seed][method]``), each seed's tau and
    test count in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, targets = runs[0], runs[0][0].targets
    fig, axes = plt.subplots(len(targets), len(methods), figsize=(3.4 * len(methods), 3.3 * len(targets)),
                             squeeze=False)
    for row, target in enumerate(targets):
        for col, first in enumerate(methods):
            ax, per_seed = axes[row][col], [seed[col] for seed in runs]
            for s, r in enumerate(per_seed):
                ax.scatter(r.true[:, row], r.pred[:, row], s=8, alpha=0.6,
                           label=f"seed {first_seed + s}: tau {r.scores[target]['tau']:.2f}, n {len(r.true)}")
            values = np.concatenate([np.concatenate([r.true[:, row], r.pred[:, row]]) for r in per_seed])
            low, high = float(values.min()), float(values.max())
            ax.plot([low, high], [low, high], "k--", lw=0.8)
            ax.set_title(f"{first.method}: tau {_spread([r.scores[target]['tau'] for r in per_seed])}", fontsize=9)
            ax.set_xlabel(f"true {target}")
            ax.set_ylabel(f"predicted {target}")
            ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def property_benchmark(out: str | Path = "gmn-bench", preset: str = "small-cnn", runs: int = 100,
                       dataset: str = "digits", epochs: int = 8, workers: int | None = None,
                       backend: str = "process", zoo: str | Path | None = None,
                       methods: tuple[str, ...] = ("statnn", "mlp", "pna", "gmn"),
                       targets: tuple[str, ...] = ("test_acc", "gap"), test_families: tuple[str, ...] = (),
                       config: TrainConfig | None = None, progress: bool = True, seeds: int = 1,
                       split: Split | str | Path | None = None, allow_modules: tuple[str, ...] = ()) -> str:
    """Build (or resume) the zoo, run every method with ``seeds`` seeds (``config.seed``,
    ``config.seed + 1``, ...: each its own split and initialisation), write
    ``property.{txt,json,png}`` to ``out`` and return the table (mean ± std over seeds).
    ``zoo`` uses an existing zoo folder instead of building; ``split`` (with ``zoo``: a
    :class:`Split` or a published split file, ``splits/<name>.json``) is every seed's split
    (the seeds then vary the initialisation only). ``allow_modules``: Python ``module:attr``
    architectures the zoo's catalogue may name (see :class:`~gmn.zoo.Zoo`)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:  # before the zoo is built
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if split is not None and (zoo is None or test_families):
        raise ValueError("a given split needs an existing zoo (zoo=...) and no test_families")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config or TrainConfig()
    if zoo is None:
        zoo = out / f"zoo-{preset}-{dataset}"
        build_zoo(zoo, preset, runs, dataset, epochs, workers=workers, backend=backend, progress=progress).close()
    data = ZooDataset(zoo, targets, progress=progress, allow_modules=allow_modules)
    fixed = _fixed_split(data, split, test_families)  # read once, checked before any method runs
    title = (f"{len(data)} checkpoints of {len(set(data.run.tolist()))} runs, {len(set(data.family))} families "
             f"({Path(zoo).name}), {seeds} seed{'s' if seeds > 1 else ''} "
             + ("(split and initialisation)" if fixed is None else
                f"(initialisation; split {split if isinstance(split, (str, Path)) else 'given'})")
             + (f", test families held out: {', '.join(test_families)}" if test_families else ""))
    per_seed, skipped = [], {}
    for seed in range(config.seed, config.seed + seeds):
        seeded = replace(config, seed=seed)
        # training state resumes only for the same zoo, targets, split and settings
        key = json.dumps([str(Path(zoo).resolve()), len(data), targets, test_families, seeded.__dict__]
                         + ([] if fixed is None else [[t.tolist() for t in (fixed.train, fixed.val, fixed.test)]]),
                         sort_keys=True)
        state_dir = out / "checkpoints" / hashlib.sha1(key.encode()).hexdigest()[:12]
        results, skipped = run_methods(data, methods, seeded, test_families, state_dir, progress, split=fixed)
        per_seed.append(results)
    table = format_table(per_seed, skipped, title)
    report = {"zoo": str(zoo), "members": len(data), "config": config.__dict__, "seeds": seeds, "skipped": skipped,
              "split": "by run" if fixed is None else str(split) if isinstance(split, (str, Path)) else "given",
              "results": [{"method": r.method, "seed": config.seed + i, "scores": r.scores, "seconds": r.seconds,
                           "test_checkpoints": len(r.true),
                           "history": r.history, "pred": np.asarray(r.pred).tolist(),
                           "true": np.asarray(r.true).tolist()} for i, results in enumerate(per_seed) for r in results]}
    return write_report(out, "property", table, report, per_seed, title, config.seed)


def write_report(out: Path, name: str, table: str, report: dict, runs: list[list[MethodResult]], title: str,
                 first_seed: int) -> str:
    """``<name>.txt`` (the table), ``<name>.json`` (``report``, NaN as null) and ``<name>.png``
    in ``out``, each atomically; returns the table (with a line where no plot could be drawn)."""
    atomic_write(out / f"{name}.txt", lambda tmp: Path(tmp).write_text(table + "\n"))
    atomic_write(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(json_safe(report), indent=1)))
    try:
        plot(runs, out / f"{name}.png", title=title, first_seed=first_seed)
    except ImportError:
        table += "\n(no plot: pip install matplotlib)"
    return table
