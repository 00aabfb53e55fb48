"""``gmn predict``: a metanetwork ``gmn train`` wrote, applied to checkpoints of any format gmn reads."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from . import checks

#: checkpoint files that need an architecture (``--arch``, or one the model recognises)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="predict the targets of checkpoints with a model gmn train wrote")
    p.add_argument("model", help="the model gmn train wrote: its --out folder or its model.safetensors")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoints: .safetensors/.pt (of an architecture of the training zoo, or with --arch), "
                        "ONNX files, saved graphs, Hugging Face model folders, built-in names")
    p.add_argument("--arch", help=checks.ARCH_HELP + "; default: the training zoo's architecture whose tensors the "
                                                      "checkpoint holds")
    p.add_argument("--input-shape", type=checks.shape,
                   help="example input shape for --arch (default: the training zoo's), e.g. 1,1,8,8")
    p.add_argument("--allow-module", action="append", default=[], metavar="MODULE:ATTR",
                   help="a Python architecture of the training zoo the model may import (never otherwise)")
    p.add_argument("-o", "--output", type=checks.output_file(".csv"),
                   help="also write the predictions as CSV (path, then <target>_pred per target)")
    checks.add_force(p)
    p.set_defaults(handler=_predict, outputs=lambda a: ([a.output] if a.output else [], [],
                                                        [a.model, *a.checkpoints]))


def _predict(args) -> int:
    import sys

    from ..checkpoints import parse_arch
    from ..tasks.property import load_predictor
    from .train import allowed_modules, write_predictions

    module = (args.arch,) if args.arch and parse_arch(args.arch)["family"] == "module" else ()
    predictor = load_predictor(args.model, allowed_modules(args) + module)  # --arch module:attr allows it too
    _zoo_keys.cache_clear()  # the zoo's catalogue is read once per command, never from an earlier one
    graphs = [_graph(target, args, predictor) for target in args.checkpoints]
    pred = predictor.predict(graphs, list(args.checkpoints))
    for target, g in zip(args.checkpoints, graphs):
        if predictor.unseen(g):
            print(f"gmn: note: {target}: an architecture the metanetwork never trained on (it trained on "
                  f"{', '.join(predictor.zoo.get('families', []))}): a prediction outside what it learned",
                  file=sys.stderr)
    print(_describe(predictor))
    print(_table(args.checkpoints, predictor.targets, pred))
    if args.output:
        write_predictions(Path(args.output), list(args.checkpoints), predictor.targets, pred)
        print(f"wrote {args.output}")
    return 0


def _tau(value) -> str:
    """A saved tau, or n/a where it was undefined (constant predictions: saved as null)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _describe(predictor) -> str:
    """One line: what model this is, what it learned from and how well it did on its test part."""
    zoo, scores = predictor.zoo, predictor.scores
    taus = ", ".join(f"{t} {_tau(scores[t]['tau'])}" for t in predictor.targets if t in scores)
    return (f"{predictor.kind} metanetwork (gmn {predictor.gmn_version}) trained on {zoo.get('members')} checkpoints "
            f"of {zoo.get('path')} ({', '.join(zoo.get('families', []))}); test tau {taus} "
            f"on {zoo.get('split', {}).get('test')} test checkpoints")


def _table(names: list[str], targets: tuple[str, ...], pred) -> str:
    width = max(len("checkpoint"), *(len(n) for n in names)) + 2
    lines = [f"{'checkpoint':<{width}}" + "".join(f"{t:>14}" for t in targets)]
    lines += [f"{name:<{width}}" + "".join(f"{float(v):>14.4f}" for v in row) for name, row in zip(names, pred)]
    return "\n".join(lines)


def _zoo_architecture(path: Path, predictor) -> list:
    """``[architecture]`` when ``path`` is a checkpoint of the training zoo (its catalogue names
    the architecture: activations and other settings no tensor shows), else ``[]``."""
    root = Path(predictor.zoo.get("path", ""))
    if not root.is_absolute() or not path.resolve().is_relative_to(root):
        return []
    key = _zoo_keys(str(root)).get(str(path.resolve().relative_to(root)))
    return [a for a in predictor.architectures if a.key == key] if key else []


@functools.cache
def _zoo_keys(root: str) -> dict[str, str]:
    """The zoo's checkpoints (paths in the zoo) and their architecture keys, read once; none
    when the folder holds no zoo any more."""
    from ..data import architecture_key
    from ..zoo import Zoo

    if not (Path(root) / "catalogue.sqlite").is_file():
        return {}
    zoo = Zoo(root)
    try:
        return {m["path"]: architecture_key(m, zoo) for m in zoo.members(include_diverged=True)}
    finally:
        zoo.catalogue.close()


def _graph(target: str, args, predictor):
    """The parameter graph of one checkpoint: a saved graph as saved; a checkpoint file with
    ``--arch`` as that architecture (a zoo family or module:attr at the zoo's input shape),
    without it as the training zoo's architecture that the zoo's catalogue names for it or whose
    tensor names and shapes it holds; anything else as ``gmn convert`` reads it."""
    import converters
    from converters import ConversionError

    from .convert import load_target

    path = Path(target)
    if args.arch is None and _lora_predictor(predictor):
        return _zoo_adapter(path, predictor)
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        try:
            return converters.load_graph(path)  # a saved graph carries its architecture (--arch is for the others)
        except ConversionError:
            pass
        if args.arch is None:
            return _zoo_checkpoint(path, predictor)
    return load_target(target, args.arch, _input_shape(target, args, predictor), "float")


def _lora_predictor(predictor) -> bool:
    """Whether the metanetwork learned from a LoRA zoo (``gmn train`` on adapters)."""
    return any(a.spec.get("family") == "lora" for a in predictor.architectures)


def _zoo_adapter(path: Path, predictor):
    """A PEFT adapter folder read against the training zoo's base, in the GL(r) canonical frame the
    metanetwork learned in (``gmn train`` on a LoRA zoo)."""
    from adapters import from_peft, is_adapter_folder

    from .. import lora
    from ..zoo.lora import is_lora_zoo, zoo_base

    root = Path(predictor.zoo.get("path", ""))
    if not is_adapter_folder(path):
        raise ValueError(f"{path}: the metanetwork learned from adapters; give PEFT adapter folders "
                         f"(adapter_config.json + adapter_model.safetensors)")
    if not (root.is_dir() and is_lora_zoo(root)):
        raise ValueError(f"{path}: an adapter is read against the base of the metanetwork's training zoo, and "
                         f"{root} is no LoRA zoo (any more)")
    base, example = zoo_base(root)
    return lora.canonicalise(from_peft(path, base=base, example_inputs=example))


def _zoo_checkpoint(path: Path, predictor):
    """A checkpoint of one of the training zoo's architectures, as a graph."""
    import converters

    from ..checkpoints import load_state, load_weights

    found = _zoo_architecture(path, predictor) or predictor.match(load_weights(path))
    if len(found) != 1:
        what = "none" if not found else f"{len(found)} ({'; '.join(json.dumps(a.spec) for a in found)})"
        raise ValueError(f"{path}: its tensors fit {what} of the metanetwork's training architectures; "
                         f"name its architecture with --arch")
    model, example = predictor.module(found[0])
    load_state(model, path)
    return converters.from_torch(model.eval(), example)


def _input_shape(target: str, args, predictor) -> tuple[int, ...] | None:
    """``--input-shape``; else, for a zoo family or module:attr (``--arch`` or the target
    itself), a batch of two of the training zoo's inputs; else None (the model's own example)."""
    from ..checkpoints import parse_arch

    text = args.arch or (None if Path(target).exists() else target)
    if args.input_shape or text is None or predictor.input_shape is None:
        return args.input_shape
    try:
        family = parse_arch(text)["family"]
    except ValueError:  # not an architecture: load_target says what it is not
        return None
    return None if family == "builtin" else (2, *predictor.input_shape)
