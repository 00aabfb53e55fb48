"""Shared by the benchmark scripts: run one measurement in a fresh process."""

from __future__ import annotations

import multiprocessing as mp


def run_in_process(target, *args) -> dict:
    """``target(*args, queue)`` in a spawned process (its own peak memory); returns what it puts."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row
