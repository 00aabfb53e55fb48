"""Train/validation/test splits that never separate the checkpoints of one training run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """Member indices of each part."""

    train: Tensor
    val: Tensor
    test: Tensor


def split_by_run(run: Tensor, family: list[str], fractions: tuple[float, float] = (0.15, 0.15), seed: int = 0,
                 test_families: tuple[str, ...] = ()) -> Split:
    """Shuffle training runs and cut them into train/val/test (``fractions`` = val, test).

    With ``test_families``, the test part is every member of those families (architectures
    never seen in training) and the other families are cut into train/val only.
    """
    held_out = torch.tensor([f in test_families for f in family])
    if test_families and not held_out.any():
        raise ValueError(f"no member belongs to {test_families}; families here: {sorted(set(family))}")
    runs = torch.unique(run[~held_out])
    runs = runs[torch.randperm(len(runs), generator=torch.Generator().manual_seed(seed))]
    n_val = max(1, round(fractions[0] * len(runs)))
    n_test = 0 if test_families else max(1, round(fractions[1] * len(runs)))
    if len(runs) < n_val + n_test + 1:
        raise ValueError(f"{len(runs)} training runs cannot be split into train, val and test")
    part = torch.zeros(int(run.max()) + 1, dtype=torch.long)  # 0 train, 1 val, 2 test
    part[runs[:n_val]] = 1
    part[runs[n_val : n_val + n_test]] = 2
    member_part = part[run]
    member_part[held_out] = 2
    idx = torch.arange(len(run))
    return Split(idx[member_part == 0], idx[member_part == 1], idx[member_part == 2])
