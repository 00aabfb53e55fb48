"""Property prediction on a LoRA zoo: every method on the raw factors and on the GL(r) canonical ones.

An adapter's raw factors carry an arbitrary invertible ``M`` per module (``(B M^-1, M A)`` is the same
adapter); ``gmn.lora.canonical_values`` removes it. The table puts side by side, on one split per
seed: StatNN (weight statistics), a flat MLP and the metanetworks on raw and on canonical adapters.
``gmn bench property`` runs it on a LoRA zoo; ``benchmarks/lora_property.py`` is its published run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..choices import KINDS
from .property import MethodResult, TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn

#: what a LoRA zoo's table can hold: StatNN, and the flat MLP and the metanetworks twice (raw, canonical)
LORA_METHODS = ("statnn", "mlp", *KINDS)


def lora_rows(methods: tuple[str, ...]) -> list[str]:
    """The table's rows for ``methods``: ``statnn``, and ``<method>-raw`` and ``<method>-canon`` for
    the others; a method that reads model checkpoints only is refused in one line."""
    wrong = [m for m in methods if m not in LORA_METHODS]
    if wrong:
        raise ValueError(f"method {wrong[0]!r} does not read adapters; a LoRA zoo takes {', '.join(LORA_METHODS)}")
    return [row for m in methods for row in ((m,) if m == "statnn" else (f"{m}-raw", f"{m}-canon"))]


def lora_property_runs(zoo: str | Path, methods: tuple[str, ...] = ("statnn", "mlp", "gmn"),
                       targets: tuple[str, ...] | None = None, config: TrainConfig | None = None, seeds: int = 3,
                       progress: bool = False) -> tuple[list[list[MethodResult]], object, dict[str, str]]:
    """Every row of :func:`lora_rows` on the zoo's adapters (``targets``: default the zoo's own), for
    ``seeds`` seeds from ``config.seed`` (each its own split by adapter and initialisation; one split
    for every method of a seed). Returns ``runs[seed][row]``, the raw dataset and the rows skipped (why:
    the flat MLP needs one layout, and adapters of several ranks have several)."""
    from ..data.splits import split_by_run
    from ..zoo.lora import AdapterDataset

    rows = lora_rows(methods)
    config = config or TrainConfig()
    if config.probes:
        raise ValueError(f"probes ({config.probes}) run the model; an adapter is read weights only: use 0 probes")
    raw = AdapterDataset(zoo, targets)
    canonical = AdapterDataset(zoo, raw.target_names, canonical=True)
    skipped = {}
    if len(raw.templates) > 1:
        why = f"the flat MLP needs one parameter layout; these adapters have {len(raw.templates)} (ranks or modules)"
        skipped = {row: why for row in rows if row.startswith("mlp-")}
    runs = []
    for seed in range(config.seed, config.seed + seeds):
        split = split_by_run(raw.run, raw.family, seed=seed)
        seeded = replace(config, seed=seed)
        results = []
        for row in (r for r in rows if r not in skipped):
            result = _fit(row, raw, canonical, split, seeded)
            result.method = row
            if progress:
                print(f"seed {seed} {row}: " + ", ".join(f"{t} tau {s['tau']:.3f}" for t, s in result.scores.items()),
                      flush=True)
            results.append(result)
        runs.append(results)
    return runs, raw, skipped


def _fit(row: str, raw, canonical, split, config: TrainConfig) -> MethodResult:
    if row == "statnn":  # on the factors as trained: the baseline a user without the canonical form has
        return fit_statnn(raw, split, config.seed)
    method, frame = row.rsplit("-", 1)
    data = raw if frame == "raw" else canonical
    if method == "mlp":
        return fit_flat_mlp(data, split, config, progress=False)
    return fit_metanetwork(data, split, method, config, progress=False)


def lora_property_benchmark(zoo: str | Path, out: str | Path, methods: tuple[str, ...] = ("statnn", "mlp", "gmn"),
                            targets: tuple[str, ...] | None = None, config: TrainConfig | None = None,
                            seeds: int = 3, progress: bool = True, name: str = "property",
                            title: str = "") -> str:
    """:func:`lora_property_runs`, written to ``out`` as ``<name>.{txt,json,png}`` (each atomically);
    returns the table (mean ± std over seeds)."""
    from .benchmark import format_table, write_report

    config = config or TrainConfig()
    runs, raw, skipped = lora_property_runs(zoo, methods, targets, config, seeds, progress)
    layouts = len(raw.templates)
    title = title or (f"LoRA zoo {Path(zoo).name}: {len(raw)} adapters of one base ({layouts} layout"
                      f"{'s' if layouts > 1 else ''}), {seeds} seed{'s' if seeds > 1 else ''} (split and "
                      f"initialisation); -raw: factors as trained, -canon: GL(r) canonical (balanced SVD)")
    table = format_table(runs, skipped, title)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = [{"method": r.method, "seed": config.seed + i, "scores": r.scores, "seconds": r.seconds,
                "test_adapters": len(r.true), "pred": r.pred.tolist(), "true": r.true.tolist()}
               for i, seed in enumerate(runs) for r in seed]
    report = {"zoo": str(zoo), "adapters": len(raw), "targets": list(raw.target_names), "config": config.__dict__,
              "seeds": seeds, "skipped": skipped, "results": results}
    return write_report(out, name, table, report, runs, title, config.seed)


__all__ = ["LORA_METHODS", "lora_property_benchmark", "lora_property_runs", "lora_rows"]
