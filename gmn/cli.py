"""The ``gmn`` command line: ``gmn inspect`` and ``gmn convert``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

import converters
from converters import ConversionError, ParameterGraph

from .architectures import BUILTIN
from .summary import summary
from .zoo.zoo import load_weights


def _example(shape: str | None, dtype: str, default):
    if shape is None:
        if default is None:
            raise SystemExit("gmn: give --input-shape for this model (e.g. --input-shape 1,3,32,32)")
        return default()
    dims = tuple(int(s) for s in shape.split(","))
    return torch.randint(0, 2, dims) if dtype == "long" else torch.randn(dims)


def load_target(target: str, arch: str | None, input_shape: str | None, dtype: str) -> ParameterGraph:
    """A parameter graph from an ONNX file, a saved graph, a built-in name, a checkpoint +
    --arch, or module:attr."""
    path = Path(target)
    if path.suffix == ".onnx":
        return converters.from_onnx(path, progress=True)
    if path.is_file() and arch is None:
        return converters.load_graph(path)
    default = None
    if path.is_file():
        if arch not in BUILTIN:
            raise SystemExit(f"gmn: unknown --arch {arch!r}; built-in: {', '.join(BUILTIN)}")
        factory, default = BUILTIN[arch]
        model = factory()
        model.load_state_dict(load_weights(path))
    elif target in BUILTIN:
        factory, default = BUILTIN[target]
        model = factory()
    elif ":" in target:
        module, attr = target.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        model = obj() if not isinstance(obj, torch.nn.Module) else obj
        if isinstance(model, tuple):
            model, example = model
            default = lambda: example  # noqa: E731
    else:
        raise SystemExit(f"gmn: {target!r} is no file, built-in model ({', '.join(BUILTIN)}) or module:attr")
    return converters.from_torch(model, _example(input_shape, dtype, default), progress=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gmn", description="graph metanetworks over parameter graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("inspect", "print a model's parameter-graph summary"),
                       ("convert", "convert a model and save its parameter graph")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="ONNX file, saved graph, checkpoint (with --arch), built-in name, "
                                     "or module:attr")
        p.add_argument("--arch", help="built-in architecture of a checkpoint file")
        p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32")
        p.add_argument("--input-dtype", default="float", choices=("float", "long"))
        if name == "convert":
            p.add_argument("-o", "--output", required=True, help="where to write the graph (.pt)")
        else:
            p.add_argument("--graphml", help="also write the graph as GraphML (small graphs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        g = load_target(args.model, args.arch, args.input_shape, args.input_dtype)
    except ConversionError as err:
        print(f"gmn: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(summary(g))
    print(f"converted in {seconds:.2f} s")
    if args.command == "convert":
        converters.save_graph(g, args.output)
        print(f"wrote {args.output}")
    elif args.graphml:
        import networkx as nx

        from .summary import to_networkx

        nx.write_graphml(to_networkx(g), args.graphml)
        print(f"wrote {args.graphml}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
