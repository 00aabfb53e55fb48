"""``gmn inspect`` and ``gmn convert``: a model of any format gmn reads, as a parameter graph."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
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


def load_target(target: str, arch: str | None, input_shape: str | tuple | None, dtype: str, base: str | None = None,
                templates=None) -> ParameterGraph:
    """A parameter graph of anything gmn reads (``gmn.checkpoints.load_graph``), traced with
    ``--input-shape``/``--input-dtype`` inputs when given."""
    shape = _shape(input_shape) if input_shape else None
    example = _example(input_shape, dtype, None) if shape else None
    return load_graph(target, arch, shape[1:] if shape else None, example=example, progress=True, base=base,
                      templates=templates)


MODEL_HELP = ("ONNX file, saved graph, checkpoint (with --arch), Hugging Face model folder (config.json + "
              "safetensors), PEFT adapter folder (adapter_config.json; --base names its base), built-in name or "
              "module:attr")


def add_parsers(sub) -> None:
    for name, text in (("inspect", "print a model's parameter-graph summary"),
                       ("convert", "convert models and save their parameter graphs (files of one architecture are "
                                   "traced once)")):
        p = sub.add_parser(name, help=text)
        if name == "convert":
            p.add_argument("model", nargs="+", help=MODEL_HELP + "; several: -o is a folder")
        else:
            p.add_argument("model", help=MODEL_HELP)
        p.add_argument("--arch", help=checks.ARCH_HELP)
        p.add_argument("--base", help="with an adapter folder: its base model (a Hugging Face folder, built-in name, "
                                      "JSON or module:attr); without it each adapted module's neurons are its own")
        p.add_argument("--input-shape", type=checks.shape, help="example input shape, e.g. 1,3,32,32")
        p.add_argument("--input-dtype", default="float", choices=("float", "long"),
                       help="example input dtype (long: token ids)")
        if name == "convert":
            p.add_argument("-o", "--output", required=True,
                           help="where to write the graph (.pt); with several models, a folder (one <name>.pt each)")
            p.set_defaults(outputs=lambda a: (_outputs(a.model, a.output), [], a.model))
        else:
            p.add_argument("--graphml", type=checks.output_file(".graphml"),
                           help="also write the graph as GraphML (small graphs)")
            p.set_defaults(outputs=lambda a: ([a.graphml] if a.graphml else [], [], [a.model]))
        p.set_defaults(handler=_convert)
        checks.add_force(p)


def _outputs(models: list[str], output: str) -> list[Path]:
    """Where each graph goes: ``output`` itself for one model, ``output/<name>.pt`` for several
    (names must differ). Checked before any work."""
    if len(models) == 1:
        try:
            return [Path(checks.output_file(".pt")(output))]
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"-o: {err}") from None
    folder = Path(output)
    if folder.suffix == ".pt" or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"-o {output}: with {len(models)} models, -o is a folder (one <name>.pt per model)")
    if not folder.parent.is_dir():
        raise ValueError(f"-o {output}: no such folder {folder.parent} to make it in")
    files = [folder / f"{Path(m.rstrip('/')).stem}.pt" for m in models]
    if len(set(files)) < len(files):
        raise ValueError(f"-o {output}: two models have one name; convert them into separate folders")
    return files


def _convert(args) -> int:
    if args.command == "convert" and len(args.model) > 1:
        return _convert_many(args)
    model = args.model[0] if args.command == "convert" else args.model
    start = time.perf_counter()
    g = load_target(model, args.arch, args.input_shape, args.input_dtype, args.base)
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


def _convert_many(args) -> int:
    """Several models into ``-o``'s folder: models of one architecture share one trace
    (``converters.Templates``); a file that does not fit its architecture stops the command
    naming it."""
    files = _outputs(args.model, args.output)
    files[0].parent.mkdir(exist_ok=True)
    templates = converters.Templates()
    start = time.perf_counter()
    for model, out in zip(args.model, files):
        g = load_target(model, args.arch, args.input_shape, args.input_dtype, args.base, templates)
        atomic_write(out, lambda tmp, g=g: converters.save_graph(g, tmp))
        print(f"{model}: {g.num_nodes} nodes, {int(g.num_param_edges.sum())} parameters -> {out}")
    print(f"converted {len(files)} models ({len(templates)} traced) in {time.perf_counter() - start:.2f} s")
    return 0
