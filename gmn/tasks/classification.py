"""Classifying models from their weights (e.g. which digit an INR draws): a graph-level
metanetwork trained with cross-entropy on an integer target of the zoo."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.loader import DataLoader

from ..data import Split, ZooDataset
from ..probes import batch_features, member_probe_features
from .property import TrainConfig, _Trainer, graph_metanetwork, standardised_values


@dataclass
class ClassifierResult:
    """Test predictions of a classifier; an ensemble's are those of its mean class
    probabilities, ``member_accuracy`` each member's own."""

    kind: str
    predicted: np.ndarray
    true: np.ndarray
    seconds: float
    history: list[dict] = field(default_factory=list)
    probabilities: np.ndarray | None = None  #: test members x classes
    member_accuracy: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.true).mean())


def fit_classifier(dataset: ZooDataset, split: Split, kind: str = "gmn", config: TrainConfig | None = None,
                   out_dir: str | Path | None = None, progress: bool = True,
                   probes: Tensor | None = None, augment: Callable | None = None,
                   members: int = 1) -> ClassifierResult:
    """Train a graph-readout :class:`GraphMetanetwork` of ``kind`` to predict the dataset's
    first target as a class (``0 .. C-1``); early stopping on validation cross-entropy.
    Weights enter standardised per tensor with training-set statistics; with ``probes`` (a
    batch of inputs for the members' models) every neuron also gets its activations on them
    (:func:`gmn.probes.member_probe_features`). ``augment(batch, values, generator)`` changes
    each training batch's raw edge values in a function-preserving way (``gmn.tasks.augment``);
    it cannot be combined with probes, whose activations are computed once per member.

    ``members > 1`` trains an ensemble: networks initialised with seeds ``config.seed + k``
    (the first is the single classifier), each stopped on its own validation loss, predicting
    the class of their mean softmax probability."""
    if augment is not None and probes is not None:
        raise ValueError("augment changes the weights every batch; probe activations are computed once per member")
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    config = config or TrainConfig()
    labels = dataset.y[:, 0].long()
    if not torch.equal(labels.float(), dataset.y[:, 0]) or labels.min() < 0:
        raise ValueError(f"target {dataset.target_names[0]!r} is not a class index (non-negative integers)")
    start = time.perf_counter()
    features = None if probes is None else member_probe_features(dataset, probes.cpu())
    stds = dataset.parameter_std(split.train)  # one value scale for every member
    fits = [_fit_member(dataset, split, kind, replace(config, seed=config.seed + k), labels, stds,
                        features, 0 if probes is None else len(probes), augment, out_dir, progress,
                        f"{kind}-classifier" + (f"-{k}" if k else ""))
            for k in range(members)]
    true = labels[split.test].numpy()
    probabilities = torch.stack([p for p, _ in fits]).mean(0)
    return ClassifierResult(kind, probabilities.argmax(-1).numpy(), true, time.perf_counter() - start,
                            fits[0][1], probabilities.numpy(),
                            [float((p.argmax(-1).numpy() == true).mean()) for p, _ in fits])


def _fit_member(dataset: ZooDataset, split: Split, kind: str, config: TrainConfig, labels: Tensor,
                stds: dict[str, Tensor], features: dict[int, Tensor] | None, node_features: int,
                augment: Callable | None, out_dir: str | Path | None, progress: bool,
                name: str) -> tuple[Tensor, list[dict]]:
    """One classifier trained with ``config.seed``: its test softmax probabilities and history."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    net = graph_metanetwork(config, kind, int(labels.max()) + 1, node_features).to(device)
    loader = DataLoader(dataset.index_select(split.train), batch_size=config.batch_size, shuffle=True)

    generator = torch.Generator().manual_seed(config.seed)

    def forward(batch, train: bool = False) -> Tensor:
        batch = batch.to(device)
        values = augment(batch, batch.edge_value, generator) if train and augment is not None else None
        return net(batch, standardised_values(batch, stds, dataset.arch_keys, values),
                   batch_features(features, batch))

    def logits(idx: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([forward(b).cpu()
                              for b in DataLoader(dataset.index_select(idx), batch_size=2 * config.batch_size)])

    def train_epoch() -> float:
        total, count = 0.0, 0
        for batch in loader:
            loss = F.cross_entropy(forward(batch, train=True), batch.y[:, 0].long().to(device))
            trainer.step(loss)
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        return total / count

    def val_loss() -> float:
        return float(F.cross_entropy(logits(split.val), labels[split.val]))

    trainer = _Trainer(name, net, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    return logits(split.test).softmax(-1), trainer.state["history"]


__all__ = ["ClassifierResult", "fit_classifier"]
