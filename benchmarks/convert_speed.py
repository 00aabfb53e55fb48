"""Conversion and writer speed: model -> parameter graph -> state_dict.

Each model runs in its own process so that peak memory (max RSS) is the model's own.
Prints a table; ``--plot`` also draws parameters/s per model (PNG). Targets (issue 2):
>= 40 M parameters/s for ResNet-50 and GPT-2-small sized models within 12 GiB peak
memory, writer >= 200 M parameters/s; the reference GMN construction code does about
4 M parameters/s on a 2-core machine.

    python benchmarks/convert_speed.py [--models resnet18 resnet50 gpt2-small] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from common import run_in_process

REFERENCE_PARAMS_PER_S = 4e6


def _model(name: str):
    from gmn import architectures as A

    if name == "gpt2-small":
        import transformers

        transformers.logging.set_verbosity_error()
        cfg = transformers.GPT2Config(use_cache=False)  # the 124 M configuration, random weights
        return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, cfg.vocab_size, (1, 16))
    factory, example = A.BUILTIN[name]
    return factory().eval(), example()


def _measure(name: str, queue) -> None:
    torch.set_num_threads(2)
    import converters

    model, x = _model(name)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    import converters.torch_frontend as frontend

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trace, traced = frontend._trace, {}

    def timed_trace(*args):  # time the torch.export step inside the conversion itself
        t0 = time.perf_counter()
        out = trace(*args)
        traced["s"] = time.perf_counter() - t0
        return out

    frontend._trace = timed_trace
    start = time.perf_counter()
    g = converters.from_torch(model, x)
    total_s = time.perf_counter() - start
    export_s = traced["s"]
    values = converters.parameter_values(g) * 1.0
    start = time.perf_counter()
    sd = converters.to_state_dict(g, values)
    model.load_state_dict(sd)
    write_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(dict(model=name, params=params, nodes=g.num_nodes, edges=g.edge_index.size(1),
                   export_s=export_s, total_s=total_s, build_s=max(total_s - export_s, 1e-9),
                   write_s=write_s, peak_gib=peak / 2**20, base_gib=base_rss / 2**20))


def run(name: str) -> dict:
    return run_in_process(_measure, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vit", "gpt2-small"])
    parser.add_argument("--plot", help="write a PNG of parameters/s per model")
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument("--replot", help="only redraw the plot from a JSON file of an earlier run")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), args.plot or "convert_speed.png")
        return
    rows = []
    head = (f"{'model':<12} {'params':>12} {'nodes':>9} {'edges':>12} {'export s':>9} {'build s':>8} "
            f"{'total s':>8} {'M params/s':>10} {'x ref':>6} {'writer M/s':>10} {'peak GiB':>9}")
    print(head)
    print("-" * len(head))
    for name in args.models:
        r = run(name)
        rows.append(r)
        rate = r["params"] / r["total_s"]
        print(f"{r['model']:<12} {r['params']:>12,} {r['nodes']:>9,} {r['edges']:>12,} {r['export_s']:>9.2f} "
              f"{r['build_s']:>8.2f} {r['total_s']:>8.2f} {rate / 1e6:>10.1f} {rate / REFERENCE_PARAMS_PER_S:>6.1f} "
              f"{r['params'] / r['write_s'] / 1e6:>10.0f} {r['peak_gib']:>9.2f}", flush=True)
    print("total s = torch.export trace + graph build, measured inside one conversion in a fresh process.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["model"] for r in rows]
    ax.bar(names, [r["params"] / r["build_s"] / 1e6 for r in rows], color="#f4b183", label="graph build only")
    ax.bar(names, [r["params"] / r["total_s"] / 1e6 for r in rows], color="#2e75b6", width=0.5,
           label="end to end (with torch.export)")
    ax.axhline(REFERENCE_PARAMS_PER_S / 1e6, color="k", ls="--", label="reference GMN code")
    ax.axhline(40, color="r", ls=":", label="target")
    ax.set_ylabel("M parameters / s")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
