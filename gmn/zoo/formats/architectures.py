"""The torch architectures of the published zoos, as gmn zoo architecture families.

Each is a JSON-able spec (``{"family": "small-cnn-zoo", ...}``) that :func:`build_published`
turns into a module; specs written by an import carry ``input_shape`` (the published data
set is not one gmn ships), specs of a built zoo take it from the data set.

- ``small-cnn-zoo``: Unterthiner et al. 2020's CNN as their Keras code builds it
  (google-research ``dnn_predict_accuracy/train_network.py``, ``build_cnn``): ``depth``
  ``Conv2D(width, kernel, strides=stride, activation=act)`` layers, each followed by
  ``Dropout`` when the rate is positive, ``GlobalAveragePooling2D``, ``Dense(classes)``. Keras'
  ``Conv2D`` pads ``'valid'`` by default and the zoo never sets it, so every convolution is
  unpadded; ``'same'`` is TensorFlow's rule (pad ``max((ceil(n/s)-1)s + k - n, 0)`` in all,
  the smaller half before), which is not torch's symmetric padding when the stride is 2.
- ``siren-inr``: the SIRENs of the INR sets (DWSNets ``nn/inr.py``: ``sin(w0 (W x + b))`` in
  every hidden layer, a linear output plus 0.5; NFN ``experiments/siren_utils.py``: the same
  with ``outermost_linear=True`` and no offset), ``w0 = 30`` in both.
- ``hsg-net``: the CNNs and MLPs of Schürholt et al.'s model zoos (HSG-AIML ``def_net.py``:
  ``Conv2d -> MaxPool2d(2, 2) -> act -> Dropout`` per convolution, the last without pooling
  in ``CNN``/``CNN2``, ``Flatten``, ``Linear -> act -> Dropout``, a linear output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAMILIES = ("small-cnn-zoo", "siren-inr", "hsg-net")

#: activations by the names the zoos' files use (Keras' ``selu`` and torch's share constants)
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU, "leakyrelu": nn.LeakyReLU,
    "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU, "celu": nn.CELU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``'SAME'`` padding of one axis: (before, after), the larger part after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SmallCNNZooNet(nn.Module):
    """Unterthiner et al.'s CNN: ``depth`` convolutions of ``width`` channels (``kernel`` square,
    ``stride``), activation and dropout after each, global average pooling, a linear head.
    ``padding``: ``'valid'`` (the zoo's) or ``'same'`` (TensorFlow's rule)."""

    def __init__(self, channels: int = 1, classes: int = 10, depth: int = 3, width: int = 16, kernel: int = 3,
                 stride: int = 2, padding: str = "valid", act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding {padding!r}: TensorFlow knows 'valid' and 'same'")
        sizes = [channels] + [width] * depth
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, stride=stride) for a, b in zip(sizes[:-1], sizes[1:]))
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.act, self.drop = activation(act), nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            if self.padding == "same":
                top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride)
                left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride)
                x = F.pad(x, (left, right, top, bottom))
            x = self.drop(self.act(conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class SirenINR(nn.Module):
    """``(x, y) -> value``: ``sin(w0 (W x + b))`` per hidden layer, then ``W x + b + offset``."""

    def __init__(self, sizes: list[int], w0: float = 30.0, offset: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.w0, self.offset = float(w0), float(offset)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = torch.sin(self.w0 * layer(x))
        x = self.layers[-1](x)
        return x + self.offset if self.offset else x


class HSGNet(nn.Module):
    """A model-zoo network of Schürholt et al.: ``convs`` as ``[in, out, kernel, pool]``
    (``Conv2d``, ``MaxPool2d(2, 2)`` when ``pool``, activation, dropout), then ``Flatten`` and
    ``linears`` as ``[in, out]`` (activation and dropout after all but the last)."""

    def __init__(self, convs: list[list], linears: list[list[int]], act: str, dropout: float = 0.0):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(int(a), int(b), int(k)) for a, b, k, _ in convs)
        self.pools = [bool(p) for *_, p in convs]
        self.linears = nn.ModuleList(nn.Linear(int(a), int(b)) for a, b in linears)
        self.act, self.drop = activation(act), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for conv, pool in zip(self.convs, self.pools):
            x = conv(x)
            if pool:
                x = F.max_pool2d(x, 2, 2)
            x = self.drop(self.act(x))
        if len(self.convs):
            x = x.flatten(1)
        for layer in self.linears[:-1]:
            x = self.drop(self.act(layer(x)))
        return self.linears[-1](x)


def _valid_fits(side: int, depth: int, kernel: int, stride: int) -> bool:
    """Whether ``depth`` unpadded convolutions leave at least one pixel of a ``side`` image."""
    for _ in range(depth):
        side = (side - kernel) // stride + 1
        if side < 1:
            return False
    return True


def build_published(arch: dict, input_shape: tuple[int, ...] | None = None, classes: int | None = None) -> nn.Module:
    """The module of a published-zoo spec; ``input_shape``/``classes`` of a data set, when the
    spec (one a zoo build wrote) does not carry them."""
    family = arch["family"]
    if family == "small-cnn-zoo":
        shape = arch.get("input_shape") or input_shape
        padding = arch["padding"]
        if padding == "auto":  # the preset: the zoo's 'valid' where the image allows it (MNIST), 'same' on digits
            padding = "valid" if _valid_fits(min(shape[1:]), arch["depth"], arch["kernel"], arch["stride"]) else "same"
        return SmallCNNZooNet(shape[0], arch.get("classes", classes), arch["depth"], arch["width"], arch["kernel"],
                              arch["stride"], padding, arch["act"], arch.get("dropout", 0.0))
    if family == "siren-inr":
        return SirenINR(arch["sizes"], arch["w0"], arch.get("offset", 0.0))
    if family == "hsg-net":
        return HSGNet(arch["convs"], arch["linears"], arch["act"], arch.get("dropout", 0.0))
    raise ValueError(f"{family!r} is not a published-zoo architecture ({', '.join(FAMILIES)})")


def example_input(arch: dict) -> Tensor:
    """Two inputs of the spec's shape (pixel coordinates in ``[-1, 1]`` for a SIREN)."""
    if arch["family"] == "siren-inr":
        return torch.rand(64, arch["sizes"][0]) * 2 - 1
    return torch.randn(2, *arch["input_shape"])
