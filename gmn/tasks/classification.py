"""Classifying models from their weights (e.g. which digit an INR draws): a graph-level
metanetwork trained with cross-entropy on an integer target of the zoo."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    kind: str
    predicted: np.ndarray
    true: np.ndarray
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.true).mean())


def fit_classifier(dataset: ZooDataset, split: Split, kind: str = "gmn", config: TrainConfig | None = None,
                   out_dir: str | Path | None = None, progress: bool = True,
                   probes: Tensor | None = None, augment: Callable | None = None) -> ClassifierResult:
    """Train a graph-readout :class:`GraphMetanetwork` of ``kind`` to predict the dataset's
    first target as a class (``0 .. C-1``); early stopping on validation cross-entropy.
    Weights enter standardised per tensor with training-set statistics; with ``probes`` (a
    batch of inputs for the members' models) every neuron also gets its activations on them
    (:func:`gmn.probes.member_probe_features`). ``augment(batch, values, generator)`` changes
    each training batch's raw edge values in a function-preserving way (``gmn.tasks.augment``);
    it cannot be combined with probes, whose activations are computed once per member."""
    if augment is not None and probes is not None:
        raise ValueError("augment changes the weights every batch; probe activations are computed once per member")
    config = config or TrainConfig()
    labels = dataset.y[:, 0].long()
    if not torch.equal(labels.float(), dataset.y[:, 0]) or labels.min() < 0:
        raise ValueError(f"target {dataset.target_names[0]!r} is not a class index (non-negative integers)")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    features = None if probes is None else member_probe_features(dataset, probes.cpu())
    net = graph_metanetwork(config, kind, int(labels.max()) + 1, 0 if probes is None else len(probes)).to(device)
    loader = DataLoader(dataset.index_select(split.train), batch_size=config.batch_size, shuffle=True)
    stds = dataset.parameter_std(split.train)

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

    trainer = _Trainer(f"{kind}-classifier", net, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    predicted = logits(split.test).argmax(-1)
    return ClassifierResult(kind, predicted.numpy(), labels[split.test].numpy(), time.perf_counter() - start,
                            trainer.state["history"])


__all__ = ["ClassifierResult", "fit_classifier"]
