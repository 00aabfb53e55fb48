"""Conversion and metanetwork throughput on GPU beside CPU, one table.

    python benchmarks/gpu_speed.py            # on a machine with CUDA

Conversion: ``from_torch`` of a model living on the device (parameters/s, end to end).
Metanetwork: one training step (forward + backward + Adam) of a GMN (hidden 64, 4 layers)
on a ResNet-18 parameter graph of the given width (edges/s). CPU rows use 2 threads, as on
the project's CI machines. Written to ``benchmarks/results/gpu_speed.txt``.
"""

from __future__ import annotations

import time
from pathlib import Path

import metanetwork_speed
import torch
from common import run_in_process


def _convert(name: str, device: str, queue) -> None:
    torch.set_num_threads(2)
    import converters
    from gmn.architectures import BUILTIN

    factory, example = BUILTIN[name]
    model, x = factory().eval().to(device), example().to(device)
    converters.from_torch(model, x)  # warm-up: first-call costs of export are not the converter's
    start = time.perf_counter()
    g = converters.from_torch(model, x)
    seconds = time.perf_counter() - start
    queue.put({"params": g.num_parameters, "per_s": g.num_parameters / seconds})


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name in ("resnet18", "resnet50", "vit", "moe-transformer"):
        r = {d: run_in_process(_convert, name, d) for d in devices}
        rows.append((f"convert {name}", f"{r['cpu']['params'] / 1e6:.1f} M params", "M params/s",
                     {d: r[d]["per_s"] / 1e6 for d in devices}))
    for width in (8, 16):
        r = {d: metanetwork_speed.run("gmn", width, d, 3) for d in devices}
        rows.append((f"GMN step resnet18/w{width}", f"{r['cpu']['edges'] / 1e6:.2f} M edges", "M edges/s",
                     {d: r[d]["edges_per_s"] / 1e6 for d in devices}))
    head = f"{'task':<26}{'size':>16}{'unit':>12}" + "".join(f"{d:>10}" for d in devices) + \
        (f"{'cuda/cpu':>10}" if "cuda" in devices else "")
    lines = [head, "-" * len(head)]
    for task, size, unit, speed in rows:
        ratio = f"{speed['cuda'] / speed['cpu']:>9.1f}x" if "cuda" in speed else ""
        lines.append(f"{task:<26}{size:>16}{unit:>12}" + "".join(f"{speed[d]:>10.2f}" for d in devices) + ratio)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    table = "\n".join(lines) + f"\n({device}; CPU rows with 2 threads)"
    print(table)
    (Path(__file__).parent / "results" / "gpu_speed.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
