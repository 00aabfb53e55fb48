"""Shared by the benchmark scripts: run one measurement in a fresh process; common options."""

from __future__ import annotations

import argparse
import multiprocessing as mp
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
