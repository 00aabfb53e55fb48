"""Converting LoRA adapters of a Llama-2-7B-shaped base: time and peak memory against rank and layers.

The base is built on the meta device (no weight allocated); the adapter (LoRA on q, k, v, o of
every layer, float32, random values) is a PEFT folder written beforehand by another process. Each
conversion runs in a fresh spawned process: ``from_peft(folder, base=meta_model)`` once cold and
``--repeats`` more times (median; the base's neuron sets are then known: a zoo of one base pays its
forward once), beside the floor every conversion pays, reading the safetensors file into one flat
vector of its values (what a flat-weights baseline reads), measured in the same process. Peak memory is the
process's peak resident set (``ru_maxrss``), imports and the meta model included, and its rise
during the conversions over the resident set just before them.

    python benchmarks/adapter_convert.py            # the table and plot of benchmarks/results/adapters/
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_with_out, run_in_process  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS, VOCAB = 4096, 11008, 32, 32000
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _llama(layers: int):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                                   num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(cfg)


def write_adapter(folder: str, rank: int, layers: int, queue) -> None:
    """A PEFT LoRA folder for the 7B shape (random float32 factors), as PEFT saves it."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(layers):
        for target in TARGETS:
            key = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, HIDDEN, generator=gen) / HIDDEN ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(HIDDEN, rank, generator=gen) / rank ** 0.5
    save_file(tensors, f"{folder}/adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS),
              "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False}
    Path(f"{folder}/adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    queue.put({})


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


def convert(folder: str, layers: int, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from adapters import from_peft

    start = time.perf_counter()
    base = _llama(layers)
    build = time.perf_counter() - start
    before = _rss_kib()
    times, reads = [], []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        g = from_peft(folder, base=base)
        times.append(time.perf_counter() - start)
        edges, params, nodes, notes = g.edge_index.size(1), int(g.num_param_edges), g.num_nodes, g.param_index.pins
        del g
        start = time.perf_counter()
        flat = torch.cat([t.reshape(-1) for t in load_file(f"{folder}/adapter_model.safetensors").values()])
        reads.append(time.perf_counter() - start)
        del flat
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"build_s": build, "cold_s": times[0], "median_s": statistics.median(times[1:]),
               "read_s": statistics.median(reads[1:]), "peak_gib": peak / 2**20, "rise_gib": (peak - before) / 2**20,
               "edges": edges, "params": params, "nodes": nodes, "notes": list(notes)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/adapters")
    args, out = parse_with_out(p)
    grid = [(r, 32) for r in args.ranks] + [(16, n) for n in args.layers if n != 32]
    rows = []
    for rank, layers in grid:
        with tempfile.TemporaryDirectory() as folder:
            run_in_process(write_adapter, folder, rank, layers)
            row = run_in_process(convert, folder, layers, args.repeats)
        rows.append({"rank": rank, "layers": layers, **row})
        print(f"r={rank:3d} layers={layers:2d}: {row['median_s']:.2f} s (cold {row['cold_s']:.2f} s), "
              f"peak {row['peak_gib']:.2f} GiB", flush=True)
    header = (f"{'rank':>4} {'layers':>6} {'params':>11} {'edges':>11} {'nodes':>9} {'convert s':>9} {'cold s':>7} "
              f"{'read s':>7} {'ratio':>6} {'peak GiB':>8} {'rise GiB':>8} {'meta build s':>12}")
    lines = [header] + [
        f"{r['rank']:>4} {r['layers']:>6} {r['params']:>11,} {r['edges']:>11,} {r['nodes']:>9,} {r['median_s']:>9.2f} "
        f"{r['cold_s']:>7.2f} {r['read_s']:>7.3f} {r['median_s'] / r['read_s']:>6.1f} {r['peak_gib']:>8.2f} "
        f"{r['rise_gib']:>8.2f} {r['build_s']:>12.2f}" for r in rows]
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = "\n".join([f"# {command}", "# Llama-2-7B-shaped base on the meta device, LoRA on q, k, v, o; one thread;",
                      f"# convert s: median of {args.repeats} after a cold run (cold: with the base's meta forward); "
                      "read s: the file into one flat vector (the floor);",
                      "# ratio = convert / read; peak: process ru_maxrss (imports and meta model included); rise: peak "
                      "over the resident set before converting", *lines])
    print(text)
    (out / "adapter_convert.txt").write_text(text + "\n")
    (out / "adapter_convert.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    _plot(rows, out / "adapter_convert.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "rank", "rank (32 layers)"), (axes[1], "layers", "layers (rank 16)")):
        fixed = ("layers", 32) if key == "rank" else ("rank", 16)
        sel = sorted((r for r in rows if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        ax.plot(xs, [r["median_s"] for r in sel], "o-", label="convert, base's sets known (s)")
        ax.plot(xs, [r["cold_s"] for r in sel], "^-", color="C2", label="convert, cold (s)")
        ax.plot(xs, [r["peak_gib"] for r in sel], "s--", label="peak memory (GiB)")
        ax.axhline(5, color="C0", lw=0.5, ls=":")
        ax.axhline(2, color="C1", lw=0.5, ls=":")
        ax.set_xlabel(label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, max(5.5, math.ceil(max(r["median_s"] for r in sel))))
        ax.legend()
    fig.suptitle("LoRA adapter -> parameter graph, Llama-2-7B-shaped meta base (targets: 5 s, 2 GiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
