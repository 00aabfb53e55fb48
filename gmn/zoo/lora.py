"""A LoRA zoo: one base and many PEFT adapters, each trained on one task of a family with a numeric descriptor.

The base is a CNN of the zoo's ``cnn`` family trained once on scikit-learn's digits (shipped in the
package); adapter ``i`` is trained on the digits rotated by an angle drawn for it (the descriptor,
in degrees) and saved as a PEFT folder ``adapters/aNNNN/``. ``catalogue.csv`` lists every adapter with
its angle, rank, alpha, seed and accuracy on its task's test images. Builds are deterministic per seed
and resumable: an adapter whose folder holds ``result.json`` is kept, the rest are trained.
:class:`AdapterDataset` reads a zoo as graphs for the property methods of ``gmn.tasks.property``,
raw or in the GL(r) canonical frame.

Needs ``peft`` (``pip install peft``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Dataset

import converters
from converters.io import atomic_write

from .datasets import TaskData, load
from .families import build

BASE_ARCH = {"family": "cnn", "depth": 2, "width": 16, "kernel": 3, "act": "relu", "dropout": 0.0}
TARGETS = ("convs.0", "convs.1", "head")
MAX_ANGLE = 90.0


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Images ``(N, C, H, W)`` rotated by ``degrees`` about their centre (bilinear, zeros outside)."""
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.size(0), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _fit(model: nn.Module, params, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def base_model(root: Path, data: TaskData, seed: int, epochs: int) -> nn.Module:
    """The zoo's base: trained once and saved (``base.safetensors``), loaded when it exists."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    model = build(BASE_ARCH, data.input_shape, data.classes)
    path = root / "base.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    _fit(model, model.parameters(), data.x_train, data.y_train, epochs, 1e-2, seed)
    atomic_write(path, lambda tmp: save_file(model.state_dict(), tmp))
    return model


def build_lora_zoo(root: str | Path, runs: int = 300, rank: int = 4, alpha: float = 8.0, epochs: int = 3,
                   base_epochs: int = 20, seed: int = 0, progress: bool = False) -> Path:
    """Build (or resume) a LoRA zoo of ``runs`` adapters at ``root``; returns the catalogue's path."""
    import peft

    root = Path(root)
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    settings = {"preset": "lora", "base": BASE_ARCH, "dataset": "digits", "rank": rank, "alpha": alpha,
                "epochs": epochs, "base_epochs": base_epochs, "seed": seed, "targets": list(TARGETS)}
    settings_path = root / "zoo.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{settings_path}: the zoo there was built with other settings; use another folder")
    atomic_write(settings_path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2)))
    data = load("digits")
    base = base_model(root, data, seed, base_epochs)
    rows = []
    for i in range(runs):
        folder = root / "adapters" / f"a{i:04d}"
        if not (folder / "result.json").is_file():
            _train_adapter(peft, base, data, folder, i, settings)
        rows.append(json.loads((folder / "result.json").read_text()))
        if progress and (i + 1) % 50 == 0:
            print(f"{i + 1}/{runs} adapters", flush=True)
    catalogue = root / "catalogue.csv"

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(catalogue, write)
    return catalogue


def _train_adapter(peft, base: nn.Module, data: TaskData, folder: Path, i: int, settings: dict) -> None:
    rng = np.random.default_rng([settings["seed"], i])
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    run_seed = int(rng.integers(2**31))
    torch.manual_seed(run_seed)
    config = peft.LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], target_modules=list(TARGETS))
    model = peft.get_peft_model(copy.deepcopy(base), config)
    x_train, x_test = rotate(data.x_train, angle), rotate(data.x_test, angle)
    _fit(model, [p for p in model.parameters() if p.requires_grad], x_train, data.y_train, settings["epochs"],
         1e-2, run_seed)
    model.save_pretrained(folder)
    result = {"path": f"adapters/{folder.name}", "angle": angle, "rank": settings["rank"],
              "alpha": settings["alpha"], "seed": run_seed, "accuracy": _accuracy(model, x_test, data.y_test),
              "base_accuracy": _accuracy(base, x_test, data.y_test)}
    atomic_write(folder / "result.json", lambda tmp: Path(tmp).write_text(json.dumps(result)))


class AdapterDataset(Dataset):
    """Adapters of one base as parameter graphs with targets, in the form the property methods of
    ``gmn.tasks.property`` read (``values``, ``templates``, ``arch_keys``, ``y``); with ``canonical``,
    every adapter in the GL(r) canonical frame (``gmn.lora.canonical_values``).

    ``root`` holds ``catalogue.csv``: a ``path`` column (an adapter folder, relative to ``root``) and
    one column per target. ``targets``: by default the zoo's own (a built zoo's angle and accuracy, an
    imported zoo's CSV columns). ``base``: the adapters' base (a module, or a Hugging Face folder, as
    ``from_peft`` takes it); by default the zoo's own (:func:`zoo_base`). Adapters of one layout (names
    and shapes) share a template graph. ``base_weights``: the adapted layers' base weights as edge
    features (``from_peft(base_weights=True)``), the same in every graph of the zoo."""

    def __init__(self, root: str | Path, targets: tuple[str, ...] | None = None, canonical: bool = False,
                 base=None, example_inputs=None, base_weights: bool = False):
        super().__init__(None)
        from adapters import from_peft

        from .. import lora

        root = Path(root)
        targets = zoo_targets(root) if targets is None else tuple(targets)
        self.rows = _catalogue(root, targets)
        if base is None:
            base, example_inputs = zoo_base(root)
        self.target_names = tuple(targets)
        self.y = torch.tensor([[float(r[t]) for t in targets] for r in self.rows])
        self.values, self.buffers, self.templates, self.arch_keys = [], [], {}, []
        for row in self.rows:
            g = from_peft(_inside(root, row["path"]), base=base, example_inputs=example_inputs,
                          base_weights=base_weights)
            key = json.dumps([[n, list(s)] for n, s, _ in g.param_index.params])
            self.templates.setdefault(key, converters.with_values(g, converters.parameter_values(g)))
            self.arch_keys.append(key)
            self.values.append((lora.canonical_values(g)[0] if canonical else converters.parameter_values(g)).float())
            self.buffers.append({})
        self.run = torch.arange(len(self.rows))
        self.family = ["lora"] * len(self.rows)
        # what a trained predictor records of its zoo (gmn.tasks.property.Predictor), as ZooDataset has it
        self.zoo = SimpleNamespace(root=root)
        self.members = [{"path": row["path"], "arch": {"family": "lora", "layout": key}, "dataset": None}
                        for row, key in zip(self.rows, self.arch_keys)]
        self._content_hash: str | None = None

    @property
    def content_hash(self) -> str:
        """SHA-256 of the catalogue and every adapter's weights: another for any change."""
        import hashlib

        if self._content_hash is None:
            digest = hashlib.sha256((self.zoo.root / CATALOGUE).read_bytes())
            for row in self.rows:
                for weights in sorted(_inside(self.zoo.root, row["path"]).rglob("adapter_model.safetensors")):
                    digest.update(weights.read_bytes())
            self._content_hash = digest.hexdigest()
        return self._content_hash

    def len(self) -> int:
        return len(self.rows)

    # a zoo's member graph and value scales, read from the same fields as ZooDataset's
    def get(self, idx: int):
        from ..data.zoo_dataset import ZooDataset

        g = ZooDataset.get(self, idx)
        g.edge_value = g.edge_value.float()
        return g

    def parameter_std(self, indices: Tensor) -> dict[str, Tensor]:
        from ..data.zoo_dataset import ZooDataset

        return ZooDataset.parameter_std(self, indices)


SETTINGS, CATALOGUE = "zoo.json", "catalogue.csv"
#: a built zoo's targets (an imported zoo's are its CSV's columns, recorded in zoo.json)
BUILT_TARGETS = ("angle", "accuracy")


def zoo_settings(root: str | Path) -> dict | None:
    """A LoRA zoo's ``zoo.json`` (None when ``root`` has none), checked: read only when small, an
    object of preset ``lora``, and, for an import, written with the ``catalogue.csv`` that is there
    (an import killed between its two files leaves a pair that does not match)."""
    import hashlib

    from converters.limits import MAX_JSON_BYTES

    path = Path(root) / SETTINGS
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: beyond the {MAX_JSON_BYTES:,} bytes a zoo's settings may have")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(settings, dict) or settings.get("preset") != "lora":
        return None
    digest = settings.get("catalogue_sha256")
    catalogue = Path(root) / CATALOGUE
    if digest is not None and (not catalogue.is_file()
                               or hashlib.sha256(catalogue.read_bytes()).hexdigest() != digest):
        raise ValueError(f"{catalogue}: not the catalogue {SETTINGS} was written with (an import was interrupted); "
                         f"import the folder again (gmn zoo import ... --replace)")
    return settings


def is_lora_zoo(root: str | Path) -> bool:
    """Whether ``root`` is a LoRA zoo (built by ``build_lora_zoo`` or imported by ``import_adapters``)."""
    return zoo_settings(root) is not None


def zoo_targets(root: str | Path) -> tuple[str, ...]:
    """The zoo's targets: an imported zoo's CSV columns, else a built zoo's angle and accuracy."""
    settings = zoo_settings(root) or {}
    names = settings.get("descriptors") if settings.get("imported") else BUILT_TARGETS
    if not (isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{Path(root) / SETTINGS}: descriptors must be a list of column names")
    return tuple(names)


def zoo_base(root: str | Path) -> tuple[nn.Module, tuple | None]:
    """The zoo's base (its real weights for a built zoo; a meta-device or fresh module for an imported
    one: adapters are read against its shapes) and an example input for its forward (None: the
    model's own)."""
    root = Path(root)
    settings = zoo_settings(root)
    if settings is None:
        raise ValueError(f"{root}: no {SETTINGS} (not a gmn LoRA zoo): pass the adapters' base")
    if settings.get("imported"):
        from .adapter_import import base_from_record

        return base_from_record(settings.get("base"), root / SETTINGS)
    if not (root / "base.safetensors").is_file():
        raise ValueError(f"{root}: no base.safetensors (a built LoRA zoo keeps its base there)")
    data = load(settings.get("dataset", "digits"))
    return base_model(root, data, 0, 0), (data.x_test[:1],)


def nearest_adapters(root: str | Path, query: str | Path, k: int = 5) -> list[tuple[dict, float]]:
    """The ``k`` adapters of the zoo nearest to the adapter folder ``query`` (read against the zoo's
    base), by the distance of their weight updates (``gmn.lora.nearest``) in the GL(r) canonical frame:
    ``(catalogue row, distance)``, nearest first. Any ``(B M^-1, M A)`` of the query retrieves the same."""
    from adapters import from_peft

    from .. import lora

    base, example = zoo_base(root)
    q = lora.canonicalise(from_peft(query, base=base, example_inputs=example))
    zoo = AdapterDataset(root, canonical=True, base=base, example_inputs=example)
    found = lora.nearest(q, [zoo.get(i) for i in range(len(zoo))], k=k)
    return [(zoo.rows[i], d) for i, d in found]


def _catalogue(root: Path, targets: tuple[str, ...]) -> list[dict]:
    """``catalogue.csv``'s rows, every target a finite number, or one line naming the row."""
    path = root / "catalogue.csv"
    if not path.is_file():
        raise ValueError(f"{root}: no catalogue.csv (a path column and one column per target)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows, start=2):
        for t in ("path", *targets):
            if row.get(t) in (None, ""):
                raise ValueError(f"{path} line {i}: no {t}")
        for t in targets:
            try:
                ok = math.isfinite(float(row[t]))
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{path} line {i}: {t} is {row[t]!r:.40}, not a finite number")
    if not rows:
        raise ValueError(f"{path}: no adapters")
    return rows


def _inside(root: Path, relative: str) -> Path:
    """An adapter folder of the catalogue: inside ``root``, never through a link out of it."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{root / 'catalogue.csv'}: {relative!r:.80} is outside the zoo")
    return path


__all__ = ["AdapterDataset", "build_lora_zoo", "is_lora_zoo", "nearest_adapters", "rotate", "zoo_base", "zoo_settings",
           "zoo_targets"]
