"""Weight generation: flow matching over parameter values, a metanetwork as the velocity field.

Values are generated in units of each parameter's initialisation scale, ``z = x sqrt(fan_in)``
(``fan_in`` counts the parameter edges into the edge's target neuron), so one noise law
``N(0, I)`` serves every architecture, seen in training or not. Flow matching (Lipman et al.
2023) on the straight path ``z_t = (1 - t) z_0 + t z_1`` trains

.. math::
    \\min_\\theta \\; \\mathbb{E}_{t, z_0, z_1} \\| v_\\theta(z_t, t, c \\mid G) - (z_1 - z_0) \\|^2,

where ``v`` is a GMN over the architecture's parameter graph ``G`` (its structure is the
condition; its edge readout at parameter edges is the velocity, equivariant to every neuron
permutation) and ``c`` an optional standardised property (e.g. accuracy), dropped at random
during training for classifier-free guidance. Sampling integrates ``dz/dt = v`` from noise
with Heun's method. With ``prediction="clean"`` the network predicts the end point ``z_1``
instead (trained with ``|ẑ_1 - z_1|^2``) and the velocity is
``(ẑ_1 - z_t) / (1 - t)``: Li & He 2025 ("Back to Basics") argue that data on a
low-dimensional set in a high-dimensional space (a few checkpoints among all weight
vectors) is easier to predict than the noise-laden velocity; ``benchmarks/
generation_memorisation.py`` measures it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

import converters
from converters.writer import STRUCTURAL

from ..data import ZooDataset
from ..models import node_graphs
from ..nn import EdgeEncoder, GMNConv, NodeEncoder
from ..nn.features import sinusoidal
from ..weightspace.alignment import align, aligned_distance
from .property import TrainConfig, _Trainer

PREDICTIONS = ("velocity", "clean")
MIN_REMAINING = 0.05


def clean_to_velocity(clean: Tensor, z: Tensor, remaining: Tensor) -> Tensor:
    """``(z_1 - z) / (1 - t)`` from a predicted end point ``z_1``; ``remaining = 1 - t`` is kept
    above ``MIN_REMAINING`` (at ``t = 1`` the velocity is undefined)."""
    return (clean - z) / remaining.clamp_min(MIN_REMAINING)


def heun(velocity: Callable[[Tensor, float], Tensor], z: Tensor, steps: int, euler_last: bool = False) -> Tensor:
    """Integrate ``dz/dt = velocity(z, t)`` from ``t = 0`` to 1: Euler predictor, trapezoid
    corrector; ``euler_last`` makes the last step a plain Euler step (for a clean prediction,
    whose velocity at ``t = 1`` is undefined: that step lands on the predicted ``z_1``)."""
    dt = 1.0 / steps
    for k in range(steps):
        t = k * dt
        v = velocity(z, t)
        guess = z + dt * v
        z = guess if euler_last and k == steps - 1 else z + dt * 0.5 * (v + velocity(guess, t + dt))
    return z


def property_stats(y: Tensor) -> Tensor:
    """``[mean, std]`` of the training property (std 1 for a single value): its standardisation."""
    return torch.stack([y.mean(), y.std().clamp_min(1e-6) if len(y) > 1 else y.new_tensor(1.0)])


def condition_embedding(condition: nn.Module, c: Tensor) -> Tensor:
    """The embedding of standardised properties ``c``; zero where ``c`` is NaN (dropped)."""
    return (~torch.isnan(c)).unsqueeze(-1) * condition(torch.nan_to_num(c).unsqueeze(-1))


def dropped_condition(y: Tensor, stats: Tensor, drop: float, generator: torch.Generator | None) -> Tensor:
    """Properties ``y`` standardised by ``stats``, each set to NaN (unconditional) with
    probability ``drop``: the training condition of classifier-free guidance."""
    c = (y - stats[0]) / stats[1]
    dropped = torch.rand(len(y), generator=generator, device="cpu").to(y.device) < drop
    return torch.where(dropped, torch.nan, c)


def target_condition(condition: nn.Module | None, stats: Tensor, target: float | None, count: int,
                     device: torch.device) -> Tensor | None:
    """The standardised ``target`` for ``count`` samples (``None``: sample unconditionally)."""
    if target is None:
        return None
    if condition is None:
        raise ValueError("this generator was trained without a property condition")
    return torch.full((count,), (target - float(stats[0])) / float(stats[1]), device=device)


def guided(predict: Callable[[Tensor | None], Tensor], c: Tensor | None, guidance: float) -> Tensor:
    """Classifier-free guidance: ``u + guidance (predict(c) - u)``, ``u`` the prediction with
    the condition dropped; just ``predict(None)`` without a condition."""
    if c is None:
        return predict(None)
    unconditional = predict(torch.full_like(c, torch.nan))
    return unconditional + guidance * (predict(c) - unconditional)


def parameter_scale(g) -> Tensor:
    """``1 / sqrt(fan_in)`` per parameter scalar, in ``converters.parameter_values`` order."""
    mask = converters.parameter_edge_mask(g)
    dst = g.edge_index[1][mask]
    fan_in = torch.bincount(dst, minlength=g.num_nodes).clamp_min(1)
    return fan_in[dst].float().rsqrt()


class WeightGenerator(nn.Module):
    """Velocity field ``v(z_t, t, c | G)`` and its sampler.

    Time (and the property, when ``conditioned``) enter as a per-graph embedding added to
    node and edge states before every GMN layer. Tied and parameter edges carry ``z_t``
    only (tied copies get zero), so nothing of the training weights leaks into the input.
    """

    def __init__(self, hidden: int = 64, layers: int = 4, aggr: str = "mean", conditioned: bool = False,
                 prediction: str = "velocity"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.hidden, self.prediction = hidden, prediction
        self.nodes, self.edges = NodeEncoder(hidden), EdgeEncoder(hidden)
        self.value = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.condition = nn.Linear(1, hidden) if conditioned else None
        self.shifts = nn.ModuleList(nn.Linear(hidden, 2 * hidden) for _ in range(layers))
        self.convs = nn.ModuleList(GMNConv(hidden, aggr) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("target_stats", torch.tensor([0.0, 1.0]))  # mean, std of the property

    def forward(self, g, z: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """The network's output at every parameter scalar (the velocity, or ``z_1`` for
        ``prediction="clean"``); ``t`` and ``c`` (NaN: unconditional) per graph."""
        mask = converters.parameter_edge_mask(g)
        values = torch.where(converters.edge_kinds(g) == STRUCTURAL, g.edge_value, 0.0)
        values = values.masked_scatter(mask, z.to(values.dtype))
        emb = self.time(sinusoidal(t * 1000, self.hidden))
        if self.condition is not None and c is not None:
            emb = emb + condition_embedding(self.condition, c)
        node_graph = node_graphs(g)
        edge_graph = node_graph[g.edge_index[0]]
        # the edge encoder's Fourier features suit raw weights (|x| < 1); z is ~10x that
        h, e = self.nodes(g), self.edges(g, values * 0.1)
        e = e + mask.unsqueeze(-1) * self.value(values.unsqueeze(-1))
        for shift, conv in zip(self.shifts, self.convs):
            dh, de = shift(emb).chunk(2, -1)
            h, e = conv(h + dh[node_graph], e + de[edge_graph], g.edge_index)
        return self.head(e[mask]).squeeze(-1)

    def flow_loss(self, g, drop_condition: float = 0.2, generator: torch.Generator | None = None,
                  source: Tensor | None = None) -> Tensor:
        """Flow-matching loss of a batch of checkpoint graphs (property in ``g.y[:, 0]``);
        ``source``: the paired starting values (their initialisations), else Gaussian noise."""
        scale = parameter_scale(g)
        z1 = converters.parameter_values(g) / scale
        graphs = int(g.num_param_edges.numel())
        z0 = torch.randn(z1.shape, generator=generator, device="cpu").to(z1.device) if source is None \
            else source.to(z1.device) / scale
        t = torch.rand(graphs, generator=generator, device="cpu").to(z1.device)
        per_scalar = torch.repeat_interleave(t, g.num_param_edges.view(-1).to(z1.device))
        zt = (1 - per_scalar) * z0 + per_scalar * z1
        c = None
        if self.condition is not None:
            c = dropped_condition(g.y[:, 0].to(z1.device), self.target_stats, drop_condition, generator)
        return F.mse_loss(self(g, zt, t, c), z1 - z0 if self.prediction == "velocity" else z1)

    def velocity(self, g, z: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """``dz/dt`` at ``z`` (per-graph ``t``): the output itself, or ``(z_1 - z) / (1 - t)``
        from a clean prediction (``1 - t`` kept above ``MIN_REMAINING``: the last step's end)."""
        out = self(g, z, t, c)
        if self.prediction == "velocity":
            return out
        return clean_to_velocity(out, z, torch.repeat_interleave(1 - t, g.num_param_edges.view(-1).to(z.device)))

    @torch.no_grad()
    def sample(self, template: converters.ParameterGraph, count: int, steps: int = 20, target: float | None = None,
               guidance: float = 1.0, seed: int = 0, source: Tensor | None = None) -> Tensor:
        """``count`` parameter vectors for ``template``'s architecture (rows in
        ``converters.parameter_values`` order); ``target``: the property to condition on;
        ``source`` (``[count, P]``): starting values for a generator trained from
        initialisations (fresh random initialisations of the architecture)."""
        device = next(self.parameters()).device
        g = Batch.from_data_list([template] * count).to(device)
        scale = parameter_scale(g)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(scale.shape, generator=gen).to(device) if source is None \
            else source.reshape(-1).to(device) / scale
        c = target_condition(self.condition, self.target_stats, target, count, device)

        def velocity(z: Tensor, t: float) -> Tensor:
            tt = torch.full((count,), t, device=device)
            return guided(lambda cc: self.velocity(g, z, tt, cc), c, guidance)

        z = heun(velocity, z, steps, euler_last=self.prediction == "clean")
        return (z * scale).view(count, -1).cpu()


def fit_generator(dataset: ZooDataset, train: Tensor, val: Tensor, config: TrainConfig | None = None,
                  conditioned: bool = False, sources: list[Tensor] | None = None, out_dir: str | Path | None = None,
                  progress: bool = True, prediction: str = "velocity") -> WeightGenerator:
    """Train a :class:`WeightGenerator` on the checkpoints ``train`` of ``dataset`` (early
    stopping on the flow loss of ``val`` at fixed noise); with ``conditioned``, on the
    dataset's first target as well. ``sources`` (one vector per member, e.g. each run's
    initial weights from :func:`initial_values`) replaces the Gaussian source by a paired
    coupling: the flow then carries initialisations to trained weights. ``prediction``: see
    :class:`WeightGenerator`. Resumes from ``out_dir`` like every fit here."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = WeightGenerator(config.hidden, config.layers, config.aggr, conditioned, prediction)
    y = dataset.y[train, 0]
    model.target_stats.copy_(property_stats(y))
    loader = DataLoader(dataset.index_select(train), batch_size=config.batch_size, shuffle=True)
    start = time.perf_counter()

    def _source(batch) -> Tensor | None:
        return None if sources is None else torch.cat([sources[i] for i in batch.member.tolist()])

    def train_epoch() -> float:
        total, count = 0.0, 0
        for batch in loader:
            loss = model.flow_loss(batch.to(device), source=_source(batch))
            trainer.step(loss)
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        return total / count

    @torch.no_grad()
    def val_loss() -> float:
        gen = torch.Generator().manual_seed(12345)  # the same noise every epoch: comparable losses
        losses = [model.flow_loss(b.to(device), 0.0, gen, _source(b)).item() * b.num_graphs
                  for _ in range(4) for b in DataLoader(dataset.index_select(val), batch_size=config.batch_size)]
        return sum(losses) / (4 * len(val))

    trainer = _Trainer("generator", model, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    model.fit_seconds, model.history = time.perf_counter() - start, trainer.state["history"]
    return model


def initial_values(dataset: ZooDataset) -> list[Tensor]:
    """Every member's initial weights (zoo runs are seeded, so they are rebuilt exactly)."""
    from ..zoo.train import initial_state

    return [converters.state_values(dataset.templates[k], initial_state(m))
            for m, k in zip(dataset.members, dataset.arch_keys)]


def fresh_initialisations(module: nn.Module, template: converters.ParameterGraph, count: int,
                          seed: int = 0) -> Tensor:
    """``count`` new default initialisations of ``module``'s architecture (``[count, P]``)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(module)
    rows = []
    for _ in range(count):
        _reinitialise(model)
        rows.append(converters.state_values(template, model.state_dict()))
    return torch.stack(rows)


def _reinitialise(model: nn.Module) -> None:
    """Draw the model's default initialisation again (every submodule's ``reset_parameters``)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _states(template: converters.ParameterGraph, values: Tensor,
            buffers: Sequence[dict[str, Tensor]] | None = None) -> list[dict[str, Tensor]]:
    """One state per row of ``values``; ``buffers[i]`` (e.g. BatchNorm statistics) replaces
    the template's buffers for row ``i``."""
    if buffers is None:
        return [converters.to_state_dict(template, v) for v in values]
    return [converters.to_state_dict(converters.with_values(template, v, b)) for v, b in zip(values, buffers)]


@torch.no_grad()
def predictions(module: nn.Module, template: converters.ParameterGraph, values: Tensor, x: Tensor,
                buffers: Sequence[dict[str, Tensor]] | None = None) -> Tensor:
    """Class predictions ``[models, inputs]`` of ``module`` run with each row of ``values``
    (and, when given, each row's own ``buffers``; else the template's)."""
    module.eval()
    return torch.stack([torch.func.functional_call(module, s, (x,)).argmax(-1)
                        for s in _states(template, values, buffers)])


def accuracies(module: nn.Module, template: converters.ParameterGraph, values: Tensor, x: Tensor,
               y: Tensor, buffers: Sequence[dict[str, Tensor]] | None = None) -> Tensor:
    return (predictions(module, template, values, x, buffers) == y).float().mean(1)


class Nearest(NamedTuple):
    """Per row: distance to the nearest reference row, its index, whether it is proven nearest."""

    distance: Tensor
    index: Tensor
    proven: Tensor


def nearest_aligned(template: converters.ParameterGraph, values: Tensor, reference: Tensor,
                    candidates: int = 5, exclude: Tensor | None = None, in_frame: bool = False,
                    budget: int | None = None) -> Nearest:
    """Per row of ``values``: the relative distance ``|r - align(r, v)| / |r|`` to the nearest
    row ``r`` of ``reference`` after permutation alignment, and that row's index.

    The ``candidates`` rows nearest in a common frame (every model aligned to ``reference[0]``;
    with ``in_frame``, the rows are taken to share one frame already, e.g. a canonical
    generator's samples and its canonicalised checkpoints) are aligned pairwise first; then
    every other row, in the order of a lower bound no permutation can beat, until that bound
    reaches the best distance found. The bound is the distance between each tensor's sorted
    values: a neuron permutation only reorders a tensor's entries, and sorted orders are the
    closest of all orders. So the nearest row is not missed when weight matching puts a model
    and its near-copy into different frames. ``budget`` caps the pairwise alignments per row;
    ``proven[i]`` says whether row ``i``'s answer is proven nearest (every row left had a bound
    above it), otherwise its distance is an upper bound. ``exclude[i]``: a reference row that
    row ``i`` may not match (itself, for a leave-one-out comparison of the reference with itself)."""
    n = reference.size(1)
    if in_frame:
        dist = torch.cdist(values, reference)
    else:
        frame = converters.with_values(template, reference[0])
        dist = torch.cdist(*[torch.stack([align(frame, converters.with_values(template, v)).edge_value[:n]
                                          for v in rows]) for rows in (values, reference)])
    bound = torch.cdist(_sorted_by_tensor(template, values), _sorted_by_tensor(template, reference))
    bound = bound / reference.norm(dim=1).clamp_min(1e-12)
    if exclude is not None:
        dist[torch.arange(len(values)), exclude] = torch.inf
        bound[torch.arange(len(values)), exclude] = torch.inf
    near = dist.topk(min(candidates, len(reference) - (exclude is not None)), largest=False).indices
    best = torch.full((len(values),), torch.inf)
    index = torch.full((len(values),), -1, dtype=torch.long)
    proven = torch.ones(len(values), dtype=torch.bool)
    for i, row in enumerate(values):
        g = converters.with_values(template, row)
        first = near[i].tolist()
        order = first + [j for j in bound[i].argsort().tolist() if j not in first]
        done = 0
        for j in order:
            if bound[i, j] >= best[i]:
                continue  # no alignment can bring row j nearer
            if budget is not None and done == budget:
                proven[i] = False
                break
            d = aligned_distance(converters.with_values(template, reference[j]), g)
            done += 1
            if d < best[i]:
                best[i], index[i] = d, j
    return Nearest(best, index, proven)


def _sorted_by_tensor(template: converters.ParameterGraph, values: Tensor) -> Tensor:
    """Each parameter tensor's values sorted, per row: invariant to every neuron permutation."""
    return torch.cat([values[:, template.param_index.edge_ids(name)].sort(1).values
                      for name, _, _ in template.param_index.params], 1)


def prediction_similarity(module: nn.Module, template: converters.ParameterGraph, values: Tensor,
                          reference: Tensor, x: Tensor, exclude: Tensor | None = None,
                          buffers: Sequence[dict[str, Tensor]] | None = None,
                          reference_buffers: Sequence[dict[str, Tensor]] | None = None) -> Tensor:
    """Per row of ``values``: the highest fraction of inputs on which it predicts the same class
    as a model of ``reference`` (Zeng et al. 2025: near 1 means a copy); ``exclude`` as in
    :func:`nearest_aligned`."""
    mine = predictions(module, template, values, x, buffers)
    theirs = predictions(module, template, reference, x, reference_buffers)
    agreement = (mine.unsqueeze(1) == theirs.unsqueeze(0)).float().mean(-1)
    if exclude is not None:
        agreement[torch.arange(len(values)), exclude] = -1.0
    return agreement.max(1).values


def with_noise(template: converters.ParameterGraph, values: Tensor, alpha: float, seed: int = 0) -> Tensor:
    """The noise-added-checkpoint baseline: each parameter tensor plus Gaussian noise of
    ``alpha`` times that tensor's standard deviation."""
    gen = torch.Generator().manual_seed(seed)
    out = values.clone()
    for name, _, _ in template.param_index.params:
        ids = template.param_index.edge_ids(name)
        block = values[:, ids]
        std = block.std(1, keepdim=True) if ids.numel() > 1 else block.abs()
        out[:, ids] = block + alpha * std * torch.randn(block.shape, generator=gen)
    return out


def steps_to_accuracy(module: nn.Module, template: converters.ParameterGraph, values: Tensor | None, data,
                      target: float, lr: float = 3e-3, max_steps: int = 600, every: int = 5, batch: int = 32,
                      seed: int = 0, buffers: dict[str, Tensor] | None = None) -> int:
    """Adam steps (batches of ``batch``) from weights ``values`` (``None``: the module's own
    random initialisation, seeded) until test accuracy reaches ``target``; ``max_steps + 1``
    when it never does."""
    model = copy.deepcopy(module)
    torch.manual_seed(seed)
    if values is None:
        _reinitialise(model)
    else:
        state = _states(template, values.unsqueeze(0), None if buffers is None else [buffers])[0]
        model.load_state_dict(state, strict=False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(max_steps + 1):
        if step % every == 0:
            model.eval()
            with torch.no_grad():
                if (model(data.x_test).argmax(-1) == data.y_test).float().mean() >= target:
                    return step
            model.train()
        idx = torch.randint(len(data.y_train), (batch,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return max_steps + 1


__all__ = ["Nearest", "WeightGenerator", "accuracies", "clean_to_velocity", "fit_generator", "fresh_initialisations",
           "heun", "initial_values", "nearest_aligned", "parameter_scale",
           "prediction_similarity", "predictions", "steps_to_accuracy", "with_noise"]
