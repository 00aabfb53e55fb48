"""``gmn inspect`` and ``gmn convert``: a model of any format gmn reads, as a parameter graph."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

import converters
from converters.files import atomic_write

from ..checkpoints import load_graph
from ..summary import summary
from . import checks

if TYPE_CHECKING:
    from converters import ParameterGraph

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


def load_target(target: str, arch: str | None, input_shape: str | tuple | None, dtype: str) -> ParameterGraph:
    """A parameter graph of anything gmn reads (``gmn.checkpoints.load_graph``), traced with
    ``--input-shape``/``--input-dtype`` inputs when given."""
    shape = _shape(input_shape) if input_shape else None
    example = _example(input_shape, dtype, None) if shape else None
    return load_graph(target, arch, shape[1:] if shape else None, example=example, progress=True)


def add_parsers(sub) -> None:
    for name, text in (("inspect", "print a model's parameter-graph summary"),
                       ("convert", "convert a model and save its parameter graph")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="ONNX file, saved graph, checkpoint (with --arch), Hugging Face model folder "
                                     "(config.json + safetensors), built-in name or module:attr")
        p.add_argument("--arch", help=checks.ARCH_HELP)
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
        p.set_defaults(handler=_convert)
        checks.add_force(p)


def _convert(args) -> int:
    start = time.perf_counter()
    g = load_target(args.model, args.arch, args.input_shape, args.input_dtype)
    seconds = time.perf_counter() - start
    print(summary(g))
    print(f"converted in {seconds:.2f} s")
    if args.command == "convert":
        atomic_write(args.output, lambda tmp: converters.save_graph(g, tmp))
        print(f"wrote {args.output}")
    elif args.graphml:
        import networkx as nx

        from ..summary import to_networkx

        if g.num_edges > GRAPHML_EDGES:
            raise ValueError(f"--graphml writes graphs of up to {GRAPHML_EDGES:,} edges; this one has "
                             f"{g.num_edges:,} (gmn convert -o graph.pt saves any size)")
        view = to_networkx(g, GRAPHML_EDGES)
        atomic_write(args.graphml, lambda tmp: nx.write_graphml(view, tmp))
        print(f"wrote {args.graphml}")
    return 0


