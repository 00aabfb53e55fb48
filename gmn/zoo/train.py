"""Train one zoo member, deterministically from its seed."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import datasets
from .families import build, initialise

BATCH_SIZE = 32


def _optimizer(name: str, params, lr: float, l2: float, model: nn.Module | None = None) -> torch.optim.Optimizer:
    if name.startswith("keras."):  # the small-cnn-zoo preset: tf.keras' optimizers and L2 on kernels
        from .formats.small_cnn_zoo import keras_optimizer

        return keras_optimizer(model, name, lr, l2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=l2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=l2)
    raise ValueError(f"unknown optimizer {name!r}")


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def _checkpoint(model: nn.Module, epoch: int, x: torch.Tensor, y: torch.Tensor, data) -> dict:
    test_acc, test_loss = _evaluate(model, data.x_test, data.y_test)
    train_acc, train_loss = _evaluate(model, x, y)
    state = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    return {"epoch": epoch, "state": state, "test_acc": test_acc, "test_loss": test_loss, "train_acc": train_acc,
            "train_loss": train_loss, "gap": train_acc - test_acc}


def initial_state(run: dict) -> dict[str, torch.Tensor]:
    """The weights run ``run`` (a zoo member or plan entry) started from: training is seeded,
    so they are rebuilt exactly as :func:`train_run` drew them."""
    torch.manual_seed(run["seed"])
    data = datasets.load(run["dataset"])
    model = build(run["arch"], data.input_shape, data.classes)
    initialise(model, run["hparams"]["init"], run["hparams"]["init_std"])
    return {k: v.detach() for k, v in model.state_dict().items()}


def train_run(run: dict) -> dict:
    """Train ``run`` (``run_id, arch, hparams, seed, dataset, epochs, checkpoint_epochs``) and
    return its record with the checkpoints' weights (numpy arrays: they travel between
    processes and Ray workers; the caller writes files, so there is one writer per zoo).

    A run whose loss stops being finite ends there ("diverged"); checkpoints before that are kept.
    """
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(run["seed"])
    data = datasets.load(run["dataset"])
    hp = run["hparams"]
    model = build(run["arch"], data.input_shape, data.classes)
    initialise(model, hp["init"], hp["init_std"])
    generator = torch.Generator().manual_seed(run["seed"])
    n_train = max(BATCH_SIZE, int(hp["train_fraction"] * len(data.y_train)))
    subset = torch.randperm(len(data.y_train), generator=generator)[:n_train]
    x, y = data.x_train[subset], data.y_train[subset]
    opt = _optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["l2"], model)
    curve, checkpoints, status = [], [], "done"
    if 0 in run["checkpoint_epochs"]:  # the initialisation, as the Small CNN Zoo keeps it
        checkpoints.append(_checkpoint(model, 0, x, y, data))
    for epoch in range(1, run["epochs"] + 1):
        model.train()
        total, count = 0.0, 0
        for batch in torch.randperm(n_train, generator=generator).split(BATCH_SIZE):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        test_acc, test_loss = _evaluate(model, data.x_test, data.y_test)
        curve.append({"epoch": epoch, "train_loss": total / count, "test_acc": test_acc, "test_loss": test_loss})
        if not math.isfinite(total) or not all(torch.isfinite(p).all() for p in model.parameters()):
            status = "diverged"
            break
        if epoch in run["checkpoint_epochs"]:
            checkpoints.append(_checkpoint(model, epoch, x, y, data))
    last = checkpoints[-1] if checkpoints else {}
    return {**run, "status": status, "curve": curve, "checkpoints": checkpoints,
            "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
            "train_acc": last.get("train_acc"), "train_loss": last.get("train_loss"), "gap": last.get("gap"),
            "seconds": time.perf_counter() - start}
