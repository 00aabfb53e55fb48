"""Peak memory of a metanetwork pass against chunk size, and a pass over GPT-2 small.

    python benchmarks/chunked_memory.py [--device cuda] [--gpt2]

Graph: ResNet-18 (11.7 M parameter edges) converted once and saved. For each chunk size
(and the whole, unchunked pass) a fresh process loads the graph and runs a GMN (hidden 16,
2 layers, edge readout: one output per parameter); the peak memory above the loaded graph
is sampled (CPU: resident set every 2 ms; CUDA: max_memory_allocated). ``--gpt2`` also
runs one chunked pass over GPT-2 small built from its config (124 M parameters, no
download; needs transformers). Table and plot land in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from common import run_in_process

RESULTS = Path(__file__).parent / "results"


class PeakRSS:
    def __enter__(self):
        self.proc, self.peak, self.running = psutil.Process(), 0, True
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def measure(path: str, chunk: int | None, device: str, queue) -> None:
    import converters
    from gmn import GraphMetanetwork
    from gmn.models.chunked import chunked_forward

    torch.set_num_threads(torch.get_num_threads())
    g = converters.load_graph(path)
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=2, readout="edge").to(device).eval()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with PeakRSS() as rss, torch.no_grad():
        if chunk is None:
            out = net(g.to(device))
        else:
            out = chunked_forward(net, g, chunk)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    covered = int(out[converters.parameter_edge_mask(g).to(out.device)].size(0))
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else rss.delta
    queue.put({"chunk": chunk, "edges": g.num_edges, "params": g.num_parameters, "covered": covered,
               "seconds": seconds, "peak_mib": peak / 2**20, "device": device})


def _graph(name: str, folder: Path) -> str:
    import converters
    from gmn import architectures

    path = folder / f"{name}.pt"
    if name == "resnet18":
        model, x = architectures.ResNet18(), torch.randn(1, 3, 64, 64)
        converters.save_graph(converters.from_torch(model, x), path)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config()).eval()
        converters.save_graph(converters.from_torch(model, torch.randint(0, 50257, (1, 16))), path)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpt2", action="store_true")
    p.add_argument("--chunks", default="65536,262144,1048576,4194304")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _graph("resnet18", Path(tmp))
        for chunk in [int(c) for c in args.chunks.split(",")] + [None]:
            rows.append({"graph": "resnet18", **run_in_process(measure, path, chunk, args.device)})
            print(rows[-1], flush=True)
        if args.gpt2:
            path = _graph("gpt2", Path(tmp))
            rows.append({"graph": "gpt2-small", **run_in_process(measure, path, 1 << 20, args.device)})
            print(rows[-1], flush=True)
    lines = [f"{'graph':<12}{'chunk':>10}{'edges':>12}{'params covered':>16}{'peak MiB':>10}{'seconds':>9}  device"]
    for r in rows:
        chunk = "whole" if r["chunk"] is None else str(r["chunk"])
        lines.append(f"{r['graph']:<12}{chunk:>10}{r['edges']:>12}{r['covered']:>16}{r['peak_mib']:>10.0f}"
                     f"{r['seconds']:>9.1f}  {r['device']}")
    table = "\n".join(lines)
    print(table)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (RESULTS / f"chunked_memory{suffix}.txt").write_text(table + "\n")
    (RESULTS / f"chunked_memory{suffix}.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in rows if r["graph"] == "resnet18"]
    chunked = [r for r in res if r["chunk"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["chunk"] for r in chunked], [r["peak_mib"] for r in chunked], "o-", label="chunked")
    whole = [r for r in res if r["chunk"] is None]
    if whole:
        ax.axhline(whole[0]["peak_mib"], color="k", ls="--", label="whole graph")
    ax.set_xscale("log")
    ax.set_xlabel("chunk size (edges)")
    ax.set_ylabel("peak memory above the graph (MiB)")
    ax.set_title(f"GMN pass over ResNet-18 ({res[0]['edges'] / 1e6:.1f} M edges), {args.device}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"chunked_memory{suffix}.png", dpi=120)


if __name__ == "__main__":
    main()
