"""Architecture families and training hyperparameters of generated zoos.

An architecture is a JSON-able spec (``{"family": "cnn", "depth": 3, ...}``); ``build``
turns it into a module for a data set's input shape. Families work on 1-D signals
(mnist1d) and 2-D images alike. Hyperparameters follow Unterthiner et al. 2020
("Predicting Neural Network Accuracy from Weights") for the Small CNN Zoo preset.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..architectures import TransformerBlock
from .formats.architectures import FAMILIES as PUBLISHED
from .formats.architectures import build_published

FAMILIES = ("mlp", "cnn", "rescnn", "vit", "moe")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _batch_norm(dims: int) -> type[nn.Module]:
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


def _pool(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())))


class MLPNet(nn.Module):
    """Flatten, ``depth`` hidden layers of ``width`` with dropout, a linear head."""

    def __init__(self, inputs: int, classes: int, depth: int, width: int, act: str, dropout: float):
        super().__init__()
        sizes = [inputs] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act, self.drop = ACTIVATIONS[act](), nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.head(x)


class ConvNet(nn.Module):
    """Convolutions (stride 2 after the first), global average pooling, a linear head: the
    Small CNN Zoo layout at ``depth=3, width=16, kernel=3``."""

    def __init__(self, channels: int, classes: int, dims: int, depth: int, width: int, kernel: int, act: str,
                 dropout: float):
        super().__init__()
        conv = _conv(dims)
        chans = [channels] + [width] * depth
        self.convs = nn.ModuleList(conv(a, b, kernel, stride=2 if i else 1, padding=kernel // 2)
                                   for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        self.act, self.drop = ACTIVATIONS[act](), nn.Dropout(dropout)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = self.drop(self.act(conv(x)))
        return self.head(_pool(x))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dims: int, act: str):
        super().__init__()
        conv, norm = _conv(dims), _batch_norm(dims)
        self.conv1, self.bn1 = conv(width, width, 3, padding=1, bias=False), norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, padding=1, bias=False), norm(width)
        self.act = ACTIVATIONS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class ResConvNet(nn.Module):
    """A stem convolution with BatchNorm, residual blocks, global average pooling, a head."""

    def __init__(self, channels: int, classes: int, dims: int, blocks: int, width: int, act: str):
        super().__init__()
        self.stem = nn.Sequential(_conv(dims)(channels, width, 3, padding=1, bias=False), _batch_norm(dims)(width),
                                  ACTIVATIONS[act]())
        self.blocks = nn.Sequential(*(ResidualBlock(width, dims, act) for _ in range(blocks)))
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_pool(self.blocks(self.stem(x))))


class PatchTransformer(nn.Module):
    """A small ViT on 1-D or 2-D inputs; ``experts > 0`` makes every MLP a top-2 MoE."""

    def __init__(self, channels: int, classes: int, dims: int, tokens: int, patch: int, depth: int, dim: int,
                 heads: int, experts: int):
        super().__init__()
        self.patch = _conv(dims)(channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, 2 * dim, experts=experts) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def build(arch: dict, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    """The module of architecture spec ``arch`` for inputs of shape ``(C, *spatial)``; counted on
    the meta device first, and refused when it cannot fit in free memory (``converters.limits``)."""
    from converters.limits import check_module

    check_module(lambda: _build(arch, input_shape, classes), f"architecture {arch}")
    return _build(arch, input_shape, classes)


def _build(arch: dict, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    channels, spatial = input_shape[0], input_shape[1:]
    dims, family = len(spatial), arch["family"]
    if family == "mlp":
        return MLPNet(math.prod(input_shape), classes, arch["depth"], arch["width"], arch["act"], arch["dropout"])
    if family == "cnn":
        return ConvNet(channels, classes, dims, arch["depth"], arch["width"], arch["kernel"], arch["act"],
                       arch["dropout"])
    if family == "rescnn":
        return ResConvNet(channels, classes, dims, arch["blocks"], arch["width"], arch["act"])
    if family in ("vit", "moe"):
        patch = max(1, spatial[0] // 4)
        tokens = math.prod(s // patch for s in spatial)
        return PatchTransformer(channels, classes, dims, tokens, patch, arch["depth"], arch["dim"], arch["heads"],
                                arch.get("experts", 0))
    if family in PUBLISHED:
        return build_published(arch, input_shape, classes)
    raise ValueError(f"unknown architecture family {family!r}; known: {FAMILIES}")


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_arch(family: str, rng: np.random.Generator) -> dict:
    """A random member of ``family`` (depth, width, kernel, activation, ... vary)."""
    if family == "mlp":
        return {"family": "mlp", "depth": int(rng.integers(1, 4)), "width": _choice(rng, [16, 32, 64]),
                "act": _choice(rng, ["relu", "tanh", "gelu"]), "dropout": 0.0}
    if family == "cnn":
        return {"family": "cnn", "depth": int(rng.integers(2, 5)), "width": _choice(rng, [8, 16, 24]),
                "kernel": _choice(rng, [3, 5]), "act": _choice(rng, ["relu", "tanh", "gelu"]), "dropout": 0.0}
    if family == "rescnn":
        return {"family": "rescnn", "blocks": int(rng.integers(1, 3)), "width": _choice(rng, [8, 16]),
                "act": _choice(rng, ["relu", "gelu"])}
    if family in ("vit", "moe"):
        arch = {"family": family, "depth": int(rng.integers(1, 3)), "dim": _choice(rng, [16, 24]),
                "heads": _choice(rng, [2, 4])}
        if family == "moe":
            arch["experts"] = _choice(rng, [2, 4])
        return arch
    raise ValueError(f"unknown architecture family {family!r}; known: {FAMILIES}")


def small_cnn_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """Architecture and hyperparameters of one Small CNN Zoo run (Unterthiner et al. 2020):
    3 convolutions of 16 channels, global average pooling, a linear head; optimizer,
    learning rate, L2, initialisation, dropout and training fraction sampled per run."""
    arch = {"family": "cnn", "depth": 3, "width": 16, "kernel": 3, "act": _choice(rng, ["relu", "tanh"]),
            "dropout": float(rng.uniform(0.0, 0.7))}
    hparams = {
        "optimizer": _choice(rng, ["adam", "rmsprop", "sgd"]),
        "lr": _log_uniform(rng, 5e-4, 5e-2),
        "l2": _log_uniform(rng, 1e-8, 1e-2),
        "init": _choice(rng, ["xavier_normal", "xavier_uniform", "he_normal", "orthogonal", "truncated_normal",
                              "normal"]),
        "init_std": _log_uniform(rng, 1e-3, 0.5),
        "train_fraction": float(rng.uniform(0.1, 1.0)),
    }
    return arch, hparams


def mixed_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """One run of a mixed-architecture zoo in the spirit of CNN Wild Park: a family drawn
    uniformly, its shape sampled, optimizer and schedule sampled around workable values."""
    arch = sample_arch(_choice(rng, list(FAMILIES)), rng)
    hparams = {
        "optimizer": _choice(rng, ["adam", "sgd"]),
        "lr": _log_uniform(rng, 3e-4, 1e-2),
        "l2": _log_uniform(rng, 1e-6, 1e-3),
        "init": "default",
        "init_std": 0.0,
        "train_fraction": float(rng.uniform(0.1, 1.0)),
    }
    if hparams["optimizer"] == "sgd":
        hparams["lr"] *= 10
    return arch, hparams


def generation_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """Well-trained small CNNs of six shapes (depth 2-3, width 8/12/16, ReLU) under one
    sound recipe (Adam, full training set): the training data of weight generators, with
    one shape to hold out as the architecture a generator has not seen."""
    arch = {"family": "cnn", "depth": int(rng.integers(2, 4)), "width": _choice(rng, [8, 12, 16]), "kernel": 3,
            "act": "relu", "dropout": 0.0}
    hparams = {"optimizer": "adam", "lr": _log_uniform(rng, 3e-3, 1e-2), "l2": _log_uniform(rng, 1e-6, 1e-4),
               "init": "default", "init_std": 0.0, "train_fraction": 1.0}
    return arch, hparams


def generation_resnet_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """One shape of residual CNN with BatchNorm (two blocks, width 16) under the generation
    recipe: the BatchNorm row of the weight-generation benchmark."""
    arch = {"family": "rescnn", "blocks": 2, "width": 16, "act": "relu"}
    hparams = {"optimizer": "adam", "lr": _log_uniform(rng, 3e-3, 1e-2), "l2": _log_uniform(rng, 1e-6, 1e-4),
               "init": "default", "init_std": 0.0, "train_fraction": 1.0}
    return arch, hparams


def generation_vit_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """One shape of small ViT (two blocks, width 24, two heads) under the generation recipe,
    at a transformer's learning rates: the attention row of the weight-generation benchmark."""
    arch = {"family": "vit", "depth": 2, "dim": 24, "heads": 2}
    hparams = {"optimizer": "adam", "lr": _log_uniform(rng, 1.5e-3, 3e-3), "l2": _log_uniform(rng, 1e-6, 1e-4),
               "init": "default", "init_std": 0.0, "train_fraction": 1.0}
    return arch, hparams


def unterthiner_zoo(rng: np.random.Generator) -> tuple[dict, dict]:
    """Unterthiner et al. 2020's recipe itself (``gmn.zoo.formats.small_cnn_zoo.sample_run``):
    their Keras CNN (stride 2, 'valid'), hyperparameter space, initialisers and optimizers."""
    from .formats.small_cnn_zoo import sample_run

    return sample_run(rng)


PRESETS = {"small-cnn": small_cnn_zoo, "mixed": mixed_zoo, "generation": generation_zoo,
           "generation-resnet": generation_resnet_zoo, "generation-vit": generation_vit_zoo,
           "small-cnn-zoo": unterthiner_zoo}


def initialise(model: nn.Module, init: str, std: float) -> None:
    """Re-initialise weights (biases to zero) with scheme ``init``; ``"default"`` keeps torch's."""
    if init == "default":
        return
    if init.startswith("keras."):  # the small-cnn-zoo preset: Keras' initialisers
        from .formats.small_cnn_zoo import keras_initialise

        return keras_initialise(model, init, std)
    schemes = {
        "xavier_normal": nn.init.xavier_normal_,
        "xavier_uniform": nn.init.xavier_uniform_,
        "he_normal": nn.init.kaiming_normal_,
        "orthogonal": nn.init.orthogonal_,
        "truncated_normal": lambda w: nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std),
        "normal": lambda w: nn.init.normal_(w, std=std),
    }
    if init not in schemes:
        raise ValueError(f"unknown initialisation {init!r}; known: {sorted(schemes)} or 'default'")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            schemes[init](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
