"""Predicting a LoRA adapter's task (the rotation angle it was trained for) and its accuracy from its weights.

A LoRA zoo (``gmn.zoo.lora``: one digits CNN, adapters trained on digits rotated by an angle each),
and side by side on the same splits: StatNN, a flat MLP on the raw factors, a flat MLP on the GL(r)
canonical factors, the graph metanetwork on raw and on canonical graphs (``gmn.lora.canonicalise``).
Raw factors carry an arbitrary ``M`` per module (``(B M^-1, M A)`` is the same adapter); the table
shows what removing it buys. Several seeds (each its own split and initialisation); mean ± std.

    python benchmarks/lora_property.py      # benchmarks/results/adapters/lora_property.{txt,json,png}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import parse_with_out  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="lora-zoo", help="the LoRA zoo's folder (built or resumed here)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40, help="metanetwork and MLP training epochs")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/adapters")
    args, out = parse_with_out(p)
    torch.set_num_threads(1)
    from gmn.tasks.lora_property import lora_property_benchmark
    from gmn.tasks.property import TrainConfig
    from gmn.zoo.lora import build_lora_zoo

    start = time.perf_counter()
    build_lora_zoo(args.zoo, runs=args.runs, progress=True)
    built = time.perf_counter() - start
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    title = (f"# {command}\n# LoRA zoo: {args.runs} adapters (rank 4) of one digits CNN, each trained on digits "
             f"rotated by its angle; zoo built/resumed in {built:.0f} s; {args.seeds} seeds (split + initialisation); "
             "one thread")
    config = TrainConfig(epochs=args.epochs, hidden=args.hidden, layers=args.layers, seed=0, patience=10)
    table = lora_property_benchmark(args.zoo, out, ("statnn", "mlp", "gmn"), config=config, seeds=args.seeds,
                                    name="lora_property", title=title)
    print(table)


if __name__ == "__main__":
    main()
