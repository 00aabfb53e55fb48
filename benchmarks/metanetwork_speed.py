"""Metanetwork throughput and memory: gmn's layers against a reference-style EdgeMPNN.

The reference is the GMN paper's EdgeMPNN as its code builds it (PyG MetaLayer style):
per layer an MLP on the concatenation ``[h_src, h_dst, e]`` of every edge, then a node
MLP on aggregated edge states. ``gmn`` computes per-node projections once and gathers
them onto edges instead. Same width (64) and depth (4); one training step is forward +
backward + Adam on a graph-level regression. Each configuration runs in its own process.
Memory: on CUDA, ``max_memory_allocated`` of a step; on CPU (no allocator statistics),
the bytes of the distinct tensors autograd saves for the backward pass, which is what
grows with the graph.

    python benchmarks/metanetwork_speed.py [--device cuda] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from common import run_in_process
from torch import nn

REFERENCE_EDGES_PER_S = 0.07e6  # the reference code on a 2-core machine (97 k edges, 1.35 s / step)


class ReferenceEdgeMPNN(nn.Module):
    """EdgeMPNN as in the GMN reference code: MLPs on concatenated endpoint features."""

    def __init__(self, hidden: int = 64, layers: int = 4):
        super().__init__()
        from gmn.nn import EdgeEncoder, NodeEncoder

        self.nodes, self.edges = NodeEncoder(hidden), EdgeEncoder(hidden)

        def mlp(i):
            return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))

        self.edge_mlps = nn.ModuleList(mlp(3 * hidden) for _ in range(layers))
        self.node_mlps = nn.ModuleList(mlp(3 * hidden) for _ in range(layers))
        self.head = nn.Linear(hidden, 1)

    def forward(self, g):
        from gmn.nn import scatter

        h, e = self.nodes(g), self.edges(g, g.edge_value)
        src, dst = g.edge_index
        n = h.size(0)
        for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps):
            e = e + edge_mlp(torch.cat([h[src], h[dst], e], -1))
            agg = torch.cat([scatter(e, dst, n, "mean"), scatter(e, src, n, "mean")], -1)
            h = h + node_mlp(torch.cat([h, agg], -1))
        return self.head(h.mean(0, keepdim=True))


def _graph(width: int):
    import converters
    from gmn.architectures import ResNet18

    torch.manual_seed(0)
    return converters.from_torch(ResNet18(width=width, classes=10), torch.randn(1, 3, 32, 32))


def _measure(model_name: str, width: int, device: str, steps: int, queue) -> None:
    torch.set_num_threads(2)
    from gmn import GraphMetanetwork

    g = _graph(width).to(device)
    g.model = None
    torch.manual_seed(0)
    net = ReferenceEdgeMPNN() if model_name == "reference" else GraphMetanetwork(64, 4, kind=model_name)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.zeros(1, 1, device=device)

    def step():
        loss = F.mse_loss(net(g), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved = _saved_bytes(lambda: F.mse_loss(net(g), target))
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else saved / 2**20
    queue.put(dict(model=model_name, width=width, edges=g.edge_index.size(1), nodes=g.num_nodes,
                   seconds=seconds, edges_per_s=g.edge_index.size(1) / seconds, peak_mib=peak, device=device))


def _saved_bytes(forward) -> int:
    """Bytes of the distinct storages autograd keeps for backward during ``forward()``."""
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss
    return sum(storages.values())


def run(model_name: str, width: int, device: str, steps: int) -> dict:
    return run_in_process(_measure, model_name, width, device, steps)


def table(rows: list[dict]) -> None:
    head = (f"{'model':<10} {'device':<6} {'edges':>9} {'s/step':>8} {'k edges/s':>10} {'speed':>6} "
            f"{'memory MiB':>11} {'memory':>7}")
    print(head)
    print("-" * len(head))
    ref = {(r["width"], r["device"]): r for r in rows if r["model"] == "reference"}
    for r in rows:
        base = ref.get((r["width"], r["device"]))
        speed = f"{r['edges_per_s'] / base['edges_per_s']:.1f}x" if base else ""
        memory = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base else ""
        print(f"{r['model']:<10} {r['device']:<6} {r['edges']:>9,} {r['seconds']:>8.3f} "
              f"{r['edges_per_s'] / 1e3:>10.1f} {speed:>6} {r['peak_mib']:>11.1f} {memory:>7}", flush=True)
    print("speed and memory are relative to the reference-style EdgeMPNN on the same graph and device")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--models", nargs="+", default=["reference", "gmn", "pna"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--plot")
    parser.add_argument("--json")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if args.device == "cuda" and torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for width in args.widths:
            for name in args.models:
                rows.append(run(name, width, device, args.steps))
        table([r for r in rows if r["device"] == device])
        print()
    print(f"reference code as published: {REFERENCE_EDGES_PER_S / 1e3:.0f} k edges/s on 2 cores (97 k edges)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for device in devices:
            for name in args.models:
                pts = [r for r in rows if r["model"] == name and r["device"] == device]
                ax.plot([r["edges"] for r in pts], [r["edges_per_s"] / 1e3 for r in pts], "o-",
                        label=f"{name} ({device})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges in the graph")
        ax.set_ylabel("k edges / s (train step)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
