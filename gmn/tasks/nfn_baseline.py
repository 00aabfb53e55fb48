"""NFN-NP and NFN-HNP (Zhou et al. 2023, "Permutation Equivariant Neural Functionals") as
property-prediction baselines on gmn's split, built from the ``nfn`` package's own layers
(``pip install -e ".[nfn]"``).

The recipe is their invariant predictor of the Small CNN Zoo's test accuracy
(``experiments/predict_gen_configs`` and ``experiments/models.py`` of
github.com/AllanYangZhou/nfn): three equivariant layers of 16, 16 and 5 channels, each
followed by a ReLU (no layer norm, no dropout, no Fourier features), HNP pooling, and an MLP
head of two hidden layers of 1,000 units; Adam at learning rate 1e-3 with batches of 8.
NFN-HNP reads raw weights; NFN-NP (``mode: NP-PosEmb``) adds learned input/output position
embeddings and standardises its input. What differs here, so that every method of the table
is trained alike: targets are standardised with training statistics and fitted with MSE
(they fit one accuracy with a sigmoid and BCE; gmn fits several targets, the gap among them),
early stopping on ``split.val`` with gmn's :class:`_Trainer` (AdamW with the config's weight
decay, cosine schedule) instead of their best-validation-tau checkpoint, and NP standardises
every weight and bias tensor by one mean and std (theirs: one per entry, which is not
invariant to hidden permutations; per tensor keeps NFN-NP exactly invariant).

NFN needs an MLP/CNN layout: every member has the same sequence of (weight, bias) pairs
(``Linear``, ``Conv1d`` or ``Conv2d``), each layer reading exactly the neurons the previous
one wrote (a global pool between a convolution and a dense layer is fine; a flatten of a
spatial map, residuals, normalisation layers or tied weights are not). The parameter graph
says whether that holds: :func:`nfn_layout` checks it and names what breaks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Split, ZooDataset
from .property import MethodResult, TrainConfig, _standardiser, _Trainer, minibatch_epoch

MODES = {"nfn_np": "NP", "nfn_hnp": "HNP"}
#: their predict-generalization recipe (nfnet/hnp_inv.yaml, head_cls/mlp.yaml, main.yaml)
HIDDEN_CHANNELS = (16, 16, 5)
HEAD_WIDTH = 1000
LR = 1e-3
BATCH_SIZE = 8


def _require_nfn():
    try:
        import einops  # noqa: F401  (nfn's layers use it)
        import nfn  # noqa: F401
    except ImportError as err:
        raise ValueError(f"NFN needs the nfn package ({err.name} is missing): pip install -e \".[nfn]\"") from None


@dataclass(frozen=True)
class NFNLayout:
    """The zoo's one layout of (weight, bias) layers: ``(name, shape, offset)`` of each."""

    weights: tuple[tuple[str, tuple[int, ...], int], ...]
    biases: tuple[tuple[str, tuple[int, ...], int], ...]

    def features(self, values: Tensor):
        """``WeightSpaceFeatures`` of the members' parameter vectors ``values`` (``N x P``):
        weights ``(N, 1, out, in[, kh, kw])`` (a ``Conv1d`` kernel gets ``kw = 1``), biases
        ``(N, 1, out)``."""
        from nfn.common import WeightSpaceFeatures

        n = values.size(0)
        weights = []
        for _, shape, offset in self.weights:
            w = values[:, offset : offset + int(np.prod(shape))].reshape(n, 1, *shape)
            weights.append(w.unsqueeze(-1) if len(shape) == 3 else w)
        biases = [values[:, offset : offset + shape[0]].reshape(n, 1, shape[0]) for _, shape, offset in self.biases]
        return WeightSpaceFeatures(weights, biases)

    def spec(self):
        from nfn.common import network_spec_from_wsfeat

        size = max(offset + int(np.prod(shape)) for _, shape, offset in self.weights + self.biases)
        return network_spec_from_wsfeat(self.features(torch.zeros(1, size)))


def nfn_layout(dataset: ZooDataset) -> NFNLayout:
    """The zoo's MLP/CNN layout, or a ``ValueError`` saying why NFN cannot read it."""
    layouts = {tuple(g.param_index.params) for g in dataset.templates.values()}
    if len(layouts) != 1:
        raise ValueError(f"NFN needs one MLP/CNN layout; this zoo has {len(layouts)} parameter layouts")
    params = next(iter(layouts))
    if len(params) % 2 or len(params) < 4:
        raise ValueError(f"NFN needs at least two (weight, bias) layers; this zoo's members have {len(params)} "
                         f"parameter tensors")
    weights, biases = params[0::2], params[1::2]
    for (wname, wshape, _), (bname, bshape, _) in zip(weights, biases):
        if len(wshape) not in (2, 3, 4) or bshape != (wshape[0],):
            raise ValueError(f"NFN needs (weight, bias) pairs of Linear/Conv1d/Conv2d layers; this zoo has "
                             f"{wname} {tuple(wshape)} followed by {bname} {tuple(bshape)}")
    for (prev, pshape, _), (name, shape, _) in zip(weights[:-1], weights[1:]):
        if shape[1] != pshape[0]:
            raise ValueError(f"NFN needs each layer to read the previous one's neurons; {name} reads {shape[1]} "
                             f"inputs after {prev}'s {pshape[0]} outputs (a flattened spatial map?)")
    for g in dataset.templates.values():
        _check_chain(g, weights, biases)
    return NFNLayout(tuple(weights), tuple(biases))


def _check_chain(g, weights, biases) -> None:
    """On the parameter graph: each layer's weight edges leave exactly the neurons the
    previous layer's enter (no residual, norm or concatenation in between), its bias enters
    the same neurons in the same order, and no scalar is tied."""
    if int(g.num_tied_edges.sum()):
        raise ValueError("NFN needs untied weights; this zoo's members share parameters")
    index, (src, dst) = g.param_index, g.edge_index
    outputs = None
    for (wname, wshape, _), (bname, _, _) in zip(weights, biases):
        w, b = index.edge_ids(wname), index.edge_ids(bname)
        w_src, w_dst = src[w].view(*wshape), dst[w].view(*wshape)
        rows = w_dst.reshape(wshape[0], -1)
        if not (rows == rows[:, :1]).all() or not torch.equal(rows[:, 0], dst[b]):
            raise ValueError(f"NFN needs plain layers; {wname}'s and {bname}'s edges do not enter one neuron per row")
        cols = w_src.transpose(0, 1).reshape(wshape[1], -1)
        if not (cols == cols[:, :1]).all():
            raise ValueError(f"NFN needs plain layers; {wname}'s edges do not leave one neuron per input channel")
        if outputs is not None and not torch.equal(cols[:, 0], outputs):
            raise ValueError(f"NFN needs a chain of layers; {wname} does not read the neurons the layer before it "
                             f"writes (residuals, normalisation or concatenation in between)")
        outputs = rows[:, 0]


class InvariantNFN(nn.Module):
    """Zhou et al.'s ``InvariantNFN`` with ``MlpHead`` (their ``experiments/models.py``),
    from the ``nfn`` package's layers: ``mode`` ``"NP"`` (``NPLinear`` with io embeddings,
    inputs standardised per tensor with ``stats``) or ``"HNP"`` (``HNPLinear``, raw inputs)."""

    def __init__(self, spec, mode: str, out_dim: int, stats: list[tuple[float, float]] | None = None,
                 hidden_channels: tuple[int, ...] = HIDDEN_CHANNELS, head_width: int = HEAD_WIDTH):
        from nfn.layers import HNPLinear, HNPPool, NPLinear, TupleOp

        super().__init__()
        if mode not in ("NP", "HNP"):
            raise ValueError(f"mode is NP or HNP, not {mode!r}")
        self.mode = mode
        layers, prev = [], 1
        for channels in hidden_channels:
            layer = (NPLinear(spec, prev, channels, io_embed=True) if mode == "NP"
                     else HNPLinear(spec, prev, channels))
            layers += [layer, TupleOp(nn.ReLU())]
            prev = channels
        self.equivariant = nn.Sequential(*layers)
        # their MlpHead: pool_mode HNP for both NP and HNP (hnp_inv.yaml's head, inherited by np_inv.yaml)
        self.head = nn.Sequential(HNPPool(spec), nn.Flatten(start_dim=-2),
                                  nn.Linear(prev * HNPPool.get_num_outs(spec), head_width), nn.ReLU(),
                                  nn.Linear(head_width, head_width), nn.ReLU(), nn.Linear(head_width, out_dim))
        stats = stats or [(0.0, 1.0)] * (2 * len(spec))
        self.register_buffer("shift", torch.tensor([m for m, _ in stats], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([s for _, s in stats], dtype=torch.float32))

    def forward(self, wsfeat) -> Tensor:
        from nfn.common import WeightSpaceFeatures

        n = len(wsfeat.weights)
        weights = [(w - self.shift[i]) / self.scale[i] for i, w in enumerate(wsfeat.weights)]
        biases = [(b - self.shift[n + i]) / self.scale[n + i] for i, b in enumerate(wsfeat.biases)]
        return self.head(self.equivariant(WeightSpaceFeatures(weights, biases)))


def _tensor_stats(wsfeat, rows: Tensor) -> list[tuple[float, float]]:
    """Mean and std of every weight tensor, then every bias tensor, over the members ``rows``."""
    return [(float(t[rows].mean()), max(float(t[rows].std()), 1e-5)) for t in (*wsfeat.weights, *wsfeat.biases)]


def _select(wsfeat, rows: Tensor):
    return wsfeat.map(lambda t: t[rows])


def fit_nfn(dataset: ZooDataset, split: Split, method: str = "nfn_hnp", config: TrainConfig | None = None,
            out_dir: str | Path | None = None, progress: bool = True) -> MethodResult:
    """Train NFN-NP (``method="nfn_np"``) or NFN-HNP (``"nfn_hnp"``) on ``split.train``,
    stop early on ``split.val``, predict ``split.test``. Raises ``ValueError`` (the reason)
    when the ``nfn`` package is missing or the zoo has no single MLP/CNN layout. The
    config's epochs, patience, weight decay, seed and device are used; learning rate and
    batch size are NFN's (1e-3, 8)."""
    if method not in MODES:
        raise ValueError(f"method is one of {', '.join(MODES)}, not {method!r}")
    _require_nfn()
    layout = nfn_layout(dataset)
    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    values = torch.nan_to_num(torch.stack(dataset.values).float(), nan=0.0, posinf=0.0, neginf=0.0)
    x = layout.features(values).to(device)
    y_mean, y_std = _standardiser(dataset.y[split.train])
    y = ((dataset.y - y_mean) / y_std).to(device)
    stats = _tensor_stats(x, split.train.to(device)) if MODES[method] == "NP" else None
    net = InvariantNFN(layout.spec(), MODES[method], y.size(1), stats).to(device)
    batch_size = BATCH_SIZE

    def predict(rows: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([net(_select(x, part.to(device))) for part in rows.split(8 * batch_size)])

    def train_epoch() -> float:
        def loss_of(batch: Tensor) -> Tensor:
            batch = batch.to(device)
            return F.mse_loss(net(_select(x, batch)), y[batch])

        return minibatch_epoch(trainer, split.train, batch_size, loss_of)

    def val_loss() -> float:
        return float(F.mse_loss(predict(split.val), y[split.val.to(device)]))

    trainer = _Trainer(method, net, TrainConfig(**{**config.__dict__, "lr": LR, "batch_size": batch_size}),
                       None if out_dir is None else Path(out_dir), progress)
    trainer.fit(train_epoch, val_loss)
    pred = predict(split.test).cpu() * y_std + y_mean
    return MethodResult(method, pred.numpy(), dataset.y[split.test].numpy(), dataset.target_names,
                        time.perf_counter() - start, trainer.state["history"])
