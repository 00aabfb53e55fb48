"""Building a zoo: many training runs, in parallel, resumable.

Runs are numbered; run ``i`` of a zoo with seed ``s`` draws its architecture and
hyperparameters from ``numpy.random.default_rng([s, i])`` and trains with seed
``s * 1_000_003 + i``, so a run is the same whichever worker, process or Ray node trains
it, and a resumed build continues exactly. Workers return weights; this process alone
writes checkpoint files (atomically) and then catalogues the run in one transaction.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from converters.files import atomic_write

from . import datasets
from .catalogue import Catalogue
from .families import PRESETS
from .train import train_run

BACKENDS = ("process", "ray")


def save_checkpoint(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors checkpoint atomically (a crash leaves the old file or none);
    ``metadata`` (strings) goes into its header (``gmn.checkpoints.provenance``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp,
                                             metadata=metadata))


def plan(preset: str, runs: int, dataset: str, epochs: int, checkpoint_epochs: tuple[int, ...],
         seed: int) -> list[dict]:
    """The zoo's runs, without training anything."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    out = []
    for i in range(runs):
        arch, hparams = PRESETS[preset](np.random.default_rng([seed, i]))
        out.append({"run_id": f"run-{i:06d}", "arch": arch, "hparams": hparams, "seed": seed * 1_000_003 + i,
                    "dataset": dataset, "epochs": epochs, "checkpoint_epochs": list(checkpoint_epochs)})
    return out


def _store(root: Path, catalogue: Catalogue, result: dict) -> None:
    for ckpt in result["checkpoints"]:
        rel = Path("checkpoints") / result["run_id"] / f"epoch_{ckpt['epoch']:03d}.safetensors"
        save_checkpoint({k: torch.tensor(v) for k, v in ckpt.pop("state").items()}, root / rel)
        ckpt["path"] = str(rel)
    catalogue.add_run(result)


def _run_processes(todo: list[dict], workers: int) -> Iterator[dict]:
    if workers <= 1:
        yield from map(train_run, todo)
        return
    # spawn, not fork: forking a process that already runs torch threads can deadlock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        for future in as_completed([pool.submit(train_run, run) for run in todo]):
            yield future.result()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker: exit as soon as the build that started it is gone (``kill -9`` of the build
    leaves no idle workers behind). A daemon thread polls the parent pid."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_ray(todo: list[dict], workers: int) -> Iterator[dict]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--backend ray needs Ray: pip install 'ray[default]'") from err
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")  # a running cluster; else a local one
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False)
    remote = ray.remote(num_cpus=1)(train_run)
    pending = [remote.remote(run) for run in todo]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


def build_zoo(root: str | Path, preset: str = "small-cnn", runs: int = 100, dataset: str = "digits",
              epochs: int = 8, checkpoint_epochs: tuple[int, ...] | None = None, seed: int = 0,
              workers: int | None = None, backend: str = "process", progress: bool = True) -> Catalogue:
    """Train the zoo's runs that are not catalogued yet and return its catalogue.

    ``checkpoint_epochs`` defaults to 1, 2, 4, ... up to ``epochs``. A folder already
    holding a zoo with other settings is refused rather than mixed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if checkpoint_epochs is None:
        checkpoint_epochs = tuple(sorted({2**k for k in range(epochs.bit_length()) if 2**k <= epochs} | {epochs}))
    datasets.load(dataset)  # a missing package stops here, before a catalogue records the data set
    root = Path(root)
    catalogue = Catalogue(root)
    settings = {"preset": preset, "dataset": dataset, "epochs": epochs, "checkpoint_epochs": list(checkpoint_epochs),
                "seed": seed}
    old = catalogue.claim(**settings)
    catalogue.set_meta(runs=max(runs, int(old.get("runs", 0))))
    planned = plan(preset, runs, dataset, epochs, checkpoint_epochs, seed)
    recorded = {r["run_id"]: r for r in catalogue.runs()}
    wrong = [r["run_id"] for r in planned if r["run_id"] in recorded
             and (recorded[r["run_id"]]["arch"] != json.loads(json.dumps(r["arch"]))
                  or recorded[r["run_id"]]["seed"] != r["seed"])]
    if wrong:
        catalogue.close()
        raise ValueError(f"{root}: catalogued runs {', '.join(wrong[:5])} do not match this zoo's settings "
                         f"(replaced by an import?); remove them from the catalogue to retrain them")
    todo = [r for r in planned if r["run_id"] not in recorded]
    workers = workers or os.cpu_count() or 1
    execute = _run_ray if backend == "ray" else _run_processes
    with tqdm(total=runs, initial=runs - len(todo), desc=f"zoo {root.name}", unit="run", disable=not progress) as bar:
        for result in execute(todo, workers):
            _store(root, catalogue, result)
            bar.update(1)
    return catalogue
