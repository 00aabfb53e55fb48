"""``gmn align``, ``gmn merge`` and ``gmn barrier``: permutation alignment, merging and linear
mode connectivity of any two (or more) models of one architecture, with no permutation spec."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

import converters
from converters import ConversionError, ParameterGraph
from converters.io import atomic_write

from ..checkpoints import build_arch, load_state, parse_arch
from . import checks
from .checks import ARCH_HELP

WRITABLE = (".safetensors", ".onnx", ".pt")


def add_parsers(sub) -> None:
    p = sub.add_parser("align", help="permute model B's neurons to match model A (same function, A's frame)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="reference model: checkpoint (with --arch), ONNX file or saved graph")
    p.add_argument("b", help="model to align, of the same architecture")
    p.add_argument("-o", "--output", required=True, type=checks.output_file(*WRITABLE),
                   help=f"aligned B ({', '.join(WRITABLE)})")
    _model_options(p)
    _match_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_align, outputs=lambda a: ([a.output], [], [a.a, a.b]))

    p = sub.add_parser("merge", help="merge models of one architecture into one",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", help="two or more models (checkpoints with --arch, ONNX files, saved graphs)")
    p.add_argument("-o", "--output", required=True, type=checks.output_file(*WRITABLE),
                   help=f"merged model ({', '.join(WRITABLE)})")
    p.add_argument("--method", default="average", choices=("average", "task-arithmetic", "ties", "dare"),
                   help="average: align to the first model, then interpolate; the others merge fine-tunes of --base")
    p.add_argument("--base", help="the common base model of fine-tunes (task-arithmetic, ties, dare)")
    p.add_argument("--weights", type=checks.finite_floats,
                   help="comma list of interpolation weights, one per model (average; default equal)")
    p.add_argument("--no-align", action="store_true", help="average without aligning first")
    p.add_argument("--scale", type=checks.finite_float, default=1.0, help="lambda: the merged task vector's scale")
    p.add_argument("--density", type=checks.fraction, default=0.2,
                   help="share of each task vector kept (ties, dare), in (0, 1]")
    p.add_argument("--repair", action="store_true",
                   help="REPAIR the merged neurons' statistics on --data (BatchNorm statistics are recomputed "
                        "whenever --data is given)")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0, help="DARE's random drop")
    _model_options(p)
    _match_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_merge, outputs=lambda a: ([a.output], [], [*a.models, a.base]))

    p = sub.add_parser("barrier", help="loss and accuracy along the interpolation path, before and after alignment",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="one end of the path: checkpoint (with --arch) or ONNX file")
    p.add_argument("b", help="the other end, of the same architecture")
    p.add_argument("--out", default="gmn-barrier", type=checks.folder,
                   help="folder for barrier.txt, barrier.json and barrier.png")
    p.add_argument("--points", type=checks.at_least(2), default=11, help="interpolation points, endpoints included")
    _model_options(p)
    _match_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_barrier, outputs=lambda a: ([Path(a.out) / f"barrier.{x}" for x in ("txt", "json", "png")],
                                                        [], []))


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help=ARCH_HELP)
    p.add_argument("--data", default="digits", help="packaged data set for example inputs, activations, "
                                                    "BatchNorm statistics and evaluation (digits, mnist, mnist1d)")
    p.add_argument("--samples", type=checks.positive_int, default=512,
                   help="training inputs used for activations and statistics")


def _match_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--match", default="weights", choices=("weights", "activations"),
                   help="match neurons by weights or by activations on --data")
    p.add_argument("--keep-residual-stream", action="store_true", help="leave the residual stream unpermuted")
    p.add_argument("--iterations", type=checks.positive_int, default=10,
                   help="rounds of coordinate descent and guided search at most")


def _architecture(arch: str, data) -> tuple[torch.nn.Module, tuple]:
    """(module, example inputs) for ``--arch``: zoo families and module:attr get ``--data``'s inputs."""
    spec = parse_arch(arch)
    model, example = build_arch(spec, tuple(data.input_shape), data.classes)
    return model, example if spec["family"] == "builtin" else (data.x_train[:2],)


def load_model(target: str, arch: str | None, data) -> ParameterGraph:
    """A model as a parameter graph: an ONNX file, a saved graph, or a checkpoint with ``arch``."""
    path = Path(target)
    if not path.is_file():
        raise FileNotFoundError(f"{target}: no such file")
    if path.suffix == ".onnx":
        return converters.from_onnx(path)
    if arch is None:
        try:
            return converters.load_graph(path)
        except ConversionError as err:
            raise ValueError(f"{err}; if {path.name} is a checkpoint, name its architecture with --arch") from None
    model, example = _architecture(arch, data)
    load_state(model, path)
    return converters.from_torch(model.eval(), example)


def _data(name: str, arch: str | None = None):
    """The packaged data set ``name``, its inputs shaped as a built-in ``arch`` takes them (the
    built-in MLP takes digits' 8x8 images as 64 flat values); refused in one line, before any
    work, when their channels cannot be the built-in's."""
    from ..zoo import datasets

    data = datasets.load(name)
    spec = parse_arch(arch) if arch else None
    if spec is None or spec["family"] != "builtin":
        return data
    from ..architectures import BUILTIN

    wanted = tuple(BUILTIN[spec["name"]][1]().shape[1:])  # the built-in's own example, batch dropped
    have = tuple(data.input_shape)
    if len(wanted) == 1 and len(have) > 1 and math.prod(have) == wanted[0]:  # flat inputs: flatten the images
        return dataclasses.replace(data, x_train=data.x_train.flatten(1), x_test=data.x_test.flatten(1))
    if len(wanted) != len(have) or wanted[0] != have[0]:  # spatial sizes may differ (pooling), channels not
        raise ValueError(f"--arch {spec['name']} takes inputs of shape {wanted}; --data {name} has {have} "
                         f"(a zoo family as JSON takes any --data: '{{\"family\": \"cnn\", ...}}')")
    return data


def write_model(g: ParameterGraph, path: str) -> None:
    """``g`` as a checkpoint (.safetensors), ONNX file (graphs read from ONNX) or saved graph (.pt),
    written atomically."""
    out = Path(path)
    if out.suffix == ".safetensors":
        from ..zoo.generate import save_checkpoint

        save_checkpoint(converters.to_state_dict(g), out)
    elif out.suffix == ".onnx":
        import onnx

        proto = converters.to_onnx(g, converters.parameter_values(g))
        atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    else:
        atomic_write(out, lambda tmp: converters.save_graph(g, tmp))


def _inputs(args, data) -> tuple:
    return (data.x_train[: args.samples],)


def _aligned(args, a: ParameterGraph, b: ParameterGraph, data) -> ParameterGraph:
    from ..weightspace.alignment import align

    inputs = _inputs(args, data) if args.match == "activations" else None
    return align(a, b, args.iterations, args.keep_residual_stream, inputs)


def _distance(a: ParameterGraph, b: ParameterGraph) -> float:
    va, vb = converters.parameter_values(a).double(), converters.parameter_values(b).double()
    return float((va - vb).norm() / va.norm().clamp_min(1e-12))


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _align(args) -> int:
    data = _data(args.data, args.arch if args.match == "activations" else None)
    a, b = load_model(args.a, args.arch, data), load_model(args.b, args.arch, data)
    start = time.perf_counter()
    aligned = _aligned(args, a, b, data)
    seconds = time.perf_counter() - start
    print(f"relative distance to A: {_distance(a, b):.4f} before, {_distance(a, aligned):.4f} after "
          f"({args.match} matching, {seconds:.2f} s)")
    write_model(aligned, args.output)
    print(f"wrote {args.output}")
    return 0


def _merge(args) -> int:
    from ..weightspace import merging

    if len(args.models) < 2 and args.method == "average":
        raise ValueError("merge needs two or more models")
    if args.weights is not None:
        if args.method != "average":
            raise ValueError(f"--weights interpolates (--method average), not --method {args.method}")
        if len(args.weights) != len(args.models):
            raise ValueError(f"--weights gives {len(args.weights)} weights for {len(args.models)} models")
        if abs(sum(args.weights)) < 1e-12:
            raise ValueError(f"--weights {','.join(map(str, args.weights))} sum to 0: they cannot be normalised")
    data = _data(args.data, args.arch)
    graphs = [load_model(m, args.arch, data) for m in args.models]
    if args.method == "average":
        weights = args.weights
        if not args.no_align:
            graphs = [graphs[0]] + [_aligned(args, graphs[0], g, data) for g in graphs[1:]]
        merged = merging.interpolate(graphs, weights)
        if args.repair:
            merged = merging.repair(merged, graphs, _inputs(args, data), weights)
    else:
        if args.base is None:
            raise ValueError(f"--method {args.method} merges fine-tunes of one base model: give --base")
        base = load_model(args.base, args.arch, data)
        merged = merging.task_vector_merge(base, graphs, args.method, args.scale, args.density, args.seed)
    if isinstance(getattr(merged, "model", None), torch.nn.Module) and _has_batchnorm(merged.model):
        merged = merging.recompute_batchnorm(merged, [(x,) for x in data.x_train[: args.samples].split(128)])
        print(f"recomputed BatchNorm statistics on {min(args.samples, len(data.y_train))} {args.data} inputs")
    if getattr(merged, "model", None) is not None:
        loss, acc = merging.evaluate(merged, data.x_test, data.y_test)
        print(f"merged model on {args.data} test: loss {loss:.4f}, accuracy {acc:.4f}")
    write_model(merged, args.output)
    print(f"wrote {args.output}")
    return 0


def _barrier(args) -> int:
    from ..weightspace import merging

    data = _data(args.data, args.arch)
    a, b = load_model(args.a, args.arch, data), load_model(args.b, args.arch, data)
    if getattr(a, "model", None) is None:
        raise ValueError("barrier runs the models: give checkpoints with --arch or ONNX files, not saved graphs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [(x,) for x in data.x_train[: args.samples].split(128)] if _has_batchnorm(a.model) else None
    inputs = _inputs(args, data)
    start = time.perf_counter()
    aligned = _aligned(args, a, b, data)
    seconds = time.perf_counter() - start
    curves = {"naive": merging.interpolation_path(a, b, data.x_test, data.y_test, args.points, batches),
              "aligned": merging.interpolation_path(a, aligned, data.x_test, data.y_test, args.points, batches)}
    if batches is None:
        curves["aligned + REPAIR"] = merging.interpolation_path(a, aligned, data.x_test, data.y_test, args.points,
                                                                repair_inputs=inputs)
    lines = [f"{args.a} -> {args.b} on {args.data} test ({args.match} matching in {seconds:.2f} s"
             + ("; BatchNorm statistics recomputed at every point)" if batches else ")"),
             f"{'path':<18}{'loss barrier':>14}{'acc barrier':>13}{'mid loss':>10}{'mid acc':>9}"]
    for name, path in curves.items():
        bar, mid = merging.barrier(path), path[len(path) // 2]
        lines.append(f"{name:<18}{bar['loss']:>14.4f}{bar['accuracy']:>13.4f}{mid['loss']:>10.4f}{mid['accuracy']:>9.4f}")
    table = "\n".join(lines)
    print(table)
    atomic_write(out / "barrier.txt", lambda tmp: Path(tmp).write_text(table + "\n"))
    atomic_write(out / "barrier.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"a": args.a, "b": args.b, "data": args.data, "match": args.match, "seconds": seconds, "curves": curves},
        indent=1)))
    _plot(curves, out / "barrier.png")
    print(f"wrote {out / 'barrier.txt'}, barrier.json and barrier.png")
    return 0


def _plot(curves: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, rows in curves.items():
        alpha = [r["alpha"] for r in rows]
        axes[0].plot(alpha, [r["loss"] for r in rows], marker="o", label=name)
        axes[1].plot(alpha, [r["accuracy"] for r in rows], marker="o", label=name)
    for ax, label in zip(axes, ("test loss", "test accuracy")):
        ax.set_xlabel("alpha (0: A, 1: B)")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
