"""ONNX conversion against PyTorch conversion of the same model, and a large ONNX file.

Each model is exported once (``torch.onnx.export(dynamo=True, optimize=False)``, weights in
external data), then, each in its own process, converted from ONNX and from PyTorch.
Targets (issue 3): ONNX within 1.5x the PyTorch time; a 100 M-parameter file with external
data within 12 GiB peak memory.

    python benchmarks/onnx_speed.py [--models resnet18 resnet50 vit mlp100m]
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import run_in_process


def _model(name: str):
    from gmn import architectures as A

    if name == "mlp100m":  # 4 x 5000 x 5000: 100 M parameters
        return A.MLP((5000, 5000, 5000, 5000, 5000)).eval(), torch.randn(1, 5000)
    factory, example = A.BUILTIN[name]
    return factory().eval(), example()


def _export(name: str, folder: Path) -> Path:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    model, x = _model(name)
    torch.save(x, folder / f"{name}.input.pt")
    path = folder / f"{name}.onnx"
    program = torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False)
    program.save(str(path), external_data=True)
    return path


def _convert(kind: str, name: str, folder: str, queue) -> None:
    torch.set_num_threads(2)
    import converters

    x = torch.load(Path(folder) / f"{name}.input.pt", weights_only=True)
    if kind == "torch":
        torch.manual_seed(0)
        model, _ = _model(name)
        start = time.perf_counter()
        g = converters.from_torch(model, x)
    else:
        start = time.perf_counter()
        g = converters.from_onnx(Path(folder) / f"{name}.onnx", (x,))
    seconds = time.perf_counter() - start
    queue.put(dict(kind=kind, params=int(g.num_param_edges), seconds=seconds,
                   peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def run(kind: str, name: str, folder: Path) -> dict:
    return run_in_process(_convert, kind, name, folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vit", "mlp100m"])
    args = parser.parse_args()
    head = (f"{'model':<10} {'params':>12} {'onnx MB':>8} {'torch s':>8} {'onnx s':>8} {'ratio':>6} "
            f"{'onnx peak GiB':>14}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            _export(name, folder)
            size = sum(p.stat().st_size for p in folder.glob(f"{name}.onnx*")) / 1e6
            t, o = run("torch", name, folder), run("onnx", name, folder)
            print(f"{name:<10} {o['params']:>12,} {size:>8.0f} {t['seconds']:>8.2f} {o['seconds']:>8.2f} "
                  f"{o['seconds'] / t['seconds']:>6.2f} {o['peak_gib']:>14.2f}", flush=True)
    print("ratio = ONNX conversion time / PyTorch conversion time (torch.export + build) for the same model")


if __name__ == "__main__":
    main()
