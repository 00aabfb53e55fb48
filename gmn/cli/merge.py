"""``gmn align``, ``gmn merge`` and ``gmn barrier``: permutation alignment, merging and linear
mode connectivity of any two (or more) models of one architecture, with no permutation spec."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import converters
from converters.files import atomic_write

from ..checkpoints import hf_config, is_hf_folder, load_graph, parse_arch, provenance, save_hf_folder
from . import checks
from .checks import ARCH_HELP

if TYPE_CHECKING:
    from converters import ParameterGraph

WRITABLE = (".safetensors", ".onnx", ".pt")
MODELS = "checkpoints (with --arch), ONNX files, Hugging Face model folders or saved graphs"
OUTPUTS = (f"{', '.join(WRITABLE)}; a path without a suffix writes a Hugging Face model folder "
           "(Hugging Face models only)")


def model_output(text: str) -> str:
    """``-o``: a file of a kind gmn writes, or a path without a suffix (a Hugging Face model
    folder), in a folder that exists."""
    out = Path(text)
    if out.suffix or out.is_file():
        return checks.output_file(*WRITABLE)(text)
    if out.is_dir() and not is_hf_folder(out):
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a Hugging Face model folder; name a file (ending "
                                         f"in {' or '.join(WRITABLE)}) or a new folder")
    if not out.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{out.parent}: no such folder for the output {text}")
    return text


def _outputs(output: str, inputs: list) -> tuple[list, list, list]:
    """The output policy's (files, folders, inputs): a suffix-less output is a folder."""
    folder = not Path(output).suffix
    if folder and any(i and Path(i).resolve() == Path(output).resolve() for i in inputs):
        raise ValueError(f"{output} is one of this command's inputs; write the result elsewhere")
    return ([], [output], inputs) if folder else ([output], [], inputs)


def add_parsers(sub) -> None:
    p = sub.add_parser("align", help="permute model B's neurons to match model A (same function, A's frame)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help=f"reference model: {MODELS}")
    p.add_argument("b", help="model to align, of the same architecture")
    p.add_argument("-o", "--output", required=True, type=model_output, help=f"aligned B ({OUTPUTS})")
    _model_options(p)
    _match_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_align, outputs=lambda a: _outputs(a.output, [a.a, a.b]))

    p = sub.add_parser("merge", help="merge models of one architecture into one",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", help=f"two or more models: {MODELS}")
    p.add_argument("-o", "--output", required=True, type=model_output, help=f"merged model ({OUTPUTS})")
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
    p.add_argument("--rank", type=checks.positive_int,
                   help="PEFT adapters: truncate the merged update to this rank by SVD (default: exact, the summed "
                        "ranks; ties and dare: the largest input rank)")
    _model_options(p)
    _match_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_merge, outputs=lambda a: _outputs(a.output, [*a.models, a.base]))

    p = sub.add_parser("barrier", help="loss and accuracy along the interpolation path, before and after alignment",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help=f"one end of the path: {MODELS} (not a saved graph: the path is run)")
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


def load_model(target: str, arch: str | None, data) -> ParameterGraph:
    """A model as a parameter graph (``gmn.checkpoints.load_graph``: every format gmn reads);
    a zoo family or module:attr ``--arch`` is traced on ``--data``'s inputs."""
    spec = parse_arch(arch) if arch else None
    example = (data.x_train[:2],) if spec is not None and spec["family"] != "builtin" else None
    return load_graph(target, arch, tuple(data.input_shape), data.classes, example)


def _arch_record(target: str, arch: str | None):
    """The architecture a written checkpoint records: ``--arch`` as data, an ONNX file's name,
    a model folder's config, or None (a saved graph)."""
    if arch:
        return parse_arch(arch)
    if Path(target).suffix == ".onnx":
        return {"family": "onnx", "file": Path(target).name}
    if is_hf_folder(Path(target)):  # as a zoo keys its model folders
        return {"family": "huggingface", "config": hf_config(Path(target))}
    return None


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


def write_model(g: ParameterGraph, path: str, metadata: dict[str, str] | None = None) -> None:
    """``g`` as a checkpoint (.safetensors), ONNX file (graphs read from ONNX), saved graph
    (.pt) or, for a path without a suffix, a Hugging Face model folder (models read from one),
    written atomically; checkpoints and ONNX files carry ``metadata`` (provenance)."""
    out = Path(path)
    if out.suffix == ".safetensors":
        from ..zoo.generate import save_checkpoint

        save_checkpoint(converters.to_state_dict(g), out, metadata)
    elif out.suffix == ".onnx":
        import onnx

        proto = converters.to_onnx(g, converters.parameter_values(g))
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **(metadata or {})})
        atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    elif not out.suffix:
        save_hf_folder(getattr(g, "model", None), converters.to_state_dict(g), out, metadata)
    else:
        atomic_write(out, lambda tmp: converters.save_graph(g, tmp))


def _unrunnable(g: ParameterGraph, data) -> str | None:
    """Why the graph's model cannot be evaluated on ``--data`` (None when it can)."""
    if getattr(g, "model", None) is None:
        return "a saved graph carries no runnable model"
    try:
        with torch.no_grad():
            out = converters.functional_call(g, None, data.x_test[:2])
    except Exception as err:  # noqa: BLE001 - any model that cannot take the inputs fails in its own way
        return f"the model does not take {data.name} inputs of shape {tuple(data.input_shape)} ({type(err).__name__})"
    if not isinstance(out, torch.Tensor) or out.shape != (2, data.classes):
        return f"the model's output on {data.name} inputs is not ({data.classes},) class scores"
    return None


def _score(g: ParameterGraph, data, what: str) -> float | None:
    """Print the model's test loss and accuracy on ``--data`` (or why it cannot be scored)."""
    from ..weightspace import merging

    why = _unrunnable(g, data)
    if why is not None:
        print(f"{what}: not evaluated on {data.name} ({why})")
        return None
    loss, acc = merging.evaluate(g, data.x_test, data.y_test)
    print(f"{what} on {data.name} test: loss {loss:.4f}, accuracy {acc:.4f}")
    return acc


def _batchnorm_batches(g: ParameterGraph, args, data) -> list[tuple] | None:
    """``--data`` batches to recompute the model's BatchNorm statistics on; None without
    BatchNorm. A model with BatchNorm whose statistics cannot be recomputed (no runnable model,
    inputs that do not fit) is refused in one line: averaged statistics give a wrong model."""
    from ..weightspace import merging

    pairs = merging.batchnorm_statistics(g)
    if not pairs:
        return None
    why = _unrunnable(g, data)
    if why is not None:
        raise ValueError(f"the models have {len(pairs)} BatchNorm layers, whose statistics must be recomputed on "
                         f"data after merging, and {why}; give --data the models take, or checkpoints with --arch")
    return [(x,) for x in data.x_train[: args.samples].split(128)]


def _inputs(args, data) -> tuple:
    return (data.x_train[: args.samples],)


def _aligned(args, a: ParameterGraph, b: ParameterGraph, data) -> ParameterGraph:
    from ..weightspace.alignment import align

    inputs = _inputs(args, data) if args.match == "activations" else None
    return align(a, b, args.iterations, args.keep_residual_stream, inputs)


def _distance(a: ParameterGraph, b: ParameterGraph) -> float:
    va, vb = converters.parameter_values(a).double(), converters.parameter_values(b).double()
    return float((va - vb).norm() / va.norm().clamp_min(1e-12))


def _provenance(args, target: str, sources: list[str]) -> dict[str, str]:
    return provenance(_arch_record(target, args.arch), ["gmn", *args.argv], sources)


def _align(args) -> int:
    data = _data(args.data, args.arch if args.match == "activations" else None)
    a, b = load_model(args.a, args.arch, data), load_model(args.b, args.arch, data)
    start = time.perf_counter()
    aligned = _aligned(args, a, b, data)
    seconds = time.perf_counter() - start
    print(f"relative distance to A: {_distance(a, b):.4f} before, {_distance(a, aligned):.4f} after "
          f"({args.match} matching, {seconds:.2f} s)")
    write_model(aligned, args.output, _provenance(args, args.b, [args.a, args.b]))
    print(f"wrote {args.output}")
    return 0


def _check_weights(args) -> None:
    if len(args.models) < 2 and args.method == "average":
        raise ValueError("merge needs two or more models")
    if args.weights is not None:
        if args.method != "average":
            raise ValueError(f"--weights interpolates (--method average), not --method {args.method}")
        if len(args.weights) != len(args.models):
            raise ValueError(f"--weights gives {len(args.weights)} weights for {len(args.models)} models")
        if abs(sum(args.weights)) < 1e-12:
            raise ValueError(f"--weights {','.join(map(str, args.weights))} sum to 0: they cannot be normalised")


def _merge(args) -> int:
    from ..weightspace import merging

    _check_weights(args)
    if _adapter_folders(args.models):
        return _merge_adapters(args)
    if args.method != "average" and args.base is None:
        raise ValueError(f"--method {args.method} merges fine-tunes of one base model: give --base")
    if args.repair and args.method != "average":
        raise ValueError("--repair corrects interpolations (--method average), not task-vector merges")
    data = _data(args.data, args.arch)
    graphs = [load_model(m, args.arch, data) for m in args.models]
    batches = _batchnorm_batches(graphs[0], args, data)  # refused before any work when they cannot be recomputed
    scored = _unrunnable(graphs[0], data) is None
    if scored:
        for name, g in zip(args.models, graphs):
            _score(g, data, f"input {name}")
    else:
        print(f"not evaluated on {data.name}: {_unrunnable(graphs[0], data)}")
    if args.method == "average":
        if not args.no_align:
            graphs = [graphs[0]] + [_aligned(args, graphs[0], g, data) for g in graphs[1:]]
        merged = merging.interpolate(graphs, args.weights)
    else:
        base = load_model(args.base, args.arch, data)
        merged = merging.task_vector_merge(base, graphs, args.method, args.scale, args.density, args.seed)
    if batches is not None:
        merged = merging.recompute_batchnorm(merged, batches)
        print(f"recomputed BatchNorm statistics on {min(args.samples, len(data.y_train))} {args.data} inputs")
    if args.repair:  # after the BatchNorm statistics: REPAIR measures the model as it will run
        merged = merging.repair(merged, graphs, _inputs(args, data), args.weights)
        print(f"REPAIR corrected {len(merging.repairable(merged, _inputs(args, data)))} neurons")
    if scored:
        _score(merged, data, "merged model")
    write_model(merged, args.output, _provenance(args, args.models[0], [*args.models, args.base]))
    print(f"wrote {args.output}")
    return 0


def _adapter_folders(models: list[str]) -> bool:
    """Whether ``models`` are PEFT adapter folders (all of them: a mix is refused)."""
    from ..checkpoints import _is_adapter_folder

    kinds = [_is_adapter_folder(Path(m)) for m in models]
    if any(kinds) and not all(kinds):
        raise ValueError("merge takes models or PEFT adapter folders of one base, not a mix")
    return all(kinds)


def _merge_adapters(args) -> int:
    """Adapters of one base merged on their low-rank products (``gmn.lora.merge``): average and
    task-arithmetic exact at the summed rank (``--rank`` truncates by SVD and reports the error),
    ties and dare on the products' entries. Written as a PEFT adapter folder."""
    from .. import lora
    from ..checkpoints import load_module

    if args.repair:
        raise ValueError("adapters merge on their low-rank products (no neurons to align or REPAIR): drop --repair")
    if Path(args.output).suffix:
        raise ValueError(f"-o {args.output}: merged adapters are written as a PEFT adapter folder (no suffix)")
    # the base's weights are never read: a Hugging Face folder stays a path (built on the meta device)
    base = args.base if args.base is None or is_hf_folder(Path(args.base)) else load_module(args.base, args.arch)[0]
    graphs = [converters.from_peft(m, base=base) for m in args.models]
    n = len(graphs)
    if args.weights is not None:
        weights = list(args.weights)
    else:  # average: the mean of the updates; the task-vector methods: their sum, scaled by --scale
        weights = [1.0 / n] * n if args.method == "average" else [args.scale] * n
    method = "task-arithmetic" if args.method == "average" else args.method
    merged, errors = lora.merge(graphs, weights, rank=args.rank, base=base, method=method, density=args.density,
                                seed=args.seed)
    worst = max(errors.values(), default=0.0)
    print(f"merged {n} adapters ({method}, weights {', '.join(f'{w:g}' for w in weights)}) over {len(errors)} "
          f"modules; largest relative truncation error {worst:.3g}" + (" (exact)" if worst == 0 else ""))
    converters.to_peft(merged, None, args.output)
    print(f"wrote {args.output}")
    return 0


def _barrier(args) -> int:
    from ..weightspace import merging

    data = _data(args.data, args.arch)
    a, b = load_model(args.a, args.arch, data), load_model(args.b, args.arch, data)
    why = _unrunnable(a, data)
    if why is not None:
        raise ValueError(f"barrier runs the models on --data {args.data}, and {why}")
    batches = _batchnorm_batches(a, args, data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(args, data)
    start = time.perf_counter()
    aligned = _aligned(args, a, b, data)
    seconds = time.perf_counter() - start
    curves = {"naive": merging.interpolation_path(a, b, data.x_test, data.y_test, args.points, batches),
              "aligned": merging.interpolation_path(a, aligned, data.x_test, data.y_test, args.points, batches)}
    if batches is None and len(inputs[0]) > 1 and merging.repairable(a, inputs):
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
