"""Property prediction: predict a model's test accuracy (or gap, ...) from its weights.

Methods, all on the same split: a graph metanetwork (``gmn``, ``pna``, ``scale_gmn``, ``ng_t``),
StatNN (per-tensor weight statistics with gradient boosting; Unterthiner et al. 2020) and
an MLP on the flattened weights (single-architecture zoos only). Metrics: Kendall's tau,
R^2 and MAE on the test part.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
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

from ..choices import KINDS
from ..data import Split, ZooDataset
from ..models import GraphMetanetwork
from ..probes import batch_features, member_probe_features, probe_features


def metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Kendall's tau, R^2 and mean absolute error of one target. Tau is NaN where it is
    undefined (constant predictions, e.g. a collapsed model, or constant targets): 0 would read
    as "no correlation measured"."""
    from scipy.stats import kendalltau

    tau = kendalltau(pred, true).statistic
    r2 = 1.0 - float(((pred - true) ** 2).sum()) / max(float(((true - true.mean()) ** 2).sum()), 1e-12)
    return {"tau": float(tau), "r2": r2, "mae": float(np.abs(pred - true).mean())}


def json_safe(value):
    """``value`` with every non-finite float as None (JSON has no NaN: other tools refuse it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class MethodResult:
    """One method's test predictions (``N x targets``) and metrics per target."""

    method: str
    pred: np.ndarray
    true: np.ndarray
    targets: tuple[str, ...]
    seconds: float
    history: list[dict] = field(default_factory=list)
    predictor: Predictor | None = None  #: the trained metanetwork, ready to apply (metanetworks only)

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


def standardised_values(batch, stds: dict[str, Tensor], arch_keys: list[str], values: Tensor | None = None) -> Tensor:
    """Every edge value of a batch of zoo graphs (``values``, default the batch's own), parameter
    edges divided by their tensor's training-set standard deviation
    (:meth:`ZooDataset.parameter_std`); an architecture no training member has keeps its raw values."""
    counts = torch.bincount(batch.batch[batch.edge_index[0]], minlength=batch.num_graphs).tolist()
    scale = []
    for member, edges in zip(batch.member.tolist(), counts):
        std = stds.get(arch_keys[member], torch.ones(0))
        scale += [std, torch.ones(edges - std.numel())]
    values = batch.edge_value if values is None else values
    return values / torch.cat(scale).to(values.device)


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
    inputs = probe_inputs(dataset, config.probes, config.seed) if config.probes else None
    features = member_probe_features(dataset, inputs) if inputs is not None else None
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
    result = MethodResult(kind, predict(split.test).numpy(), dataset.y[split.test].numpy(), dataset.target_names,
                          time.perf_counter() - start, trainer.state["history"])
    result.predictor = Predictor(copy.deepcopy(net).cpu(), kind, config, dataset.target_names, mean.cpu(), std.cpu(),
                                 _architectures(dataset, split, stds), inputs,
                                 _zoo_record(dataset, split), result.scores)
    return result


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


# --- a trained metanetwork, saved and applied ------------------------------------------------

#: what ``save_predictor`` writes into the safetensors header (``__metadata__["gmn"]``)
PREDICTOR_FORMAT = "gmn-property-predictor"
PREDICTOR_VERSION = 1
#: graph attributes a metanetwork reads (a converted graph carries more: they are left behind)
_GRAPH_KEYS = ("edge_index", "edge_type", "edge_pos", "edge_value", "node_type", "node_depth", "node_index",
               "node_act", "num_param_edges", "num_tied_edges", "tied_slot", "param_index")


def structure_fingerprint(g) -> str:
    """A hash of a single graph's structure (nodes, edges, their types, depths, indices,
    activations and positions, and the parameter shapes), not of its values or parameter
    names: a checkpoint converted from PyTorch, its ONNX export and its saved graph share it."""
    digest = hashlib.sha256(b"gmn structure 1")
    for key in ("node_type", "node_depth", "node_index", "node_act", "edge_index", "edge_type", "edge_pos",
                "num_param_edges", "num_tied_edges", "tied_slot"):
        t = getattr(g, key).detach().to(torch.int64).contiguous()
        digest.update(f"{key}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    digest.update(json.dumps([list(shape) for _, shape, _ in g.param_index.params]).encode())
    return digest.hexdigest()


def _tensor_shapes(index) -> dict[str, list[int]]:
    """A checkpoint's tensors by name and shape (parameters, tied names, buffers), as the
    architecture's state_dict holds them."""
    shapes = {name: list(shape) for name, shape, _ in index.params}
    shapes.update({alias: shapes[name] for alias, name in index.aliases.items() if name in shapes})
    shapes.update({name: list(b.shape) for name, b in index.buffers.items()})
    return shapes


@dataclass
class Architecture:
    """An architecture of the training zoo, as a predictor keeps it: the catalogue's spec and
    data set (to rebuild it), its structure's fingerprint, its checkpoints' tensor shapes (to
    recognise a checkpoint without ``--arch``), the zoo families it held, whether any training
    member had it, and the per-tensor value scales learned from those members (None without
    value normalisation, or when no training member had it: its values are then read unscaled,
    as in training)."""

    key: str  #: :func:`gmn.data.architecture_key` of its members
    spec: dict
    dataset: str | None
    fingerprint: str
    tensors: dict[str, list[int]]
    families: list[str]
    trained: bool
    scales: Tensor | None = None

    def record(self) -> dict:
        return {"key": self.key, "spec": self.spec, "dataset": self.dataset, "fingerprint": self.fingerprint,
                "tensors": self.tensors, "families": self.families, "trained": self.trained}


def _architectures(dataset: ZooDataset, split: Split, stds: dict[str, Tensor] | None) -> list[Architecture]:
    """Every architecture of ``dataset``, with one scale per parameter tensor (the training
    statistics ``standardised_values`` divided by)."""
    trained = {dataset.arch_keys[i] for i in split.train.tolist()}
    out = []
    for key, template in dataset.templates.items():
        members = [i for i, k in enumerate(dataset.arch_keys) if k == key]
        first = dataset.members[members[0]]
        scales = None
        if stds is not None and key in stds and key in trained:
            scales = torch.tensor([float(stds[key][offset]) if math.prod(shape) else 1.0  # an empty tensor: none
                                   for _, shape, offset in template.param_index.params])
        out.append(Architecture(key, first["arch"], first.get("dataset"), structure_fingerprint(template),
                                _tensor_shapes(template.param_index),
                                sorted({dataset.family[i] for i in members}), key in trained, scales))
    return out


def _zoo_record(dataset: ZooDataset, split: Split) -> dict:
    """Which zoo the model learned from: its folder, a hash of its listing and checkpoints, its
    size and families, and the size of each part of the split."""
    return {"path": str(dataset.zoo.root.resolve()), "content_sha256": dataset.content_hash,
            "members": len(dataset), "families": sorted(set(dataset.family)),
            "split": {part: len(getattr(split, part)) for part in ("train", "val", "test")}}


class Predictor:
    """A trained property metanetwork with everything needed to apply it to new checkpoints:
    its settings (``config``, ``kind``), the targets and their training mean and standard
    deviation, the zoo's architectures (value scales, structure), the probe inputs, a record
    of the zoo and its test scores. Written by :func:`save_predictor` (``gmn train``), read by
    :func:`load_predictor`, applied by :meth:`predict` (``gmn predict``)."""

    def __init__(self, net: GraphMetanetwork, kind: str, config: TrainConfig, targets: tuple[str, ...], mean: Tensor,
                 std: Tensor, architectures: list[Architecture], probe_inputs: Tensor | None, zoo: dict,
                 scores: dict, gmn_version: str | None = None, allow_modules: tuple[str, ...] = ()):
        from .. import __version__

        self.net, self.kind, self.config, self.targets = net.eval(), kind, config, tuple(targets)
        self.mean, self.std, self.architectures = mean, std, architectures
        self.probe_inputs, self.zoo, self.scores = probe_inputs, zoo, scores
        self.gmn_version = gmn_version or __version__
        self.allow_modules = tuple(allow_modules)  #: Python architectures it may import to compute probe features
        self._by_fingerprint = {a.fingerprint: a for a in architectures}
        self._templates: dict[str, tuple[nn.Module, object]] = {}

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape (without batch) of the inputs its probe features were computed on."""
        return None if self.probe_inputs is None else tuple(self.probe_inputs.shape[1:])

    def architecture(self, g) -> Architecture | None:
        """The training zoo's architecture of graph ``g`` (None: one the model never saw)."""
        return self._by_fingerprint.get(structure_fingerprint(g))

    def match(self, tensors: dict[str, Tensor]) -> list[Architecture]:
        """The zoo's architectures whose checkpoints hold exactly these tensor names and shapes
        (a BatchNorm's step counter aside)."""
        def shapes(d: dict) -> dict:
            return {k: list(v) for k, v in d.items() if not k.endswith("num_batches_tracked")}

        have = shapes({k: t.shape for k, t in tensors.items()})
        return [a for a in self.architectures if a.spec.get("family") != "onnx" and shapes(a.tensors) == have]

    def module(self, arch: Architecture) -> tuple[nn.Module, Tensor]:
        """A fresh module of a zoo architecture and an example input (a Python ``module:attr``
        only when it is in ``allow_modules``)."""
        from ..zoo.zoo import architecture

        return architecture(arch.spec, arch.dataset, frozenset(self.allow_modules), "the metanetwork's training zoo")

    def _template(self, arch: Architecture):
        """The zoo architecture's module and graph (converted once), for probe features."""
        if arch.fingerprint not in self._templates:
            import converters

            module, example = self.module(arch)
            self._templates[arch.fingerprint] = module.eval(), converters.from_torch(module.eval(), example)
        return self._templates[arch.fingerprint]

    def _features(self, g, arch: Architecture | None, where: str) -> Tensor:
        """Probe features of ``g``: through its zoo architecture's module, or for an
        architecture the model never saw through the PyTorch module ``g`` was converted from."""
        import converters

        values = converters.parameter_values(g).float()
        if arch is not None and arch.spec.get("family") != "onnx":
            module, template = self._template(arch)
        else:
            module, template = getattr(g, "model", None), g
            if not isinstance(module, nn.Module) or module.__class__.__name__ == "OnnxModule":
                raise ValueError(f"{where}: an architecture this metanetwork never saw, and its probe features "
                                 f"({self.config.probes} inputs of shape {self.input_shape}) need the PyTorch module: "
                                 f"give the checkpoint with --arch")
        try:
            return torch.asinh(probe_features(template, module, self.probe_inputs, values))
        except Exception as err:  # noqa: BLE001 - a model that cannot take the probe inputs fails in many ways
            raise ValueError(f"{where}: its model cannot run on the metanetwork's probe inputs of shape "
                             f"{self.input_shape} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); an "
                             f"architecture this metanetwork never saw needs the training zoo's inputs") from None

    def _values(self, g, arch: Architecture | None) -> Tensor:
        """Edge values as in training: parameter edges divided by their tensor's scale."""
        values = g.edge_value.float()
        if not self.config.normalise or arch is None or arch.scales is None:
            return values  # as training reads an architecture no training member had
        numels = torch.tensor([math.prod(shape) for _, shape, _ in g.param_index.params])
        scale = arch.scales.repeat_interleave(numels)
        return values / torch.cat([scale, torch.ones(values.numel() - scale.numel())])

    def unseen(self, g) -> bool:
        """Whether the model never trained on ``g``'s architecture."""
        arch = self.architecture(g)
        return arch is None or not arch.trained

    @torch.no_grad()
    def predict(self, graphs: list, names: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """``len(graphs) x targets`` predictions for single parameter graphs (any origin:
        PyTorch, ONNX, saved graphs), in the targets' own units. ``names`` (one per graph)
        name a graph in errors."""
        from torch_geometric.data import Batch

        from converters import ParameterGraph

        names = names or [f"graph {i}" for i in range(len(graphs))]
        rows, out = [], []
        for g, where in zip(graphs, names):
            arch = self.architecture(g)
            clean = ParameterGraph(**{k: getattr(g, k) for k in _GRAPH_KEYS})
            features = self._features(g, arch, where) if self.config.probes else None
            rows.append((clean, self._values(g, arch), features))
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch = Batch.from_data_list([r[0] for r in part])
            features = torch.cat([r[2] for r in part]) if self.config.probes else None
            out.append(self.net(batch, torch.cat([r[1] for r in part]), features).float() * self.std + self.mean)
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.targets)), dtype=np.float32)


def save_predictor(predictor: Predictor, path: str | Path) -> None:
    """Write ``predictor`` to one safetensors file, atomically: the metanetwork's weights, the
    targets' scaling, the per-tensor value scales and the probe inputs as tensors; its kind,
    settings, targets, architectures, training zoo, test scores and gmn version as JSON in the
    header (never pickle)."""
    from safetensors.torch import save_file

    from converters.files import atomic_write

    p = predictor
    tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in p.net.state_dict().items()}
    tensors["target.mean"], tensors["target.std"] = p.mean.contiguous(), p.std.contiguous()
    if p.probe_inputs is not None:
        tensors["probe.inputs"] = p.probe_inputs.contiguous()
    for i, arch in enumerate(p.architectures):
        if arch.scales is not None:
            tensors[f"scale.{i}"] = arch.scales.contiguous()
    config = {k: v for k, v in p.config.__dict__.items() if k not in ("device", "amp")}
    meta = {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_VERSION, "gmn_version": p.gmn_version,
            "kind": p.kind, "config": config, "targets": list(p.targets),
            "target_scaling": {t: {"mean": float(p.mean[i]), "std": float(p.std[i])} for i, t in enumerate(p.targets)},
            "architectures": [a.record() for a in p.architectures], "input_shape": p.input_shape,
            "zoo": p.zoo, "scores": json_safe(p.scores)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"gmn": json.dumps(meta)}))


def load_predictor(path: str | Path, allow_modules: tuple[str, ...] = ()) -> Predictor:
    """A :class:`Predictor` from a file :func:`save_predictor` wrote (or the ``gmn train``
    folder holding ``model.safetensors``). Anything else (another safetensors file, a
    pickle, a newer format) is refused in one line naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    where = f"{path}: not a gmn metanetwork"
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (gmn train writes model.safetensors in its --out folder)") \
            from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{where} (not a readable safetensors file: {str(err)[:120]})") from None
    try:
        meta = json.loads(header["gmn"])
        if meta["format"] != PREDICTOR_FORMAT:
            raise KeyError("format")
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{where} (its header has no gmn predictor record; gmn train writes one)") from None
    if meta.get("format_version") != PREDICTOR_VERSION:
        raise ValueError(f"{path}: a gmn predictor of format {meta.get('format_version')!r}; this gmn reads "
                         f"format {PREDICTOR_VERSION}")
    try:
        return _predictor_from(meta, tensors, allow_modules)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: a malformed gmn predictor ({type(err).__name__}: {str(err)[:160]})") from None


def _predictor_from(meta: dict, tensors: dict[str, Tensor], allow_modules: tuple[str, ...]) -> Predictor:
    if meta["kind"] not in KINDS:
        raise ValueError(f"unknown metanetwork kind {meta['kind']!r}")
    config = TrainConfig(**meta["config"])
    targets = tuple(meta["targets"])
    net = graph_metanetwork(config, meta["kind"], len(targets))
    net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
    architectures = [Architecture(a["key"], a["spec"], a["dataset"], a["fingerprint"], a["tensors"], a["families"],
                                  bool(a["trained"]), tensors[f"scale.{i}"] if a["trained"] and config.normalise
                                  else None)
                     for i, a in enumerate(meta["architectures"])]
    mean, std = tensors["target.mean"], tensors["target.std"]
    if mean.shape != (len(targets),) or std.shape != (len(targets),):
        raise ValueError(f"target scaling of shape {tuple(mean.shape)} for {len(targets)} targets")
    inputs = tensors.get("probe.inputs")
    if (inputs is None) != (config.probes == 0) or inputs is not None and inputs.size(0) != config.probes:
        raise ValueError(f"{config.probes} probes, probe inputs {None if inputs is None else tuple(inputs.shape)}")
    return Predictor(net, meta["kind"], config, targets, mean, std, architectures, inputs, meta["zoo"],
                     meta["scores"], meta["gmn_version"], allow_modules)
