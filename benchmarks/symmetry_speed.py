"""Speed of random symmetries (``gmn.weightspace.symmetry.random_symmetry``) on graphs of real size.

The first call on a graph builds its structure plan (tie nodes, edge index, the stable colour
refinement, the sorted edge keys) and samples; later calls on the same structure (augmentation
of a zoo's members, which share their architecture's edge index) reuse the plan and pay only
the search and one verifying sort. Targets (issue 15): a 100k-edge transformer under 1 s and
ResNet-50 (25.6 M edges) under 10 s on 2 cores. Prints a table, writes JSON and a plot.

    python benchmarks/symmetry_speed.py [--models gpt2-100k resnet50] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _graph(name: str):
    import converters
    from gmn import architectures as A

    if name.startswith("gpt2") or name == "albert-shared":
        import transformers

        transformers.logging.set_verbosity_error()
        if name == "albert-shared":  # one layer's weights shared by all 6 layers: ties everywhere
            cfg = transformers.AlbertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                                            intermediate_size=128, embedding_size=32)
            model = transformers.AlbertModel(cfg)
        else:
            cfg = transformers.GPT2Config(vocab_size=512, n_embd=64, n_layer=4, n_head=4, n_positions=64,
                                          use_cache=False)
            model = transformers.GPT2LMHeadModel(cfg)
        return converters.from_torch(model.eval(), torch.randint(0, 200, (1, 16)))
    factory, example = A.BUILTIN[name]
    return converters.from_torch(factory().eval(), example())


def measure(name: str, repeats: int) -> dict:
    from gmn import symmetry

    g = _graph(name)
    start = time.perf_counter()
    symmetry.random_symmetry(g, seed=0)
    first = time.perf_counter() - start
    later = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        symmetry.random_symmetry(g, seed=seed)
        later.append(time.perf_counter() - start)
    return {"model": name, "edges": int(g.edge_index.size(1)), "tied_edges": int(g.num_tied_edges),
            "first_s": first, "cached_s": sum(later) / len(later)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gpt2-100k", "albert-shared", "resnet18", "vit", "resnet50"])
    p.add_argument("--repeats", type=int, default=3, help="cached calls timed per model")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    print(f"{'model':>14} {'edges':>11} {'tied':>9} {'first call s':>13} {'cached call s':>14}")
    for name in args.models:
        row = measure(name, args.repeats)
        rows.append(row)
        print(f"{row['model']:>14} {row['edges']:>11,} {row['tied_edges']:>9,} {row['first_s']:>13.2f} "
              f"{row['cached_s']:>14.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "symmetry_speed.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "symmetry_speed.png")


def plot(rows: list[dict], path: Path) -> None:
    """Seconds per random symmetry against graph size, first and cached calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["edges"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    edges = [r["edges"] for r in rows]
    ax.loglog(edges, [r["first_s"] for r in rows], "o-", label="first call (plan + sample)")
    ax.loglog(edges, [r["cached_s"] for r in rows], "s-", label="cached plan")
    for r in rows:
        ax.annotate(r["model"], (r["edges"], r["first_s"]), fontsize=7)
    ax.set_xlabel("edges")
    ax.set_ylabel("seconds per random symmetry (2 cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
