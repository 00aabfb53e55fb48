"""A probing baseline for any architecture: learned input probes in the manner of Deep
Linear Probe Generators (Kahana et al. 2024) and ProbeX.

A small set of learned inputs, made by a deep linear generator (linear layers, no
activation) from learned latent codes, one generator per input shape of the zoo, is fed
through every member's model with that member's weights (``converters.functional_call``,
so any architecture gmn converts works). Each member's outputs on the probes are
concatenated (divided by their root mean square, whose logarithm is kept as one more
feature) and read by an MLP; probes, generator and MLP are trained end to end. Reading
the function, not the weights, the prediction is invariant to every symmetry of the model
by construction. Architectures whose outputs differ in size are zero-padded to the widest.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import converters

from ..data import Split, ZooDataset
from .property import MethodResult, TrainConfig, _standardiser, _Trainer, minibatch_epoch

PROBES = 32  #: probe inputs per input shape
LATENT = 32  #: size of a probe's latent code


def _first_tensor(out) -> Tensor:
    """A model's output tensor (the first of a tuple, ``logits`` of a dict-like output)."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return next(iter(out.values()))
    return _first_tensor(out[0])


class ProbeNet(nn.Module):
    """Learned probes per input shape, the members' outputs on them, an MLP readout.

    ``arch_modules`` is :meth:`ZooDataset.arch_modules` (a module and an example input per
    architecture key); ``templates`` the zoo's graphs of those keys (their ``param_index``
    lays out a member's values).
    """

    def __init__(self, templates: dict, arch_modules: dict[str, tuple[nn.Module, Tensor]], out_dim: int,
                 hidden: int = 32, probes: int = PROBES, latent: int = LATENT):
        super().__init__()
        self._vmap_fails: set[str] = set()  # architectures with an op vmap cannot batch
        self.graphs, self.shape_of, shapes = {}, {}, {}
        for key, (module, example) in arch_modules.items():
            if not example.is_floating_point():
                raise ValueError(f"learned probes need real-valued inputs; architecture {key} reads "
                                 f"{example.dtype} inputs (token ids?)")
            g = copy.copy(templates[key])
            g.model = module.eval().requires_grad_(False)
            self.graphs[key] = g
            shape = tuple(example.shape[1:])
            self.shape_of[key] = name = "x".join(map(str, shape)) or "scalar"
            shapes[name] = shape
        self.shapes = shapes
        self.codes = nn.ParameterDict({n: nn.Parameter(torch.randn(probes, latent)) for n in shapes})
        self.generators = nn.ModuleDict({n: nn.Sequential(nn.Linear(latent, 64), nn.Linear(64, 64),
                                                          nn.Linear(64, math.prod(s)))
                                         for n, s in shapes.items()})
        with torch.no_grad():  # probes start at unit scale, like standardised inputs
            for n in shapes:
                self.generators[n][-1].weight.div_(self.generators[n](self.codes[n]).std().clamp_min(1e-6))
            widths = {key: self._outputs(key, converters.parameter_values(g)[None]).size(-1)
                      for key, g in self.graphs.items()}
        self.width = max(widths.values())
        self.readout = nn.Sequential(nn.Linear(probes * self.width + 1, 4 * hidden), nn.ReLU(),
                                     nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def probes(self, name: str) -> Tensor:
        return self.generators[name](self.codes[name]).view(-1, *self.shapes[name])

    def _outputs(self, key: str, values: Tensor, buffers: list[dict] | None = None) -> Tensor:
        """The ``(n, probes, width)`` outputs of ``n`` members of architecture ``key``."""
        g, x = self.graphs[key], self.probes(self.shape_of[key])

        def one(v: Tensor, graph=g) -> Tensor:
            return _first_tensor(converters.functional_call(graph, v, x)).reshape(x.size(0), -1)

        if buffers is None and key not in self._vmap_fails:
            try:
                return torch.func.vmap(one)(values)
            except Exception:  # noqa: BLE001 - an op without a batching rule: one member at a time
                self._vmap_fails.add(key)
        return torch.stack([one(v, g if not b else converters.with_values(g, v.detach(), b))
                            for v, b in zip(values, buffers or [None] * len(values))])

    def forward(self, values: list[Tensor], keys: list[str], buffers: list[dict] | None = None) -> Tensor:
        """Predictions for members with parameter vectors ``values`` of architectures ``keys``
        (``buffers``: each member's buffers, BatchNorm statistics say, or none)."""
        buffers = buffers or [{}] * len(values)
        feats = values[0].new_zeros(len(values), self.readout[0].in_features - 1)
        for key in dict.fromkeys(keys):
            rows = [i for i, k in enumerate(keys) if k == key]
            member_buffers = [buffers[i] for i in rows]
            out = self._outputs(key, torch.stack([values[i] for i in rows]),
                                member_buffers if any(member_buffers) else None)
            feats[rows, : out[0].numel()] = out.flatten(1)
        feats = torch.nan_to_num(feats, nan=0.0, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6)
        rms = feats.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)
        return self.readout(torch.cat([feats / rms, rms.log()], 1))


def fit_probe(dataset: ZooDataset, split: Split, config: TrainConfig | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> MethodResult:
    """Train the probing baseline on ``split.train`` (targets standardised with training
    statistics), stop early on ``split.val``, predict ``split.test``. Raises ``ValueError``
    when an architecture of the zoo reads non-real inputs."""
    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    net = ProbeNet(dataset.templates, dataset.arch_modules(), dataset.y.size(1), config.hidden).to(device)
    for g in net.graphs.values():
        g.model.to(device)
    values = [torch.nan_to_num(v.float(), nan=0.0, posinf=0.0, neginf=0.0).to(device) for v in dataset.values]
    buffers = [{k: b.to(device) for k, b in bufs.items()} for bufs in dataset.buffers]
    y_mean, y_std = _standardiser(dataset.y[split.train])
    y = ((dataset.y - y_mean) / y_std).to(device)

    def run(rows: Tensor) -> Tensor:
        rows = rows.tolist()
        return net([values[i] for i in rows], [dataset.arch_keys[i] for i in rows], [buffers[i] for i in rows])

    def predict(rows: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([run(part) for part in rows.split(2 * config.batch_size)])

    def train_epoch() -> float:
        return minibatch_epoch(trainer, split.train, config.batch_size,
                               lambda b: F.mse_loss(run(b), y[b.to(device)]), clip=1.0)

    def val_loss() -> float:
        return float(F.mse_loss(predict(split.val), y[split.val.to(device)]))

    trainer = _Trainer("probe", net, config, None if out_dir is None else Path(out_dir), progress)
    trainer.fit(train_epoch, val_loss)
    pred = predict(split.test).cpu() * y_std + y_mean
    return MethodResult("probe", pred.numpy(), dataset.y[split.test].numpy(), dataset.target_names,
                        time.perf_counter() - start, trainer.state["history"])
