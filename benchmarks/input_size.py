"""Conversion time against the size of the example input (issue 16).

The converter shadows every activation with neuron ids; where those repeat over spatial
positions and tokens they stay broadcasts, so the cost should follow the model, not the
input. Each row converts one model at one input size in a fresh process and reports the
time against the model's smallest input, and the graph's size (which must not change).

Rows: ResNet-50 from PyTorch and from ONNX (exported once with dynamic height and width,
``optimize=False``) at 32, 64, 224 and 512 pixels; GPT-2 small (124 M, random weights) at
16, 256 and 1,024 tokens. With ``--reference PATH`` (a checkout of cptq/graph_metanetworks,
the GMN paper's code; not shipped with gmn), its ``sequential_to_arch`` + ``arch_to_graph``
and gmn convert the paper's own ResNet ``nn.Sequential`` (width 128, 21 ``BasicBlock`` s,
32x32 input) side by side in one process, best of three each.

Targets: 224 px within 1.5x of 64 px; 1,024 tokens within 1.5x of 16 tokens; ResNet-50 at
>= 40 M parameters/s; >= 10x the reference's speed.

    python benchmarks/input_size.py [--out benchmarks/results] [--reference ../graph_metanetworks]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import load_reference, run_in_process

PIXELS = (32, 64, 224, 512)
TOKENS = (16, 256, 1024)


def _resnet50():
    from gmn import architectures as A

    torch.manual_seed(0)
    return A.ResNet50().eval()


def _gpt2():
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False)).eval()


def _example(model: str, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(size)
    if model == "gpt2-small":
        return torch.randint(0, 50257, (1, size), generator=gen)
    return torch.randn(1, 3, size, size, generator=gen)


def _export_onnx(folder: Path) -> Path:
    """ResNet-50 as ONNX with dynamic height and width, parameter names and BatchNorm kept."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    path = folder / "resnet50.onnx"
    h, w = torch.export.Dim("h", min=32, max=1024), torch.export.Dim("w", min=32, max=1024)
    program = torch.onnx.export(_resnet50(), (_example("resnet50", 64),), dynamo=True, optimize=False,
                                dynamic_shapes=({2: h, 3: w},), verbose=False)
    program.save(str(path), external_data=True)
    return path


def _convert(source: str, model: str, size: int, onnx_path: str, queue) -> None:
    torch.set_num_threads(2)
    import converters

    x = _example(model, size)
    if source == "onnx":
        from_onnx = converters.from_onnx  # imports onnx (about a second) before the clock starts
        start = time.perf_counter()
        g = from_onnx(onnx_path, (x,))
    else:
        net = _gpt2() if model == "gpt2-small" else _resnet50()
        start = time.perf_counter()
        g = converters.from_torch(net, x)
    seconds = time.perf_counter() - start
    queue.put(dict(model=model, source=source, size=size, seconds=seconds, params=int(g.num_param_edges),
                   nodes=int(g.num_nodes), edges=int(g.edge_index.size(1))))


def _export_only(size: int, queue) -> None:
    """``torch.export`` of ResNet-50 alone: the part of a PyTorch conversion no rule can shorten."""
    torch.set_num_threads(2)
    net, x = _resnet50(), _example("resnet50", size)
    start = time.perf_counter()
    torch.export.export(net, (x,), strict=False)
    queue.put(dict(seconds=time.perf_counter() - start))


def _write_floor(edges: int, queue) -> None:
    """Allocating the graph's arrays and writing each byte once (``edge_index`` int64, type int16,
    position int32, value float32: what PyG's layout needs) in a fresh process: the least any
    converter that returns this graph can spend, before tracing or looking at a single op."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    for shape, dtype in (((2, edges), torch.long), (edges, torch.int16), (edges, torch.int32),
                         (edges, torch.float32)):
        torch.empty(shape, dtype=dtype).fill_(1)
    queue.put(dict(seconds=time.perf_counter() - start))


def floors(rows: list[dict], ref: dict | None) -> dict:
    """What the speed targets leave once the unavoidable parts are paid (fresh processes)."""
    r50 = next(r for r in rows if r["model"] == "resnet50" and r["size"] == 224)
    out = dict(export_s=run_in_process(_export_only, 224)["seconds"],
               r50_write_s=run_in_process(_write_floor, r50["edges"])["seconds"], r50_params=r50["params"])
    if ref:
        out["ref_write_s"] = run_in_process(_write_floor, ref["gmn_edges"])["seconds"]
    return out


def _print_floors(f: dict, ref: dict | None) -> list[str]:
    budget = f["r50_params"] / 40e6
    lines = [f"ResNet-50 at 224 px: 40 M params/s leaves {budget:.2f} s; writing its arrays alone takes "
             f"{f['r50_write_s']:.2f} s and torch.export alone {f['export_s']:.2f} s "
             f"(together {f['r50_params'] / (f['r50_write_s'] + f['export_s']) / 1e6:.1f} M params/s at best)"]
    if ref:
        lines.append(f"reference ResNet: 10x the reference's speed leaves {ref['ref_s'] / 10 * 1e3:.0f} ms; writing "
                     f"its graph's arrays alone takes {f['ref_write_s'] * 1e3:.0f} ms")
    for line in lines:
        print(line)
    return lines


def _reference(path: str, queue) -> None:
    torch.set_num_threads(2)
    import converters

    graph, makers = load_reference(path)
    torch.manual_seed(0)
    net = makers.make_resnet(conv_layers=21, hidden_dim=128).eval()
    x = torch.randn(1, 3, 32, 32)
    ref_s, gmn_s, eager_s = [], [], []
    for _ in range(3):
        start = time.perf_counter()
        _, edge_index, _ = graph.arch_to_graph(graph.sequential_to_arch(net))
        ref_s.append(time.perf_counter() - start)
        for tracer, times in (("auto", gmn_s), ("eager", eager_s)):
            start = time.perf_counter()
            g = converters.from_torch(net, x, tracer=tracer)
            times.append(time.perf_counter() - start)
    queue.put(dict(params=sum(p.numel() for p in net.parameters()), ref_s=min(ref_s), gmn_s=min(gmn_s),
                   eager_s=min(eager_s), ref_edges=int(edge_index.size(1)), gmn_edges=int(g.edge_index.size(1))))


def measure(reference: str | None) -> tuple[list[dict], dict | None]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = str(_export_onnx(Path(tmp)))
        runs = [(s, "resnet50", p) for s in ("torch", "onnx") for p in PIXELS]
        runs += [("torch", "gpt2-small", t) for t in TOKENS]
        for source, model, size in runs:
            row = run_in_process(_convert, source, model, size, onnx_path)
            first = next((r for r in rows if r["model"] == model and r["source"] == source), row)
            row["vs_smallest"] = row["seconds"] / first["seconds"]
            rows.append(row)
            _print_row(row, first)
    ref = run_in_process(_reference, reference) if reference else None
    return rows, ref


HEAD = (f"{'model':<11} {'from':<6} {'input':>11} {'seconds':>8} {'x smallest':>10} {'M params/s':>10} "
        f"{'nodes':>8} {'edges':>12}")


def _format(r: dict) -> str:
    unit = "tokens" if r["model"] == "gpt2-small" else "px"
    size = f"{r['size']} {unit}"
    return (f"{r['model']:<11} {r['source']:<6} {size:>11} {r['seconds']:>8.2f} {r['vs_smallest']:>10.2f} "
            f"{r['params'] / r['seconds'] / 1e6:>10.1f} {r['nodes']:>8,} {r['edges']:>12,}")


def _print_row(r: dict, first: dict) -> None:
    if r is first:
        print(HEAD + "\n" + "-" * len(HEAD))
    same = "" if (r["nodes"], r["edges"]) == (first["nodes"], first["edges"]) else "  graph differs!"
    print(_format(r) + same, flush=True)


def _print_reference(ref: dict) -> str:
    line = (f"reference ResNet (width 128, 21 blocks, {ref['params']:,} params, 32x32): reference "
            f"{ref['ref_s']:.3f} s ({ref['ref_edges']:,} edges), gmn {ref['gmn_s']:.3f} s "
            f"({ref['gmn_edges']:,} edges): gmn at {ref['ref_s'] / ref['gmn_s']:.2f}x the reference's speed; "
            f"with tracer='eager' {ref['eager_s']:.3f} s, {ref['ref_s'] / ref['eager_s']:.2f}x")
    print(line)
    return line


def plot(rows: list[dict], ref: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, models, label in ((axes[0], ("resnet50",), "input height = width (pixels)"),
                              (axes[1], ("gpt2-small",), "example sequence length (tokens)")):
        for model in models:
            for source, style in (("torch", "o-"), ("onnx", "s--")):
                pts = [r for r in rows if r["model"] == model and r["source"] == source]
                if pts:
                    ax.plot([r["size"] for r in pts], [r["seconds"] for r in pts], style,
                            label=f"{model} from {'PyTorch' if source == 'torch' else 'ONNX'}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("conversion time (s)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    title = "gmn conversion time vs example input size (2 cores)"
    if ref:
        title += f"; reference-code ResNet: gmn {ref['ref_s'] / ref['gmn_s']:.2f}x its speed"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for input_size.{txt,json,png}")
    parser.add_argument("--reference", help="checkout of cptq/graph_metanetworks to run side by side")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, ref = measure(args.reference)
    lines = [HEAD, "-" * len(HEAD)]
    lines += [_format(r) for r in rows]
    if ref:
        lines.append(_print_reference(ref))
    floor = floors(rows, ref)
    lines += _print_floors(floor, ref)
    lines.append("seconds: one conversion end to end (trace + graph build) in a fresh process.")
    (out / "input_size.txt").write_text("\n".join(lines) + "\n")
    (out / "input_size.json").write_text(json.dumps({"rows": rows, "reference": ref, "floors": floor}, indent=1))
    plot(rows, ref, out / "input_size.png")


if __name__ == "__main__":
    main()
