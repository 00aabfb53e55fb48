"""``gmn train`` (a metanetwork on a zoo, one process or DDP) and ``gmn bench property`` (the main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from converters.files import atomic_write

from ..choices import KINDS
from . import checks
from .zoo import zoo_options

SPLIT_HELP = ("a published split: splits/<name>.json of an imported zoo (or just <name>), train/val/test lists of "
              "checkpoint paths; instead of the random split by run (--seed then draws the initialisation only)")


def check_split(args) -> None:
    """``--split``: with a zoo folder, without ``--test-families``; every listed checkpoint a
    member of the zoo and no part empty. Checked against the catalogue, before any conversion."""
    from types import SimpleNamespace

    from ..zoo import Zoo
    from ..zoo.formats import split_by_index_file
    from ..zoo.lora import is_lora_zoo

    if not args.zoo:
        raise ValueError("--split names checkpoints of an existing zoo: give the zoo folder with --zoo")
    if is_lora_zoo(args.zoo):
        raise ValueError(f"--split names checkpoints of a model zoo; {args.zoo} is a LoRA zoo, split by adapter "
                         f"(--seed draws it)")
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


def train_options(p: argparse.ArgumentParser) -> None:
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
                   help="a Python architecture the zoo's catalogue may name, imported from the current folder "
                        "(never imported otherwise)")


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


def config(args):
    from ..tasks.property import TrainConfig

    recipe = {"pool": args.pool, "probes": args.probes, "normalise": not args.raw_values,
              "value_scale": args.value_scale} if hasattr(args, "pool") else {}
    return TrainConfig(epochs=args.train_epochs, patience=args.patience, lr=args.lr, batch_size=args.batch_size,
                       hidden=args.hidden, layers=args.layers, aggr=args.aggr, seed=args.seed, device=args.device,
                       amp=not args.no_amp, **recipe)


def add_parsers(sub) -> None:
    _train_parser(sub)
    _bench_parser(sub)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a metanetwork on a zoo (--nproc N: N processes, DDP)")
    p.add_argument("zoo", help="zoo folder")
    p.add_argument("--kind", default="gmn", choices=KINDS, help="metanetwork layers")
    p.add_argument("--out", default="gmn-train", type=checks.folder,
                   help="folder for the model, log and test predictions")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0, help="split and initialisation seed")
    p.add_argument("--nproc", type=checks.positive_int, default=1,
                   help="processes on this machine (torchrun; gloo or NCCL)")
    p.add_argument("--split", type=checks.split_file, metavar="FILE", help=SPLIT_HELP)
    train_options(p)
    _recipe_options(p)
    checks.add_force(p)
    # targets: a model zoo's test_acc,gap or a LoRA zoo's own (MODEL_TARGETS, zoo_targets)
    p.set_defaults(handler=_train, targets=None,
                   outputs=lambda a: ([Path(a.out) / n for n in TRAIN_OUTPUTS], [], []))


#: what ``gmn train`` writes into its --out folder (besides state/, the resumable training state)
TRAIN_OUTPUTS = ("model.safetensors", "result.json", "test_predictions.csv")


def allowed_modules(args) -> tuple[str, ...]:
    """``--allow-module`` paths, each imported now from the current folder (as ``zoo import``
    and ``--arch`` find them), so a mistyped one is one line before any work."""
    from ..checkpoints import import_attr

    for name in args.allow_module:
        if ":" not in name:
            raise ValueError(f"--allow-module {name!r}: give module:attr, as the zoo's catalogue names it")
        import_attr(name)
    return tuple(args.allow_module)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if not skip and arg != "--nproc" and not arg.startswith("--nproc="):
            out.append(arg)
        skip = arg == "--nproc"
    return out


def _train(args) -> int:
    import os

    from ..data import ZooDataset, split_by_run
    from ..tasks.property import fit_metanetwork
    from ..zoo.formats import split_by_index_file
    from .lora_weights import is_lora

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
    allow = allowed_modules(args)
    settings = config(args)
    if is_lora(args.zoo):  # every rank reads the adapters (no cache to share)
        data, settings = _adapters(args, settings, rank)
    else:
        targets = _split(args.targets or MODEL_TARGETS)
        if rank == 0:  # converts (and caches) the zoo once; the other ranks then read the cache
            data = ZooDataset(args.zoo, targets, allow_modules=allow)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            data = ZooDataset(args.zoo, targets, progress=False, allow_modules=allow)
    if args.split:  # the zoo's published split (checked against the catalogue in _preflight)
        split = split_by_index_file(data, args.split)
    else:
        split = split_by_run(data.run, data.family, seed=args.seed, test_families=_split(args.test_families))
    out = Path(args.out)
    result = fit_metanetwork(data, split, args.kind, settings, out / "state", progress=rank == 0)
    if rank == 0:
        _write_training(out, args, data, split, result, world)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


#: what a model zoo's metanetwork predicts unless --targets says otherwise (a LoRA zoo: its own targets)
MODEL_TARGETS = "test_acc,gap"


def _adapter_settings(args, settings, say: bool = True):
    """The settings for a LoRA zoo, read weights only (probes run a model, and an adapter is no
    model on its own); a family split is refused: a LoRA zoo has one base."""
    from dataclasses import replace

    if args.test_families:
        raise ValueError("--test-families holds out model families; a LoRA zoo has one base (it is split by adapter)")
    if settings.probes and say:
        print(f"gmn: adapters are read weights only: --probes {settings.probes} does not apply", flush=True)
    return replace(settings, probes=0)


def _adapters(args, settings, rank: int):
    """A LoRA zoo's adapters in the GL(r) canonical frame (``gmn predict`` reads new adapter folders
    into it), and their settings."""
    from ..zoo.lora import AdapterDataset

    settings = _adapter_settings(args, settings, say=rank == 0)
    return AdapterDataset(args.zoo, _split(args.targets) if args.targets else None, canonical=True), settings


def _write_training(out: Path, args, data, split, result, world: int) -> None:
    """The trained model (self-describing: ``gmn predict`` applies it), the scores and history,
    and the test checkpoints' true and predicted targets, each written atomically."""
    import json
    import sys

    from ..tasks.property import json_safe, save_predictor

    out.mkdir(parents=True, exist_ok=True)
    save_predictor(result.predictor, out / "model.safetensors")
    text = json.dumps({"kind": args.kind, "scores": json_safe(result.scores), "history": result.history,
                       "world_size": world, "test_checkpoints": len(split.test), "zoo": result.predictor.zoo}, indent=1)
    atomic_write(out / "result.json", lambda tmp: Path(tmp).write_text(text))
    paths = [str(Path(args.zoo) / data.members[i]["path"]) for i in split.test.tolist()]
    write_predictions(out / "test_predictions.csv", paths, result.targets, result.pred, result.true)
    for target, score in result.scores.items():
        print(f"{args.kind} {target}: " + "  ".join(f"{k} {v:.4f}" for k, v in score.items())
              + f"  ({len(split.test)} test checkpoints)")
    from ..tasks.benchmark import small_test_warning

    warning = small_test_warning(len(split.test))
    if warning:
        print(f"gmn: {warning}", file=sys.stderr)
    print(f"wrote {out / 'model.safetensors'} (gmn predict applies it), result.json and test_predictions.csv")


def write_predictions(path: Path, paths: list[str], targets: tuple[str, ...], pred, true=None) -> None:
    """A CSV of one row per checkpoint: its path, then per target ``<target>_pred`` (and
    ``<target>_true`` before it when ``true`` is given), floats to 9 digits (float32 exact)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", *(f"{t}_{kind}" for t in targets for kind in (("true", "pred") if true is not None
                                                                          else ("pred",)))])
    for i, name in enumerate(paths):
        cells = [[true[i][j], pred[i][j]] if true is not None else [pred[i][j]] for j in range(len(targets))]
        writer.writerow([name, *(f"{float(v):.9g}" for pair in cells for v in pair)])
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


def _bench_parser(sub) -> None:
    from ..choices import METHODS

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    p = bench.add_parser("property", help="build a zoo, predict accuracy from weights, print the table")
    zoo_options(p)
    p.add_argument("--zoo", help="use this existing zoo folder instead of building one")
    p.add_argument("--out", default="gmn-bench", type=checks.folder, help="folder for the zoo, results and plot")
    p.add_argument("--methods", default="statnn,mlp,gmn",
                   help=f"comma list of {', '.join(METHODS)} (pna: the strong baseline, ~3x GMN's time)")
    p.add_argument("--seeds", type=checks.positive_int, default=3,
                   help="seeds (each its own split and initialisation): mean ± std")
    p.add_argument("--split", type=checks.split_file, metavar="FILE", help=SPLIT_HELP + "; needs --zoo")
    train_options(p)
    _recipe_options(p)
    checks.add_force(p)
    # the main job: a zoo the metanetworks train to convergence on in minutes on 2 cores
    # targets: a model zoo's test_acc,gap or a LoRA zoo's own (a built one's angle,accuracy; an import's columns)
    p.set_defaults(handler=_bench_property, runs=160, train_epochs=30, lr=3e-3, targets=None,
                   outputs=lambda a: ([Path(a.out) / f"property.{x}" for x in ("txt", "json", "png")], [], []))


def _split(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def _bench_property(args) -> int:
    from ..tasks.benchmark import property_benchmark
    from .lora_weights import is_lora

    settings = config(args)
    if is_lora(args.zoo) or not args.zoo and args.preset == "lora":
        return _bench_lora(args, settings)
    table = property_benchmark(args.out, args.preset, args.runs, args.dataset, args.epochs, args.workers,
                               args.backend, args.zoo, _split(args.methods), _split(args.targets or MODEL_TARGETS),
                               _split(args.test_families), settings, seeds=args.seeds, split=args.split,
                               allow_modules=allowed_modules(args))
    print(table)
    print(f"wrote {Path(args.out) / 'property.txt'}, property.json and property.png")
    return 0


def _bench_lora(args, settings) -> int:
    """A LoRA zoo (``--zoo``, or ``--preset lora`` built into ``--out``): StatNN, and each method on raw
    and on GL(r)-canonical adapters (``gmn.tasks.lora_property``), one split per seed for all."""
    from ..tasks.lora_property import lora_property_benchmark, lora_rows

    methods = _split(args.methods)
    lora_rows(methods)  # a method that reads no adapters: one line before the zoo is built
    settings = _adapter_settings(args, settings)
    zoo = args.zoo
    if zoo is None:
        from ..zoo.lora import build_lora_zoo

        zoo = Path(args.out) / "zoo-lora"
        build_lora_zoo(zoo, runs=args.runs, epochs=args.epochs, seed=args.seed, progress=True)
    table = lora_property_benchmark(zoo, args.out, methods, _split(args.targets) if args.targets else None,
                                    settings, seeds=args.seeds)
    print(table)
    print(f"wrote {Path(args.out) / 'property.txt'}, property.json and property.png")
    return 0
