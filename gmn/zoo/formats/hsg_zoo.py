"""The model zoos of Schürholt et al. (HSG-AIML: "Model Zoos", NeurIPS 2022 Datasets and
Benchmarks; the loaders of ``SANE/src/SANE/datasets/dataset_epochs.py`` and
``NeurIPS_2021-Weight_Space_Learning``): one folder per training run with

- ``params.json``: the run's config (``model::type`` CNN, CNN2, CNN3 or MLP,
  ``model::channels_in``, ``model::nlin``, ``model::dropout``, ``model::i_dim``/``h_dim``/``o_dim``,
  ``optim::*``, ``seed``, ...);
- ``result.json``: one JSON object per line, one line per epoch (``train_acc``, ``test_acc``,
  ``train_loss``, ``test_loss``, ``training_iteration``, ...);
- ``checkpoint_<epoch>/checkpoints`` (or ``checkpoint_<epoch:06d>``): the model's state dict.

A checkpoint's metrics are the ``result.json`` line whose ``training_iteration`` equals its
epoch (what ``read_properties`` asserts); lines without it are taken by position, offset by
one when the zoo wrote no ``checkpoint_0`` (their ``idx_offset``). Checkpoints with non-finite
values are left out, as ``load_checkpoint`` does. The split: run folders shuffled by
``random.seed(42); random.shuffle``, cut by ``ds_split`` (0.7/0.15/0.15 here). They shuffle
``Path.iterdir()``'s order, which depends on the file system; we sort the names first, so the
split is reproducible (and theirs only on their machine).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...checkpoints import load_weights
from ..catalogue import METRICS
from ..zoo import Zoo
from .common import FormatError, catalogue_runs, finite, metrics, number, write_checkpoint, write_split

#: HSG-AIML def_net.py: per convolution (in from the config, out, kernel, max-pooled), the
#: linear layers after Flatten, the input side the class assumes
CNNS = {
    "CNN": ([(None, 8, 5, True), (8, 6, 5, True), (6, 4, 2, False)], [(36, 20), (20, 10)], 28),
    "CNN2": ([(None, 6, 5, True), (6, 9, 5, True), (9, 6, 2, False)], [(54, 20), (20, 10)], 28),
    "CNN3": ([(None, 16, 3, True), (16, 32, 3, True), (32, 15, 3, True)], [(60, 20), (20, 10)], 32),
}
DS_SPLIT = (0.7, 0.15, 0.15)
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")


def run_arch(config: dict, where: str) -> dict:
    """The ``hsg-net`` architecture of a run's ``params.json``."""
    kind = config.get("model::type")
    act = config.get("model::nlin", "leakyrelu")
    dropout = number(config.get("model::dropout")) or 0.0
    if kind in CNNS:
        convs, linears, side = CNNS[kind]
        channels = int(config.get("model::channels_in", 1))
        convs = [[channels if a is None else a, b, k, p] for a, b, k, p in convs]
        return {"family": "hsg-net", "type": kind, "convs": convs, "linears": [list(x) for x in linears], "act": act,
                "dropout": dropout, "input_shape": [channels, side, side]}
    if kind == "MLP":
        hidden = config.get("model::h_dim", [])
        hidden = hidden if isinstance(hidden, list) else [hidden]
        sizes = [int(config["model::i_dim"]), *map(int, hidden), int(config["model::o_dim"])]
        if config.get("model::use_bias") is False:
            raise FormatError(f"{where}: an MLP without biases is not supported")
        return {"family": "hsg-net", "type": kind, "convs": [], "linears": [list(x) for x in zip(sizes, sizes[1:])],
                "act": act, "dropout": dropout, "input_shape": [sizes[0]]}
    raise FormatError(f"{where}: model::type {kind!r} is not one of {', '.join([*CNNS, 'MLP'])}")


def hsg_state(state: dict[str, torch.Tensor], arch: dict, where: str) -> dict[str, torch.Tensor]:
    """Their ``module_list.<i>.weight``/``bias`` (indices shift with dropout) in order, as
    :class:`~.architectures.HSGNet`'s ``convs.<i>`` and ``linears.<i>``, shapes checked."""
    layers = [k[: -len(".weight")] for k in state if k.endswith(".weight")]
    names = [f"convs.{i}" for i in range(len(arch["convs"]))] + [f"linears.{i}" for i in range(len(arch["linears"]))]
    shapes = [(b, a, k, k) for a, b, k, _ in arch["convs"]] + [(b, a) for a, b in arch["linears"]]
    if len(layers) != len(names) or len(state) != 2 * len(names):
        raise FormatError(f"{where}: {len(layers)} layers ({len(state)} tensors); a {arch['type']} has {len(names)} "
                          f"layers with biases")
    out = {}
    for theirs, ours, shape in zip(sorted(layers, key=_module_index), names, shapes):
        w, b = state[f"{theirs}.weight"], state.get(f"{theirs}.bias")
        if tuple(w.shape) != shape or b is None or tuple(b.shape) != (shape[0],):
            raise FormatError(f"{where}: {theirs}.weight has shape {tuple(w.shape)}, a {arch['type']} expects {shape}")
        out[f"{ours}.weight"], out[f"{ours}.bias"] = w, b
    return out


def _module_index(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _results(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: not one JSON object per line ({err})") from None


def _checkpoints(run: Path) -> dict[int, Path]:
    out = {}
    for child in run.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and (child / "checkpoints").is_file():
            out[int(match[1])] = child / "checkpoints"
    return out


def import_hsg_zoo(folder: str | Path, out: str | Path | None = None, replace: bool = False,
                   ds_split: tuple[float, ...] = DS_SPLIT, progress: bool = True) -> Zoo:
    """Import an HSG model zoo (a folder of run folders) as a gmn zoo at ``out`` (default
    ``folder``); the split (run folders, seed 42) in ``splits/hsg.json``."""
    folder = Path(folder).resolve()
    out = Path(out) if out is not None else folder
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder")
    ours = {"checkpoints", "splits", "processed"}  # what an import into the folder itself writes there
    all_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and d.name not in ours)
    run_dirs = [d for d in all_dirs if (d / "params.json").is_file()]
    if not run_dirs:
        raise FormatError(f"{folder}: no run folders (each with params.json, result.json, checkpoint_*/checkpoints)")
    runs = []
    skipped = 0
    for run_dir in tqdm(run_dirs, desc=f"importing {folder.name}", unit="run", disable=not progress):
        try:
            config = json.loads((run_dir / "params.json").read_text())
        except (OSError, ValueError) as err:
            raise FormatError(f"{run_dir / 'params.json'}: not a JSON object ({err})") from None
        if not isinstance(config, dict):
            raise FormatError(f"{run_dir / 'params.json'}: not a JSON object")
        arch = run_arch(config, str(run_dir / "params.json"))
        if not (run_dir / "result.json").is_file():
            raise FormatError(f"{run_dir}: no result.json")
        results = _results(run_dir / "result.json")
        by_iteration = {int(r["training_iteration"]): r for r in results if "training_iteration" in r}
        found = _checkpoints(run_dir)
        offset = 0 if 0 in found else 1
        checkpoints = []
        for epoch, path in sorted(found.items()):
            line = by_iteration.get(epoch)
            if line is None and not by_iteration and 0 <= epoch - offset < len(results):
                line = results[epoch - offset]
            if line is None:
                raise FormatError(f"{run_dir / 'result.json'}: no line for epoch {epoch} (training_iteration)")
            try:
                state = load_weights(path)
            except ValueError as err:
                raise FormatError(str(err)) from None
            state = hsg_state(state, arch, str(path))
            if not finite(state):
                skipped += 1
                continue
            rel = f"checkpoints/{run_dir.name}/epoch_{epoch:03d}.safetensors"
            write_checkpoint(out, rel, state)
            extra = {k: v for k, v in ((k, number(v)) for k, v in line.items() if not isinstance(v, (bool, dict)))
                     if v is not None}
            checkpoints.append({"epoch": epoch, "path": rel, "extra": extra,
                                **metrics(line.get("train_acc"), line.get("test_acc"), line.get("train_loss"),
                                          line.get("test_loss"))})
        if not checkpoints:
            continue
        hparams = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}
        seed = config.get("seed")
        runs.append({"run_id": run_dir.name, "family": f"hsg-{arch['type'].lower()}", "arch": arch,
                     "hparams": hparams, "seed": int(seed) if isinstance(seed, (int, float)) else None,
                     "dataset": f"hsg-zoo:{folder.name}", "status": "imported", "checkpoints": checkpoints,
                     **{m: checkpoints[-1].get(m) for m in METRICS}})
    zoo = catalogue_runs(out, runs, replace, {"imported": "hsg-zoo"})
    order = [d.name for d in all_dirs]  # theirs shuffles every folder, then drops what does not load
    random.Random(42).shuffle(order)
    n = len(order)
    cut1 = int(ds_split[0] * n)
    cut2 = cut1 + int(ds_split[1] * n) if len(ds_split) == 3 else n
    part_of = {run_id: "train" if i < cut1 else "val" if i < cut2 else "test" for i, run_id in enumerate(order)}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_id = {r["run_id"]: r for r in runs}
    for run_id in order:
        if run_id in by_id:
            parts[part_of[run_id]] += [c["path"] for c in by_id[run_id]["checkpoints"]]
    write_split(out, "hsg", parts, f"HSG dataset_epochs.py: run folders (sorted) shuffled by random.seed(42), "
                                   f"cut {'/'.join(map(str, ds_split))}")
    zoo.skipped = skipped
    return zoo
