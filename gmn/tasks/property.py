"""Property prediction: predict a model's test accuracy (or gap, ...) from its weights.

Methods, all on the same split: a graph metanetwork (``gmn``, ``pna``, ``scale_gmn``),
StatNN (per-tensor weight statistics with gradient boosting; Unterthiner et al. 2020) and
an MLP on the flattened weights (single-architecture zoos only). Metrics: Kendall's tau,
R^2 and MAE on the test part.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from converters.io import save_atomic

from ..data import Split, ZooDataset
from ..models import GraphMetanetwork
from ..probes import batch_features, member_probe_features

METANETWORKS = ("gmn", "pna", "scale_gmn")
METHODS = ("statnn", "mlp", "nfn_np", "nfn_hnp", "probe", *METANETWORKS)  # nfn_*, probe: tasks/*_baseline.py


def metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Kendall's tau, R^2 and mean absolute error of one target."""
    from scipy.stats import kendalltau

    tau = kendalltau(pred, true).statistic
    r2 = 1.0 - float(((pred - true) ** 2).sum()) / max(float(((true - true.mean()) ** 2).sum()), 1e-12)
    return {"tau": float(np.nan_to_num(tau)), "r2": r2, "mae": float(np.abs(pred - true).mean())}


@dataclass
class MethodResult:
    """One method's test predictions (``N x targets``) and metrics per target."""

    method: str
    pred: np.ndarray
    true: np.ndarray
    targets: tuple[str, ...]
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        return {t: metrics(self.pred[:, i], self.true[:, i]) for i, t in enumerate(self.targets)}


def _parameter_tensors(dataset: ZooDataset, idx: int) -> list[np.ndarray]:
    values = dataset.values[idx].numpy()
    index = dataset.templates[dataset.arch_keys[idx]].param_index
    return [values[offset : offset + int(np.prod(shape))] for _, shape, offset in index.params]


def _stats(x: np.ndarray) -> list[float]:
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1e6, neginf=-1e6)
    return [x.mean(), x.var(), *np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])]


def statnn_features(dataset: ZooDataset, indices: Tensor) -> np.ndarray:
    """Mean, variance and 0/25/50/75/100 % quantiles of all weights and of every parameter
    tensor; tensors a smaller architecture lacks are NaN (gradient boosting skips them)."""
    rows = []
    for i in indices.tolist():
        tensors = _parameter_tensors(dataset, i)
        rows.append(_stats(np.concatenate(tensors)) + [s for t in tensors for s in _stats(t)])
    width = max(len(r) for r in rows)
    return np.array([r + [np.nan] * (width - len(r)) for r in rows])


def standardised_values(batch, stds: dict[str, Tensor], arch_keys: list[str]) -> Tensor:
    """Every edge value of a batch of zoo graphs, parameter edges divided by their tensor's
    training-set standard deviation (:meth:`ZooDataset.parameter_std`); an architecture no
    training member has keeps its raw values."""
    counts = torch.bincount(batch.batch[batch.edge_index[0]], minlength=batch.num_graphs).tolist()
    scale = []
    for member, edges in zip(batch.member.tolist(), counts):
        std = stds.get(arch_keys[member], torch.ones(0))
        scale += [std, torch.ones(edges - std.numel())]
    return batch.edge_value / torch.cat(scale).to(batch.edge_value.device)


def probe_inputs(dataset: ZooDataset, count: int, seed: int = 0) -> Tensor:
    """``count`` fixed standard-normal inputs of the zoo's input shape (no data needed); every
    architecture of the zoo must take the same shape, and real-valued inputs."""
    shapes = {tuple(example.shape[1:]) for _, example in dataset.arch_modules().values()}
    if len(shapes) != 1:
        raise ValueError(f"probe inputs need one input shape; this zoo's architectures take {sorted(shapes)}")
    return torch.randn(count, *shapes.pop(), generator=torch.Generator().manual_seed(seed))


def _standardiser(y: Tensor) -> tuple[Tensor, Tensor]:
    # one training member has no spread (std is NaN): keep its scale
    return y.mean(0), torch.nan_to_num(y.std(0), nan=1.0).clamp(min=1e-6)


def fit_statnn(dataset: ZooDataset, split: Split, seed: int = 0) -> MethodResult:
    from sklearn.ensemble import HistGradientBoostingRegressor

    start = time.perf_counter()
    x_train = statnn_features(dataset, torch.cat([split.train, split.val]))
    x_test = statnn_features(dataset, split.test)
    # tensors no training model has (a held-out family's extra layers) carry nothing the trees learned
    width = x_train.shape[1]
    x_test = np.pad(x_test[:, :width], ((0, 0), (0, max(0, width - x_test.shape[1]))), constant_values=np.nan)
    y_train = dataset.y[torch.cat([split.train, split.val])].numpy()
    pred = np.stack([HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
                     .fit(x_train, y_train[:, j]).predict(x_test) for j in range(y_train.shape[1])], 1)
    return MethodResult("statnn", pred, dataset.y[split.test].numpy(), dataset.target_names,
                        time.perf_counter() - start)


@dataclass
class TrainConfig:
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 32
    patience: int = 15
    hidden: int = 64
    layers: int = 4
    aggr: str = "mean"
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  #: bf16 autocast on CUDA
    normalise: bool = True  #: parameter edges divided by their tensor's training-set std
    pool: str = "mean+attn"  #: the graph readout's edge pools (GraphMetanetwork's ``pool``)
    value_scale: float = 4.0  #: frequency scale of the edge values' Fourier features
    probes: int = 0  #: every neuron also sees its activations on this many fixed random inputs
    readout_norm: bool = False  #: pooled graph features standardised over the batch (BatchNorm)
    film: bool = False  #: GMN messages gated by the edge state (weight times activation)


def graph_metanetwork(config: TrainConfig, kind: str, out_dim: int,
                      node_features: int | None = None) -> GraphMetanetwork:
    """The graph-readout metanetwork ``config`` describes (``node_features`` default: its probes)."""
    return GraphMetanetwork(config.hidden, config.layers, kind=kind, readout="graph", out_dim=out_dim,
                            aggr=config.aggr, pool=config.pool, value_scale=config.value_scale,
                            readout_norm=config.readout_norm, film=config.film,
                            node_features=config.probes if node_features is None else node_features)


class _Trainer:
    """Epochs of minibatch training with early stopping on validation loss; after every
    epoch its state is saved (atomically) so an interrupted fit resumes where it stopped."""

    def __init__(self, name: str, model: nn.Module, config: TrainConfig, out_dir: Path | None, progress: bool,
                 writes: bool = True):
        self.name, self.model, self.config, self.progress = name, model.to(config.device), config, progress
        self.writes = writes  # False on every rank but 0: they resume from rank 0's files
        self.opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, config.epochs)
        self.path = None if out_dir is None else Path(out_dir) / f"{name}.pt"
        self.state = {"epoch": 0, "best": float("inf"), "bad": 0, "history": [],
                      "best_model": {k: v.clone() for k, v in model.state_dict().items()}}

    def step(self, loss: Tensor, clip: float | None = 1.0) -> None:
        """One optimiser step on ``loss``, gradients clipped to norm ``clip`` (None: not clipped)."""
        self.opt.zero_grad()
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.opt.step()

    def _resume(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        from converters.limits import check_archive  # a state file on disk is checked like any archive

        check_archive(self.path)
        saved = torch.load(self.path, weights_only=True, map_location=self.config.device)
        self.model.load_state_dict(saved.pop("model"))
        self.opt.load_state_dict(saved.pop("opt"))
        self.sched.load_state_dict(saved.pop("sched"))
        self.state = saved

    def _checkpoint(self) -> None:
        if self.path is not None and self.writes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({**self.state, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                          "sched": self.sched.state_dict()}, self.path)
            with open(self.path.with_suffix(".jsonl"), "w") as log:
                log.writelines(json.dumps(h) + "\n" for h in self.state["history"])

    def fit(self, train_epoch, val_loss) -> None:
        self._resume()
        torch.manual_seed(self.config.seed + self.state["epoch"])
        bar = tqdm(total=self.config.epochs, initial=self.state["epoch"], desc=self.name, unit="epoch",
                   disable=not self.progress)
        while self.state["epoch"] < self.config.epochs and self.state["bad"] < self.config.patience:
            self.model.train()
            train = train_epoch()
            self.sched.step()
            self.model.eval()
            val = val_loss()
            self.state["epoch"] += 1
            self.state["history"].append({"epoch": self.state["epoch"], "train_loss": train, "val_loss": val})
            if val < self.state["best"]:
                self.state.update(best=val, bad=0,
                                  best_model={k: v.detach().clone() for k, v in self.model.state_dict().items()})
            else:
                self.state["bad"] += 1
            self._checkpoint()
            bar.update(1)
            bar.set_postfix(train=f"{train:.3f}", val=f"{val:.3f}")
        bar.close()
        self.model.load_state_dict(self.state["best_model"])
        self.model.eval()


def minibatch_epoch(trainer: _Trainer, rows: Tensor, batch_size: int, loss_of, clip: float | None = None) -> float:
    """One epoch over ``rows`` in a random order, ``batch_size`` at a time, one
    :meth:`_Trainer.step` each; returns the mean of ``loss_of(batch)`` over the rows."""
    total = 0.0
    for batch in rows[torch.randperm(len(rows))].split(batch_size):
        loss = loss_of(batch)
        trainer.step(loss, clip)
        total += loss.item() * len(batch)
    return total / len(rows)


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def fit_metanetwork(dataset: ZooDataset, split: Split, kind: str = "gmn", config: TrainConfig | None = None,
                    out_dir: str | Path | None = None, progress: bool = True) -> MethodResult:
    """Train a :class:`GraphMetanetwork` of ``kind`` on ``split.train``, stop early on
    ``split.val``, predict ``split.test``. Targets are standardised with training statistics.

    Inside a ``torch.distributed`` process group (``torchrun``) the model is wrapped in
    ``DistributedDataParallel`` and each global batch of ``batch_size`` graphs is shared
    among the ranks (``batch_size / world`` each; gradients averaged), so N processes
    train the same model as one process would. Only rank 0 writes files. On CUDA with
    ``config.amp`` the forward pass runs under bf16 autocast (reductions stay float32).
    """
    config = config or TrainConfig()
    rank, world = _distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    mean, std = _standardiser(dataset.y[split.train])
    device = torch.device(config.device)
    mean, std = mean.to(device), std.to(device)
    net = graph_metanetwork(config, kind, dataset.y.size(1)).to(device)
    features = member_probe_features(dataset, probe_inputs(dataset, config.probes, config.seed)) \
        if config.probes else None
    stds = dataset.parameter_std(split.train) if config.normalise else None

    def run(module: nn.Module, batch) -> Tensor:
        values = None if stds is None else standardised_values(batch, stds, dataset.arch_keys)
        return module(batch, values, batch_features(features, batch))
    train_net = net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    # one sampler for every world size: the same global batches whether 1 or N processes draw them
    sampler = DistributedSampler(dataset.index_select(split.train), num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed)
    loader = DataLoader(dataset.index_select(split.train), batch_size=config.batch_size // world, sampler=sampler)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")

    def predict(idx: Tensor) -> Tensor:
        out = []
        with torch.no_grad(), autocast:
            for batch in DataLoader(dataset.index_select(idx), batch_size=2 * config.batch_size):
                batch = batch.to(device)
                out.append(run(net, batch).float() * std + mean)
        return torch.cat(out).cpu()

    def train_epoch() -> float:
        sampler.set_epoch(trainer.state["epoch"])
        total = torch.zeros((), device=device)
        for batch in loader:
            batch = batch.to(device)
            with autocast:
                pred = run(train_net, batch)
            loss = F.mse_loss(pred.float(), (batch.y - mean) / std)
            trainer.step(loss)
            total += loss.detach() * batch.num_graphs
        if world > 1:
            torch.distributed.all_reduce(total)
        return float(total) / (len(sampler) * world)

    def val_loss() -> float:
        return float(F.mse_loss((predict(split.val) - mean.cpu()) / std.cpu(),
                                (dataset.y[split.val] - mean.cpu()) / std.cpu()))

    writes = out_dir is not None and rank == 0
    trainer = _Trainer(kind, net, config, Path(out_dir) if out_dir is not None else None, progress and rank == 0,
                       writes=writes)
    trainer.fit(train_epoch, val_loss)
    return MethodResult(kind, predict(split.test).numpy(), dataset.y[split.test].numpy(), dataset.target_names,
                        time.perf_counter() - start, trainer.state["history"])


def fit_flat_mlp(dataset: ZooDataset, split: Split, config: TrainConfig | None = None,
                 out_dir: str | Path | None = None, progress: bool = True) -> MethodResult:
    """An MLP on the flattened weight vector: only for zoos whose members all have the same
    parameter names and shapes (activations may differ)."""
    layouts = {tuple((n, s) for n, s, _ in g.param_index.params) for g in dataset.templates.values()}
    if len(layouts) != 1:
        raise ValueError(f"the flat-weights MLP needs one parameter layout; this zoo has {len(layouts)}")
    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    x = torch.nan_to_num(torch.stack(dataset.values), nan=0.0, posinf=0.0, neginf=0.0)
    x_mean, x_std = _standardiser(x[split.train])
    x = (x - x_mean) / x_std
    y_mean, y_std = _standardiser(dataset.y[split.train])
    y = (dataset.y - y_mean) / y_std
    net = nn.Sequential(nn.Linear(x.size(1), 4 * config.hidden), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(4 * config.hidden, config.hidden), nn.ReLU(), nn.Linear(config.hidden, y.size(1)))

    def train_epoch() -> float:
        return minibatch_epoch(trainer, split.train, config.batch_size, lambda b: F.mse_loss(net(x[b]), y[b]))

    def val_loss() -> float:
        with torch.no_grad():
            return float(F.mse_loss(net(x[split.val]), y[split.val]))

    trainer = _Trainer("mlp", net, TrainConfig(**{**config.__dict__, "device": "cpu"}),
                       None if out_dir is None else Path(out_dir), progress)
    trainer.fit(train_epoch, val_loss)
    with torch.no_grad():
        pred = net(x[split.test]) * y_std + y_mean
    return MethodResult("mlp", pred.numpy(), dataset.y[split.test].numpy(), dataset.target_names,
                        time.perf_counter() - start, trainer.state["history"])
