"""Shared by the benchmark scripts: run one measurement in a fresh process; common options."""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import sys
import types
from pathlib import Path


def run_in_process(target, *args) -> dict:
    """``target(*args, queue)`` in a spawned process (its own peak memory); returns what it puts."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def load_reference(path: str | Path):
    """The graph construction modules of the GMN paper's code (a checkout of
    cptq/graph_metanetworks at ``path``): ``(model_arch_graph, net_makers)``. Its package is also
    called ``gmn`` (a namespace package, without ``__init__``): ours is set aside while theirs
    imports (their names are bound at import) and put back after."""
    folder = Path(path) / "gmn"
    if not (folder / "graph_construct" / "model_arch_graph.py").is_file():
        raise FileNotFoundError(f"{path} is not a checkout of cptq/graph_metanetworks (no gmn/graph_construct)")
    ours = {k: v for k, v in sys.modules.items() if k == "gmn" or k.startswith("gmn.")}
    for k in ours:
        del sys.modules[k]
    theirs = types.ModuleType("gmn")
    theirs.__path__ = [str(folder)]  # found first, whatever else is on sys.path
    sys.modules["gmn"] = theirs
    try:
        graph = importlib.import_module("gmn.graph_construct.model_arch_graph")
        makers = importlib.import_module("gmn.graph_construct.net_makers")
    finally:
        for k in [k for k in sys.modules if k == "gmn" or k.startswith("gmn.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return graph, makers


def metanetwork_options(p: argparse.ArgumentParser, lr: float | None = None) -> None:
    """``--hidden``, ``--layers``, ``--device`` and, given its default, ``--lr``: the
    metanetwork a benchmark trains and where."""
    import torch

    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def parse_with_out(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path]:
    """The parsed arguments and the ``--out`` folder, created."""
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out
