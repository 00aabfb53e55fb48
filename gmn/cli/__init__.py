"""The ``gmn`` command line, one module per command group: ``convert`` (``inspect``, ``convert``),
``zoo`` (``zoo build|import|info``), ``train`` (``train``, ``bench property``), ``predict``, ``weights``
(``edit``, ``generate``), ``merge`` (``align``, ``merge``, ``barrier``), ``retrieve`` (``nearest``: adapters
of a LoRA zoo); ``checks`` holds what every
command checks before any work. This module assembles the parser and turns every failure into one
line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import checks, convert, merge, predict, retrieve, train, weights, zoo


def main(argv: list[str] | None = None) -> int:
    parser = checks.OneLineParser(prog="gmn", description="graph metanetworks over parameter graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    convert.add_parsers(sub)
    zoo.add_parsers(sub)
    train.add_parsers(sub)
    predict.add_parsers(sub)
    weights.add_parsers(sub, train.train_options)
    merge.add_parsers(sub)
    retrieve.add_parsers(sub)
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
        train.check_split(args)


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

    root = Path(__file__).resolve().parents[2]
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
    keys = ("model", "a", "b", "models", "base", "zoo", "root", "folder", "checkpoints")
    for key in keys + (("targets",) if args.command == "zoo" else ()):
        value = getattr(args, key, None)
        words += value if isinstance(value, list) else [value]
    return ", while running gmn " + " ".join(str(w) for w in words if w)


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch has no usable CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")


def _run(args) -> int:
    if args.command in ("edit", "generate"):
        args.config = train.config(args)
    return args.handler(args)
