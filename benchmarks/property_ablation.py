"""Ablation of the graph metanetwork's recipe on one zoo, side by side with StatNN.

Every variant is the main job's GMN with some settings changed; every variant and StatNN
run on the same splits (one per seed), so each variant's tau is also reported as a paired
difference to StatNN on the same test checkpoints. Rows are appended to ``ablation.jsonl``
as they finish (a killed run resumes), then the table is printed and written.

    python benchmarks/property_ablation.py --zoo gmn-bench/zoo-small-cnn-digits --seeds 3 \\
        --variant base='{}' --variant normalise='{"normalise": true}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from converters.files import atomic_write
from gmn.data import ZooDataset, split_by_run
from gmn.tasks.property import TrainConfig, fit_metanetwork, fit_statnn

#: the main job's metanetwork settings before this ablation (gmn bench property's defaults then)
BASE = {"epochs": 30, "lr": 3e-3, "hidden": 32, "layers": 3, "patience": 10, "normalise": False, "pool": "mean",
        "probes": 0}


def _variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    return name, json.loads(settings or "{}")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", required=True)
    p.add_argument("--targets", default="test_acc,gap")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="first seed (processes with other seeds share the log)")
    p.add_argument("--variant", action="append", default=[], type=_variant,
                   help='NAME=JSON of TrainConfig fields over the base, e.g. attn=\'{"pool": "mean+attn"}\'')
    p.add_argument("--out", default="benchmarks/results/property")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "ablation.jsonl"
    data = ZooDataset(args.zoo, tuple(args.targets.split(",")), progress=False)
    variants = dict(args.variant or [("base", {})])
    for seed in range(args.seed, args.seed + args.seeds):
        split = split_by_run(data.run, data.family, seed=seed)
        done = {(r["variant"], r["seed"]) for r in _rows(log)}
        todo = [("statnn", None)] + list(variants.items())
        for name, settings in todo:
            if (name, seed) in done:
                continue
            if settings is None:
                result = fit_statnn(data, split, seed)
            else:
                result = fit_metanetwork(data, split, "gmn", TrainConfig(**{**BASE, **settings, "seed": seed}),
                                         progress=False)
            row = {"variant": name, "settings": settings, "seed": seed, "seconds": result.seconds,
                   "epochs": len(result.history), "scores": result.scores}
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("variant", "seed")} | {
                t: round(s["tau"], 3) for t, s in result.scores.items()}), flush=True)
    table = format_table(_rows(log), args.targets.split(","), len(data), args.zoo)
    atomic_write(out / "ablation.txt", lambda tmp: Path(tmp).write_text(table + "\n"))
    print(table)


def format_table(rows: list[dict], targets: list[str], members: int, zoo: str) -> str:
    """Per variant: tau mean ± std over seeds, and the mean paired difference to StatNN."""
    stat = {(r["seed"]): r for r in rows if r["variant"] == "statnn"}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    cells = "".join(f"{t + ' tau':>18}{'- statnn':>11}" for t in targets)
    head = f"{'variant':<27}{'seeds':>6}{cells}{'s/seed':>8}"
    lines = [f"{members} checkpoints ({zoo}); base {json.dumps(BASE)}", head, "-" * len(head)]
    for name in names:
        mine = [r for r in rows if r["variant"] == name and r["seed"] in stat]
        cells = ""
        for t in targets:
            taus = [r["scores"][t]["tau"] for r in mine]
            diffs = [r["scores"][t]["tau"] - stat[r["seed"]]["scores"][t]["tau"] for r in mine]
            spread = f"{np.mean(taus):.3f}±{np.std(taus, ddof=1) if len(taus) > 1 else 0:.3f}"
            cells += f"{spread:>18}{np.mean(diffs):>+11.3f}"
        lines.append(f"{name:<27}{len(mine):>6}{cells}{np.mean([r['seconds'] for r in mine]):>8.0f}")
    settings = {r["variant"]: r["settings"] for r in rows if r["settings"] is not None}
    lines += ["", "variants (TrainConfig over the base):"] + [f"  {n}: {json.dumps(s)}" for n, s in settings.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
