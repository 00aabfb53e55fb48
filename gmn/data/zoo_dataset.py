"""A zoo as a PyG dataset of parameter graphs with targets.

Each architecture is traced once; a member's graph is its architecture's graph with the
member's weights as edge values. The converted values are cached on disk next to the
catalogue (written atomically, read with ``weights_only``), so a zoo converts once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Dataset
from tqdm.auto import tqdm

import converters
from converters import ConversionError, ParameterGraph, ParamIndex
from converters.io import save_atomic

from ..zoo import Zoo
from ..zoo.catalogue import METRICS


def _arch_key(member: dict) -> str:
    if member["arch"]["family"] == "onnx":
        return "onnx:" + member["path"]
    arch = {k: v for k, v in member["arch"].items() if k != "dropout"}  # identity in eval: same graph
    return json.dumps([arch, member["dataset"]], sort_keys=True)


def state_values(index: ParamIndex, state: dict[str, Tensor], where: str = "checkpoint") -> Tensor:
    """A state dict's parameters as one vector in graph order (``converters.parameter_values``)."""
    parts = []
    for name, shape, _ in index.params:
        if name not in state:
            raise ConversionError(f"{where}: the checkpoint has no parameter {name!r}")
        if tuple(state[name].shape) != tuple(shape):
            raise ConversionError(f"{where}: {name} has shape {tuple(state[name].shape)}, the architecture "
                                  f"expects {tuple(shape)}")
        parts.append(state[name].reshape(-1).float())
    return torch.cat(parts)


class ZooDataset(Dataset):
    """The checkpoints of ``zoo`` as :class:`ParameterGraph` s; ``y`` holds ``targets``.

    Targets are catalogue metrics (``test_acc``, ``gap``, ``test_loss``, ...) or extra
    columns of an imported zoo. Every graph also carries ``member`` (its index here),
    ``run`` (an integer per training run, for grouped splits) and ``family``. Diverged runs
    are left out unless asked for. ``allow_modules``: Python ``module:attr`` architectures
    the catalogue may name (see :class:`~gmn.zoo.Zoo`).
    """

    def __init__(self, zoo: Zoo | str | Path, targets: tuple[str, ...] = ("test_acc",), cache: bool = True,
                 include_diverged: bool = False, progress: bool = True, allow_modules: tuple[str, ...] = ()):
        super().__init__(None)
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo, allow_modules)
        self.target_names = tuple(targets)
        self.members = self.zoo.members(include_diverged)
        if not self.members:
            raise ValueError(f"the zoo at {self.zoo.root} has no checkpoints")
        self.y = torch.tensor([[self._target(m, t) for t in self.target_names] for m in self.members])
        runs = sorted({m["run_id"] for m in self.members})
        self.run = torch.tensor(_positions([m["run_id"] for m in self.members], runs))
        self.family = [m["family"] for m in self.members]
        self.arch_keys = [_arch_key(m) for m in self.members]
        self._load(cache, progress)

    def _target(self, member: dict, name: str) -> float:
        value = member.get(name) if name in METRICS else member["extra"].get(name)
        if value is None:
            raise ValueError(f"checkpoint {member['path']} has no target {name!r}")
        return float(value)

    def _cache_path(self) -> Path:
        listing = json.dumps([(m["run_id"], m["epoch"], m["path"], k) for m, k in zip(self.members, self.arch_keys)])
        digest = hashlib.sha1(listing.encode()).hexdigest()[:16]
        return self.zoo.root / "processed" / f"graphs-{digest}.pt"

    def _load(self, cache: bool, progress: bool) -> None:
        path = self._cache_path()
        if cache and path.is_file():
            payload = torch.load(path, weights_only=True)
            self.templates = {k: converters.graph_from_dict(v) for k, v in payload["templates"].items()}
            self.values, self.buffers = payload["values"], payload["buffers"]
            return
        self.templates, self.values, self.buffers = {}, [], []
        for member, key in tqdm(list(zip(self.members, self.arch_keys)), desc="converting zoo", unit="ckpt",
                                disable=not progress):
            values, state = self._convert(member, key)
            self.values.append(values)
            self.buffers.append({k: state[k] for k in self.templates[key].param_index.buffers if k in state})
        if cache:
            path.parent.mkdir(exist_ok=True)
            save_atomic({"templates": {k: converters.graph_to_dict(g) for k, g in self.templates.items()},
                          "values": self.values, "buffers": self.buffers}, path)

    def _convert(self, member: dict, key: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The member's parameter values and its checkpoint (read once: buffers come from it too)."""
        path = self.zoo.path(member)  # confined to the zoo folder, like every read
        where = str(path)
        if member["arch"]["family"] == "onnx":
            g = converters.from_onnx(path)
            self.templates[key] = _detached(g)
            return converters.parameter_values(g), g.param_index.buffers
        if key not in self.templates:
            model, example = self.zoo.model(member)
            self.templates[key] = _detached(converters.from_torch(model, example))
        state = self.zoo.weights(member)
        return state_values(self.templates[key].param_index, state, where), state

    def len(self) -> int:
        return len(self.members)

    def get(self, idx: int) -> ParameterGraph:
        template = self.templates[self.arch_keys[idx]]
        g = converters.with_values(template, self.values[idx], self.buffers[idx] or None)
        g.y = self.y[idx].view(1, -1)
        g.run = self.run[idx].view(1)
        g.member = torch.tensor([idx])
        g.family = self.family[idx]
        return g

    def parameter_std(self, indices: Tensor) -> dict[str, Tensor]:
        """Per architecture: every parameter tensor's standard deviation over the members
        ``indices``, repeated per scalar (``converters.parameter_values`` order). Dividing by
        it puts weights of very different scales (SIRENs' ``w0 = 30``) in one range."""
        out = {}
        for key, template in self.templates.items():
            rows = [self.values[i] for i in indices.tolist() if self.arch_keys[i] == key]
            if not rows:
                continue
            stacked = torch.stack(rows)
            std = torch.empty(stacked.size(1))
            for name, _, _ in template.param_index.params:
                ids = template.param_index.edge_ids(name)
                std[ids] = stacked[:, ids].std().clamp_min(1e-8) if stacked[:, ids].numel() > 1 else 1.0
            out[key] = std
        return out

    def arch_modules(self) -> dict[str, tuple[torch.nn.Module, Tensor]]:
        """One module (eval mode, weights not loaded: run it with ``functional_call``) and an
        example input per architecture of the zoo."""
        out = {}
        for member, key in zip(self.members, self.arch_keys):
            if key not in out:
                module, example = self.zoo.model(member)
                out[key] = module.eval(), example
        return out

    def model(self, idx: int) -> tuple[torch.nn.Module, Tensor]:
        """The member as a runnable module with its weights, and an example input."""
        member = self.members[idx]
        model, example = self.zoo.model(member)
        model.load_state_dict(self.zoo.weights(member))
        return model.eval(), example


def _positions(items: list[str], order: list[str]) -> list[int]:
    where = {k: i for i, k in enumerate(order)}
    return [where[k] for k in items]


def _detached(g: ParameterGraph) -> ParameterGraph:
    """The graph without live objects (the traced module), as it would be loaded from disk."""
    return converters.graph_from_dict(converters.graph_to_dict(g))
