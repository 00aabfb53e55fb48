"""The property-prediction targets: a Small-CNN-Zoo preset zoo and a mixed-architecture
zoo (at least 2,000 checkpoints each), every method; or a held-out-family split.

    python benchmarks/property_zoos.py --zoo small-cnn --runs 520 --device cuda
    python benchmarks/property_zoos.py --zoo mixed --runs 600 --aggr mean+max --device cuda
    python benchmarks/property_zoos.py --zoo mixed --runs 600 --aggr mean+max --test-families moe --device cuda

Tables, JSON and plots land in ``--out`` (default ``benchmarks/results/property``).
"""

import argparse
import os
import time
from pathlib import Path

from common import metanetwork_options

from gmn.tasks.benchmark import property_benchmark
from gmn.tasks.property import TrainConfig
from gmn.zoo import build_zoo


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", default="small-cnn", choices=("small-cnn", "mixed"))
    p.add_argument("--runs", type=int, default=520)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--methods", default="statnn,mlp,pna,gmn")
    p.add_argument("--test-families", default="", help="instead, test on these families held out of training")
    p.add_argument("--train-epochs", type=int, default=40)
    metanetwork_options(p)
    p.add_argument("--aggr", default="mean", help="GMN neighbourhood reduction(s), e.g. mean+max")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/property")
    args = p.parse_args()
    config = TrainConfig(epochs=args.train_epochs, hidden=args.hidden, layers=args.layers, aggr=args.aggr,
                         seed=args.seed, device=args.device)
    methods = tuple(args.methods.split(","))
    splits = [tuple(args.test_families.split(","))] if args.test_families else [()]
    zoo = Path(args.out) / f"zoo-{args.zoo}-digits"
    start = time.perf_counter()
    build_zoo(zoo, args.zoo, args.runs, "digits", args.epochs, seed=args.seed, workers=args.workers,
              progress=False).close()
    print(f"zoo: {args.runs} runs in {time.perf_counter() - start:.0f} s with {args.workers} workers", flush=True)
    for held_out in splits:
        start = time.perf_counter()
        out = Path(args.out) / (args.zoo + (f"-heldout-{'-'.join(held_out)}" if held_out else "")
                                + ("" if args.aggr == "mean" else f"-{args.aggr.replace('+', '-')}"))
        table = property_benchmark(out, args.zoo, args.runs, "digits", args.epochs, args.workers,
                                   zoo=zoo, methods=methods, test_families=held_out,
                                   config=config, progress=False)
        print(table, f"\n({time.perf_counter() - start:.0f} s on {args.device})\n", flush=True)


if __name__ == "__main__":
    main()
