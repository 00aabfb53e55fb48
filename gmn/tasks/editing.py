"""Weight editing: a metanetwork's edge readout changes a model's parameters, and the loss
runs the edited model (``converters.to_state_dict`` + a functional call), so any
differentiable objective on the edited model's outputs trains the editor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

import converters

from ..data import Split, ZooDataset
from ..models import GraphMetanetwork
from ..probes import batch_features, member_probe_features
from .property import TrainConfig, _Trainer


class WeightEditor(nn.Module):
    """New parameter values = old values + the metanetwork's edge output at parameter edges.

    The last layer starts at zero, so an untrained editor is the identity edit; the edit is
    equivariant to every symmetry of the graph (the residual is an edge readout). ``scale``
    multiplies the residual: networks like SIRENs (``sin(30 x)``) move far for small changes.
    ``probes``: inputs at which every neuron's activations join its node features
    (:mod:`gmn.probes`); they are kept, so the editor computes them for any model it edits.
    """

    def __init__(self, hidden: int = 64, layers: int = 4, kind: str = "gmn", aggr: str = "mean",
                 scale: float = 1.0, probes: Tensor | None = None):
        super().__init__()
        self.scale = scale
        self.register_buffer("probes", probes)
        self.net = GraphMetanetwork(hidden, layers, kind=kind, readout="edge", out_dim=1, aggr=aggr,
                                    node_features=0 if probes is None else len(probes))
        nn.init.zeros_(self.net.head[-1].weight)
        nn.init.zeros_(self.net.head[-1].bias)

    def forward(self, g, node_features: Tensor | None = None) -> Tensor:
        """Edited parameter values of every graph of ``g``, in ``converters.parameter_values`` order
        (``node_features``: the probe features of ``g``'s nodes, for an editor with probes)."""
        delta = self.net(g, node_features=node_features)[converters.parameter_edge_mask(g), 0]
        return converters.parameter_values(g) + self.scale * delta


def run_edited(modules: dict[str, nn.Module], keys: list[str], g, values: Tensor, inputs: Tensor) -> list[Tensor]:
    """Each graph's model (``modules[keys[i]]``) run on ``inputs`` with its edited weights;
    differentiable in ``values``."""
    states = converters.to_state_dict(g, values)
    states = states if isinstance(states, list) else [states]
    return [torch.func.functional_call(modules[k], s, (inputs,)) for k, s in zip(keys, states)]


@dataclass
class EditResult:
    """Test loss of the edited models against the unedited ones, per member."""

    edited: np.ndarray
    unedited: np.ndarray
    seconds: float
    history: list[dict] = field(default_factory=list)
    editor: WeightEditor | None = None

    @property
    def summary(self) -> dict[str, float]:
        return {"edited": float(self.edited.mean()), "unedited": float(self.unedited.mean()),
                "edited_std": float(self.edited.std()), "members": len(self.edited)}


def fit_editor(dataset: ZooDataset, split: Split, objective: Callable[[list[Tensor], Tensor], Tensor],
               inputs: Tensor, config: TrainConfig | None = None, out_dir: str | Path | None = None,
               progress: bool = True, scale: float = 1.0, probes: Tensor | None = None) -> EditResult:
    """Train a :class:`WeightEditor` so that ``objective(outputs, member_indices)`` (one loss
    per member, lower is better) falls for the edited models; report it on ``split.test``
    for edited and unedited models. ``probes``: see :class:`WeightEditor`."""
    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    editor = WeightEditor(config.hidden, config.layers, aggr=config.aggr, scale=scale, probes=probes).to(device)
    features = None if probes is None else member_probe_features(dataset, probes.cpu())
    modules = {k: m.to(device) for k, (m, _) in dataset.arch_modules().items()}
    inputs = inputs.to(device)
    train = dataset.index_select(split.train)
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=config.seed)
    loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler)

    def member_losses(batch, values: Tensor) -> Tensor:
        idx = batch.member.cpu()
        keys = [dataset.arch_keys[i] for i in idx.tolist()]
        return objective(run_edited(modules, keys, batch, values, inputs), idx)

    def losses(idx: Tensor, edit: bool) -> Tensor:
        out = []
        for batch in DataLoader(dataset.index_select(idx), batch_size=2 * config.batch_size):
            batch = batch.to(device)
            values = editor(batch, batch_features(features, batch)) if edit else converters.parameter_values(batch)
            out.append(member_losses(batch, values).detach())
        return torch.cat(out).cpu()

    def train_epoch() -> float:
        sampler.set_epoch(trainer.state["epoch"])
        total, count = 0.0, 0
        for batch in loader:
            batch = batch.to(device)
            loss = member_losses(batch, editor(batch, batch_features(features, batch))).mean()
            trainer.step(loss)
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        return total / count

    def val_loss() -> float:
        with torch.no_grad():
            return float(losses(split.val, edit=True).mean())

    trainer = _Trainer("editor", editor, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    with torch.no_grad():
        edited, unedited = losses(split.test, True), losses(split.test, False)
    return EditResult(edited.numpy(), unedited.numpy(), time.perf_counter() - start, trainer.state["history"],
                      editor.cpu())


def dilation_objective(dataset: ZooDataset, images: Tensor) -> Callable[[list[Tensor], Tensor], Tensor]:
    """INR dilation (Navon et al. 2023): MSE between the edited SIREN's image and the 3x3
    grey dilation of the image it was fitted to."""
    from ..zoo.inr import dilate

    targets = dilate(images).reshape(len(images), -1)
    image_of = torch.tensor([m["extra"]["image"] for m in dataset.members])

    def objective(outputs: list[Tensor], idx: Tensor) -> Tensor:
        pred = torch.stack([o.reshape(-1) for o in outputs])
        return F.mse_loss(pred, targets[image_of[idx]].to(pred.device), reduction="none").mean(1)

    return objective


def edit_members(editor: WeightEditor, dataset: ZooDataset, idx: Tensor, batch_size: int = 64) -> list[Tensor]:
    """Edited parameter values of members ``idx`` (one vector each, ``parameter_values`` order)."""
    out = []
    device = next(editor.parameters()).device
    features = None if editor.probes is None else member_probe_features(dataset, editor.probes.cpu(), idx)
    with torch.no_grad():
        for batch in DataLoader(dataset.index_select(idx), batch_size=batch_size):
            batch = batch.to(device)
            values = editor(batch, batch_features(features, batch)).cpu()
            out += list(values.split(batch.num_param_edges.view(-1).tolist()))
    return out


def classifier_objective(inputs_labels: Tensor, forget: int | None = None,
                         forget_weight: float = 5.0) -> Callable[[list[Tensor], Tensor], Tensor]:
    """Classifier editing: cross-entropy of the edited model on fixed inputs whose labels are
    ``inputs_labels`` (raise accuracy without training); with ``forget=k``, cross-entropy on
    the other classes plus ``forget_weight`` times the mean probability given to class ``k``
    (remove one class, keep the rest)."""

    def objective(outputs: list[Tensor], idx: Tensor) -> Tensor:
        logits = torch.stack(outputs)
        labels = inputs_labels.to(logits.device).expand(logits.size(0), -1)
        if forget is None:
            return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
        keep = labels[0] != forget
        ce = F.cross_entropy(logits[:, keep].transpose(1, 2), labels[:, keep], reduction="none").mean(1)
        return ce + forget_weight * logits.softmax(-1)[..., forget].mean(1)

    return objective


def sgd_edit(module: nn.Module, template, values: Tensor, objective: Callable[[list[Tensor], Tensor], Tensor],
             inputs: Tensor, member: int, steps: int, lr: float = 0.05) -> Tensor:
    """The baseline edit: ``steps`` of plain gradient descent on the same objective, from the
    member's own weights (``values`` in ``converters.parameter_values`` order)."""
    values = values.detach().clone().requires_grad_(True)
    for _ in range(steps):
        state = converters.to_state_dict(template, values)
        loss = objective([torch.func.functional_call(module, state, (inputs,))], torch.tensor([member]))
        (grad,) = torch.autograd.grad(loss.sum(), values)
        values = (values - lr * grad).detach().requires_grad_(True)
    return values.detach()
