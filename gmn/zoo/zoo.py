"""A zoo on disk: checkpoint files plus the catalogue; generated or imported from a folder."""

from __future__ import annotations

import csv
import importlib
import math
from pathlib import Path

import torch
from torch import nn

from ..architectures import BUILTIN
from . import datasets
from .catalogue import FILENAME, METRICS, Catalogue
from .families import build


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or ``torch.load(weights_only=True)`` (never pickle)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict (a mapping of names to tensors)")
    return state


class Zoo:
    """The zoo in folder ``root``: ``members`` are its checkpoints with their runs' records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / FILENAME).is_file():
            raise FileNotFoundError(f"{self.root} holds no zoo catalogue ({FILENAME}); build or import one first")
        self.catalogue = Catalogue(self.root)

    def members(self, include_diverged: bool = False) -> list[dict]:
        """Checkpoints (run_id, epoch, path, metrics, extra, family, arch, hparams, status, dataset)."""
        rows = self.catalogue.checkpoints()
        return rows if include_diverged else [r for r in rows if r["status"] != "diverged"]

    def __len__(self) -> int:
        return len(self.members())

    def weights(self, member: dict) -> dict[str, torch.Tensor]:
        return load_weights(self.root / member["path"])

    def model(self, member: dict) -> tuple[nn.Module, torch.Tensor]:
        """A fresh module of the member's architecture (weights not loaded) and an example input."""
        arch = member["arch"]
        if arch["family"] == "builtin":
            factory, example = BUILTIN[arch["name"]]
            return factory(), example()
        if arch["family"] == "module":
            module, attr = arch["name"].split(":", 1)
            model = getattr(importlib.import_module(module), attr)()
            return model, torch.randn(2, *arch["input_shape"])
        if arch["family"] == "siren":
            from .inr import Siren, coordinates

            return Siren(arch["hidden"], arch["depth"]), coordinates()
        if arch["family"] == "onnx":
            raise ValueError("ONNX members carry their own architecture: convert the file itself")
        data = datasets.load(member["dataset"])
        return build(arch, data.input_shape, data.classes), data.x_test[:2]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def import_folder(folder: str | Path, targets: str | Path, arch: str | None = None,
                  input_shape: tuple[int, ...] | None = None) -> Zoo:
    """Catalogue a folder of PyTorch or ONNX checkpoints with a CSV of targets as a zoo.

    The CSV has a ``path`` column (relative to ``folder``), optionally ``run`` (checkpoints
    of one training run share it; splits never separate them), ``epoch``, ``family`` and
    ``arch`` (a built-in name or ``module:attr``; ``arch=`` gives one for all rows), and
    numeric target columns (``test_acc``, ``gap``, ... or any other name).
    """
    folder = Path(folder).resolve()
    with open(targets, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{targets} needs a header with a 'path' column")
    runs: dict[str, dict] = {}
    for i, row in enumerate(rows):
        path = (folder / row["path"]).resolve()
        if not path.is_relative_to(folder):
            raise ValueError(f"row {i + 2} of {targets}: {row['path']!r} leaves the folder {folder}")
        if not path.is_file():
            raise FileNotFoundError(f"row {i + 2} of {targets}: no file {path}")
        name = row.get("arch") or arch
        if path.suffix == ".onnx":
            spec = {"family": "onnx"}
        elif name in BUILTIN:
            spec = {"family": "builtin", "name": name}
        elif name and ":" in name:
            if input_shape is None:
                raise ValueError("a module:attr architecture needs input_shape")
            spec = {"family": "module", "name": name, "input_shape": list(input_shape)}
        else:
            raise ValueError(f"row {i + 2} of {targets}: {row['path']} needs an architecture "
                             f"(an 'arch' column or arch=; built-in: {', '.join(BUILTIN)})")
        family = row.get("family") or name or "onnx"
        run = runs.setdefault(row.get("run") or row["path"], {
            "run_id": row.get("run") or row["path"], "family": family, "arch": spec, "hparams": {},
            "status": "imported", "checkpoints": []})
        numbers = {k: _number(v) for k, v in row.items() if k not in ("path", "run", "epoch", "family", "arch")}
        run["checkpoints"].append({"epoch": int(row.get("epoch") or len(run["checkpoints"])),
                                   "path": str(path.relative_to(folder)),
                                   **{m: numbers.get(m) for m in METRICS},
                                   "extra": {k: v for k, v in numbers.items() if k not in METRICS}})
    catalogue = Catalogue(folder)
    for run in runs.values():
        catalogue.add_run(run)
    catalogue.close()
    return Zoo(folder)
