"""Before/after timing of the converters on ResNet-50 (224 px), both in one process, interleaved.

Part 2 of ``convert_speed.py`` measures one version. On a shared machine a before/after pair from
two processes compares two loads as much as two versions, so this loads the ``converters`` of a
git commit (``--base``) beside the working tree's, as the package ``converters_base``, and times
``torch.export`` alone, ``from_torch`` and ``from_onnx`` of each version in turn, round after
round; it prints medians and the ratios of medians:

    python benchmarks/convert_speed_ab.py --base <commit> [--rounds 5] [--out FILE]

Also timed: ``from_torch`` on an already exported program (``after export``: building, soundness
checks, layout and simplify) and the floor of that layout, writing the finished graph's arrays
(``edge_index``, type, position, value) into fresh memory.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_base(commit: str, folder: Path):
    """The ``converters`` package of ``commit``, importable as ``converters_base``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "converters"], check=True,
                         capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(folder, filter="data")
    (folder / "converters").rename(folder / "converters_base")
    frontend = folder / "converters_base" / "torch_frontend.py"  # it recognises its own ONNX module by name
    frontend.write_text(frontend.read_text().replace('"converters.onnx_frontend"', '"converters_base.onnx_frontend"'))
    sys.path.insert(0, str(folder))
    return importlib.import_module("converters_base")


def _post_export(conv, model, x):
    """``from_torch`` with the export done beforehand: what the converter adds to it."""
    frontend = importlib.import_module(conv.__name__ + ".torch_frontend")
    program = frontend._trace(model, (x,), "auto")

    def run():
        trace, frontend._trace = frontend._trace, lambda *args: program
        try:
            return conv.from_torch(model, x)
        finally:
            frontend._trace = trace
    return run


def _floor(edges: int, wide: bool) -> None:
    """The finished graph's edge arrays written once into fresh memory."""
    for shape, dtype in (((2, edges), torch.long), ((edges,), torch.int16), ((edges,), torch.int32),
                         ((edges,), torch.float64 if wide else torch.float32)):
        torch.empty(shape, dtype=dtype).fill_(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git commit of the converters to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import converters
    from gmn.architectures import ResNet50

    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        torch.manual_seed(0)
        model, x = ResNet50().eval(), torch.randn(1, 3, 224, 224)
        onnx_path = str(Path(tmp) / "resnet50.onnx")
        torch.onnx.export(model, (x,), onnx_path, dynamo=True, optimize=False, verbose=False)
        edges = int(converters.from_torch(model, x).edge_index.size(1))
        versions = {"before": base, "after": converters}
        tasks = {"torch.export": partial(torch.export.export, model, (x,), strict=False),
                 "graph arrays (floor)": partial(_floor, edges, False)}
        for k, v in versions.items():
            tasks[f"from_torch {k}"] = partial(v.from_torch, model, x)
            tasks[f"after export {k}"] = _post_export(v, model, x)
            tasks[f"from_onnx {k}"] = partial(v.from_onnx, onnx_path)
        times: dict[str, list[float]] = {k: [] for k in tasks}
        cpu: dict[str, list[float]] = {k: [] for k in tasks}  # preemptions on a shared machine do not count
        for fn in tasks.values():  # once untimed: imports, caches
            fn()
        for r in range(args.rounds):
            # every other round in reverse, and garbage collected before each call: no version always
            # runs after the other or collects the other's garbage
            for k, fn in (list(tasks.items()) if r % 2 == 0 else list(tasks.items())[::-1]):
                gc.collect()
                start, start_cpu = time.perf_counter(), time.process_time()
                out = fn()
                times[k].append(time.perf_counter() - start)
                cpu[k].append(time.process_time() - start_cpu)
                del out  # freed outside the timing
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in model.parameters())
    lines = [f"ResNet-50 at 224 px ({params / 1e6:.1f} M parameters, {edges:,} edges), medians of "
             f"{args.rounds} rounds in one process, interleaved; seconds, wall clock and CPU time",
             f"{'':<22} {'median':>7} {'CPU':>7}  all (wall)"]
    lines += [f"{k:<22} {m:>7.3f} {statistics.median(cpu[k]):>7.3f}  {' '.join(f'{t:.3f}' for t in times[k])}"
              for k, m in med.items()]
    exp = med["torch.export"]
    for k in ("before", "after"):
        rate = params / 1e6 / med[f"from_onnx {k}"]
        lines.append(f"{k}: from_torch {med[f'from_torch {k}'] / exp:.2f}x torch.export; after export "
                     f"{med[f'after export {k}']:.3f} s; from_onnx {rate:.1f} M params/s")
    lines.append(f"after / before: from_torch {med['from_torch after'] / med['from_torch before']:.2f}, after export "
                 f"{med['after export after'] / med['after export before']:.2f}, from_onnx "
                 f"{med['from_onnx after'] / med['from_onnx before']:.2f}")
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    lines.append(f"in CPU time: from_torch before {mc['from_torch before'] / mc['torch.export']:.2f}x, after "
                 f"{mc['from_torch after'] / mc['torch.export']:.2f}x torch.export; from_onnx before "
                 f"{params / 1e6 / mc['from_onnx before']:.1f}, after {params / 1e6 / mc['from_onnx after']:.1f} "
                 f"M params per CPU second")
    print("\n".join(lines))
    if args.out:
        command = "python " + " ".join(sys.argv)
        Path(args.out).write_text("\n".join([command, "", *lines]) + "\n")


if __name__ == "__main__":
    main()
