"""Conversion speed and memory: many checkpoints of one architecture, one model, peak memory.

Three parts, printed as one table and drawn as one figure:

1. **Checkpoints of one architecture** (N = 1, 10, 100, 1,000; the reference's own small
   ResNet and ViT, ``make_resnet()`` / ``make_transformer(...)`` of cptq/graph_metanetworks as
   its ``sd_to_net`` builds them): gmn with a template (one ``from_torch``, then
   ``from_state_dict`` per checkpoint) against ``from_torch`` per checkpoint and against the
   reference's ``arch_to_graph(sequential_to_arch(net))`` per checkpoint, all in one process,
   checkpoint by checkpoint in turn (so all three see the same machine). Checkpoints are state
   dicts in memory (every weight and statistic moved); the per-checkpoint methods load each into
   one module first. Times are cumulative (the total for the first N checkpoints), wall clock
   and CPU time (on a shared machine preemptions inflate short calls' wall time). ``from_torch``
   takes most of a second per checkpoint: it converts the first ``--from-torch-n`` (100) and
   the rest are counted at its median. A smaller ResNet than ResNet-50, so that N = 1,000 runs.
2. **One model**: ResNet-50 (224 px) ``from_torch`` against ``torch.export`` alone (the floor
   it cannot beat), and ``from_onnx`` of its ONNX export (alone, and with a template of the
   same architecture), medians of 3 in one process.
3. **Peak memory** of one conversion (ResNet-50, VGG-19, GPT-2 small from PyTorch; VGG-19 and
   ResNet-50 from ONNX), each in a fresh process: the peak resident set over the conversion
   (``VmHWM`` reset before it) above what the process held before it, minus the finished
   graph's own arrays, per byte of weights. ``tracemalloc`` sees only Python and NumPy
   allocations (torch's allocator does not report to it): it is printed beside for what it is.

    python benchmarks/convert_speed.py --reference ../graph_metanetworks [--max-n 1000]
        [--from-torch-n 100] [--out benchmarks/results] [--replot]

The reference is run from its own checkout, never copied here: the results in
``benchmarks/results/`` used cptq/graph_metanetworks at commit 295da2d (``git archive`` into
``/tmp/gmn_reference``). Part 1 needs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from functools import partial
from pathlib import Path

import torch
from common import load_reference, run_in_process
from torch import nn

NS = (1, 10, 100, 1000)
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
GOALS = {"x ref at N=1000": 100, "x torch.export": 1.3, "ONNX M params/s": 40, "bytes per weight byte": 9}


def vgg19(classes: int = 1000) -> nn.Module:
    """VGG-19 (configuration E, 143.7 M parameters), built here: torchvision is not needed."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                         nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                         nn.ReLU(True), nn.Dropout(), nn.Linear(4096, classes))


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name == "gpt2-small":
        import transformers

        transformers.logging.set_verbosity_error()
        cfg = transformers.GPT2Config(use_cache=False)  # the 124 M configuration, random weights
        return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, cfg.vocab_size, (1, 16))
    if name == "vgg19":
        return vgg19().eval(), torch.randn(1, 3, 224, 224)
    from gmn.architectures import ResNet50

    return ResNet50().eval(), torch.randn(1, 3, 224, 224)


def _export_onnx(name: str, path: str, queue) -> None:
    torch.set_num_threads(1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model, x = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, verbose=False)
    queue.put({"path": path})


# --- 1. checkpoints of one architecture -------------------------------------------------------

def _reference_nets(makers) -> dict[str, nn.Module]:
    """The reference's ResNet and ViT as its ``sd_to_net`` builds them for its zoos."""
    return {"ref ResNet": makers.make_resnet(num_classes=10),
            "ref ViT": makers.make_transformer(in_dim=3, hidden_dim=64, num_heads=2, out_dim=10, dropout=0.1,
                                               num_layers=2, vit=True, patch_size=4)}


def _checkpoints(net: nn.Module, count: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        sd = {}
        for k, v in net.state_dict().items():
            moved = v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            sd[k] = moved.abs() if k.endswith("running_var") else moved
        out.append(sd)
    return out


def _timed(times: list, fn, *args):
    """``fn(*args)``, appending (wall, CPU) seconds: the CPU time of this process is what a shared
    machine's preemptions (tens of ms each, under load) do not inflate."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def _reference_graph(graph, net: nn.Module):
    """The reference's construction of one model's graph, as its data pipeline calls it."""
    return graph.arch_to_graph(graph.sequential_to_arch(net))


def _sweep(reference: str | None, max_n: int, torch_n: int, queue) -> None:
    torch.set_num_threads(1)
    import converters

    if reference is None:
        raise SystemExit("the N sweep runs on the reference's own nets: give --reference")
    graph, makers = load_reference(reference)
    rows = []
    for arch, net in _reference_nets(makers).items():
        net.eval()
        x = torch.randn(1, 3, 32, 32)
        checkpoints = _checkpoints(net, max_n)
        params = sum(p.numel() for p in net.parameters())
        times: dict[str, list] = {"gmn": [], "from_torch": [], "reference": []}
        # each method once, untimed: a process's first torch.export pays for imports and caches
        converters.from_state_dict(converters.from_torch(net, x), checkpoints[0])
        _reference_graph(graph, net)
        template = _timed(times["gmn"], converters.from_torch, net, x)  # the one trace
        for i, sd in enumerate(checkpoints):
            g = _timed(times["gmn"], converters.from_state_dict, template, sd)
            net.load_state_dict(sd)
            if i < torch_n:
                _timed(times["from_torch"], converters.from_torch, net, x)
            _timed(times["reference"], _reference_graph, graph, net)
            if i == 0:
                edges = int(g.edge_index.size(1))
        for n in (n for n in NS if n <= max_n):
            row = {"arch": arch, "params": params, "edges": edges, "N": n, "from_torch_extrapolated": n > torch_n}
            for k, clock in (("s", 0), ("cpu_s", 1)):
                row[f"gmn_{k}"] = sum(t[clock] for t in times["gmn"][: n + 1])
                row[f"reference_{k}"] = sum(t[clock] for t in times["reference"][:n])
                measured = [t[clock] for t in times["from_torch"][:n]]  # beyond torch_n: its median times N
                row[f"from_torch_{k}"] = sum(measured) + (n - len(measured)) * statistics.median(
                    t[clock] for t in times["from_torch"])
            rows.append(row)
        rows[-1]["per_checkpoint_ms"] = {k: statistics.median(t[0] for t in (v[1:] if k == "gmn" else v)) * 1e3
                                         for k, v in times.items()}
        rows[-1]["trace_ms"] = times["gmn"][0][0] * 1e3
    queue.put({"rows": rows})


# --- 2. one model ------------------------------------------------------------------------------

def _single(onnx_path: str, queue) -> None:
    torch.set_num_threads(1)
    import converters

    model, x = _model("resnet50")
    params = sum(p.numel() for p in model.parameters())
    times: dict[str, list] = {"export": [], "torch": [], "onnx": [], "onnx_template": []}
    warnings.simplefilter("ignore")  # the exporter's notes, and from_onnx's on an unoptimised file
    for _ in range(3):
        _timed(times["export"], partial(torch.export.export, strict=False), model, (x,))
        _timed(times["torch"], converters.from_torch, model, x)
        template = _timed(times["onnx"], converters.from_onnx, onnx_path)
        _timed(times["onnx_template"], partial(converters.from_onnx, template=template), onnx_path)
    out = {"params": params}
    for k, v in times.items():
        out[f"{k}_s"] = statistics.median(t[0] for t in v)
        out[f"{k}_cpu_s"] = statistics.median(t[1] for t in v)
    queue.put(out)


# --- 3. peak memory ------------------------------------------------------------------------------

def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _memory(name: str, source: str, onnx_path: str | None, queue) -> None:
    torch.set_num_threads(1)
    import converters

    model, x = _model(name) if source == "torch" else (None, None)
    if source == "onnx":  # the weights' bytes, from the file's declarations
        import onnx

        proto = onnx.load(onnx_path, load_external_data=False)
        weights = sum(4 * math.prod(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
        del proto
    else:
        tensors = {t.data_ptr(): t for t in model.state_dict().values()}  # a tied weight once
        weights = sum(t.numel() * t.element_size() for t in tensors.values())
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here on is this conversion's peak
        f.write("5")
    tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = converters.from_torch(model, x) if source == "torch" else converters.from_onnx(onnx_path)
    seconds = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status("VmHWM") - before
    graph = sum(v.numel() * v.element_size() for v in g.to_dict().values() if isinstance(v, torch.Tensor))
    queue.put({"model": name, "source": source, "weights": weights, "params": g.num_parameters,
               "edges": int(g.edge_index.size(1)), "graph": graph, "peak": peak, "tracemalloc": traced,
               "seconds": seconds})


# --- the table ----------------------------------------------------------------------------------

def _sweep_lines(sweep: list[dict]) -> list[str]:
    lines = ["1. N checkpoints of one architecture: total seconds, wall clock and CPU time (gmn: one trace + N "
             "from_state_dict; the others convert each checkpoint)",
             f"{'arch':<11} {'params':>8} {'N':>5} {'gmn s':>8} {'from_torch s':>12} {'reference s':>11} "
             f"{'x from_torch':>12} {'x reference':>11} {'gmn cpu s':>9} {'ref cpu s':>9} {'x ref cpu':>9}"]
    for r in sweep:
        mark = "~" if r["from_torch_extrapolated"] else ""
        lines.append(f"{r['arch']:<11} {r['params']:>8,} {r['N']:>5,} {r['gmn_s']:>8.3f} "
                     f"{mark + format(r['from_torch_s'], '.2f'):>12} {r['reference_s']:>11.2f} "
                     f"{r['from_torch_s'] / r['gmn_s']:>12.1f} {r['reference_s'] / r['gmn_s']:>11.1f} "
                     f"{r['gmn_cpu_s']:>9.3f} {r['reference_cpu_s']:>9.2f} "
                     f"{r['reference_cpu_s'] / r['gmn_cpu_s']:>9.1f}")
        if "per_checkpoint_ms" in r:
            pc = r["per_checkpoint_ms"]
            lines.append(f"{'':<11} median per checkpoint (wall): gmn from_state_dict {pc['gmn']:.2f} ms, "
                         f"from_torch {pc['from_torch']:.0f} ms, reference {pc['reference']:.1f} ms "
                         f"(reference / gmn {pc['reference'] / pc['gmn']:.0f}x); gmn's one trace "
                         f"{r['trace_ms']:.0f} ms")
    lines.append("~: from_torch converted the first --from-torch-n checkpoints; the rest counted at its median")
    return lines


def _single_lines(s: dict) -> list[str]:
    rate = s["params"] / 1e6
    return ["2. One model: ResNet-50 at 224 px, medians of 3, wall clock (CPU time)",
            f"torch.export alone {s['export_s']:.2f} s ({s['export_cpu_s']:.2f}); from_torch {s['torch_s']:.2f} s "
            f"({s['torch_cpu_s']:.2f}) = {s['torch_s'] / s['export_s']:.2f}x torch.export "
            f"({s['torch_cpu_s'] / s['export_cpu_s']:.2f}x in CPU time; goal <= {GOALS['x torch.export']}x)",
            f"from_onnx {s['onnx_s']:.2f} s ({s['onnx_cpu_s']:.2f}) = {rate / s['onnx_s']:.1f} M params/s "
            f"({rate / s['onnx_cpu_s']:.1f} per CPU second; goal >= {GOALS['ONNX M params/s']})",
            f"from_onnx(template=) of a file of the same architecture {s['onnx_template_s']:.3f} s "
            f"({s['onnx_template_cpu_s']:.3f}) = {rate / s['onnx_template_s']:.0f} M params/s "
            f"({rate / s['onnx_template_cpu_s']:.0f} per CPU second)"]


def _memory_lines(memory: list[dict]) -> list[str]:
    lines = ["3. Peak memory of one conversion (fresh process each)",
              f"{'model':<11} {'from':<6} {'weights GiB':>11} {'edges':>12} {'graph GiB':>9} {'peak GiB':>8} "
              f"{'peak/weight B':>13} {'beyond graph B/B':>16} {'tracemalloc GiB':>15} {'s':>6}"]
    for m in memory:
        lines.append(f"{m['model']:<11} {m['source']:<6} {m['weights'] / 2**30:>11.3f} {m['edges']:>12,} "
                     f"{m['graph'] / 2**30:>9.2f} {m['peak'] / 2**30:>8.2f} {m['peak'] / m['weights']:>13.1f} "
                     f"{(m['peak'] - m['graph']) / m['weights']:>16.2f} {m['tracemalloc'] / 2**30:>15.2f} "
                     f"{m['seconds']:>6.1f}")
    lines.append(f"beyond graph B/B: (peak - the graph's own arrays) per weight byte (goal <= "
                 f"{GOALS['bytes per weight byte']}); peak/weight B: what converters.limits.PEAK_PER_BYTE estimates")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for arch, marker in (("ref ResNet", "o"), ("ref ViT", "s")):
        rows = [r for r in result["sweep"] if r["arch"] == arch]
        ns = [r["N"] for r in rows]
        for key, color in (("gmn_s", "#2e75b6"), ("from_torch_s", "#f4b183"), ("reference_s", "k")):
            ax.plot(ns, [r[key] for r in rows], marker=marker, color=color,
                    label=f"{arch}: {key.removesuffix('_s').replace('gmn', 'gmn template')}")
        for key, color in (("gmn_cpu_s", "#2e75b6"), ("reference_cpu_s", "k")):
            ax.plot(ns, [r[key] for r in rows], marker=marker, color=color, ls=":", mfc="none",
                    label=f"{arch}: {key.removesuffix('_cpu_s')} (CPU time)")
    ax.set(xscale="log", yscale="log", xlabel="checkpoints N", ylabel="total seconds",
           title="N checkpoints of one architecture")
    ax.legend(fontsize=6, ncol=2)
    s = result["single"]
    ax = axes[1]
    bars = {"torch.export": s["export_s"], "from_torch": s["torch_s"], "from_onnx": s["onnx_s"],
            "from_onnx\n(template)": s["onnx_template_s"]}
    ax.bar(list(bars), list(bars.values()), color=["#999999", "#2e75b6", "#70ad47", "#a9d18e"])
    ax.axhline(s["params"] / 40e6, color="r", ls=":", label="40 M params/s")
    ax.set(ylabel="seconds", title="ResNet-50, one model (medians)")
    ax.legend(fontsize=8)
    ax = axes[2]
    labels = [f"{m['model']}\n{m['source']}" for m in result["memory"]]
    ax.bar(labels, [m["graph"] / m["weights"] for m in result["memory"]], color="#bdd7ee", label="graph's arrays")
    ax.bar(labels, [(m["peak"] - m["graph"]) / m["weights"] for m in result["memory"]],
           bottom=[m["graph"] / m["weights"] for m in result["memory"]], color="#2e75b6", label="beyond the graph")
    from converters.limits import PEAK_PER_BYTE

    ax.axhline(PEAK_PER_BYTE, color="r", ls=":", label="converters.limits estimate")
    ax.set(ylabel="peak bytes per weight byte", title="Peak memory of one conversion")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="checkout of cptq/graph_metanetworks (its graph_construct code)")
    parser.add_argument("--max-n", type=int, default=max(NS), help="largest N of the checkpoint sweep")
    parser.add_argument("--from-torch-n", type=int, default=100,
                        help="checkpoints converted by from_torch one by one; larger N: its median times N")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--replot", action="store_true", help="only redraw from OUT/convert_speed.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(json.loads((out / "convert_speed.json").read_text()), out / "convert_speed.png")
        return
    result = {"command": "python " + " ".join(sys.argv)}
    result["sweep"] = run_in_process(_sweep, args.reference, args.max_n, args.from_torch_n)["rows"]
    lines = _sweep_lines(result["sweep"])
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: run_in_process(_export_onnx, name, str(Path(tmp) / f"{name}.onnx"))["path"]
                 for name in ("resnet50", "vgg19")}
        result["single"] = run_in_process(_single, files["resnet50"])
        lines += ["", *_single_lines(result["single"])]
        print("\n".join(lines[-5:]), flush=True)
        result["memory"] = []
        for name, source in (("resnet50", "torch"), ("vgg19", "torch"), ("gpt2-small", "torch"), ("resnet50", "onnx"),
                             ("vgg19", "onnx")):
            result["memory"].append(run_in_process(_memory, name, source, files[name] if source == "onnx" else None))
            print(_memory_lines(result["memory"])[-2], flush=True)
    lines += ["", *_memory_lines(result["memory"])]
    (out / "convert_speed.txt").write_text("\n".join([result["command"], "", *lines]) + "\n")
    (out / "convert_speed.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "convert_speed.png")
    print(f"wrote {out}/convert_speed.txt, .json, .png")


if __name__ == "__main__":
    main()
