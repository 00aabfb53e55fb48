"""Editing adapters: an equivariant editor over adapter graphs changes each adapter's factors so that
the base with the edited adapter does better on that adapter's own task.

The editor is :class:`gmn.tasks.editing.WeightEditor` (new values = old + an edge readout), run on
the graphs of a built LoRA zoo (:mod:`gmn.zoo.lora`: each adapter fine-tunes the zoo's base on digits
rotated by its angle). The loss runs the base with the edited factors through PEFT's own LoRA layers
(``torch.func.functional_call`` on one ``peft.PeftModel`` of the base, the factors swapped in by
name), on a batch of the adapter's rotated training images; so the edit is trained on what PEFT will
compute when the edited folder is loaded. A rank permutation of an adapter permutes its factors and
the editor's output alike: the edit is the same adapter either way.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.loader import DataLoader

import converters

from ..data import Split
from .editing import WeightEditor
from .property import TrainConfig, _Trainer

#: PEFT's saved key of a LoRA factor -> the live PeftModel's parameter (adapter name inserted)
_LIVE = {".lora_A.weight": ".lora_A.{}.weight", ".lora_B.weight": ".lora_B.{}.weight"}


def live_names(keys, model: nn.Module, adapter: str = "default") -> dict[str, str]:
    """Each saved LoRA key's parameter in ``model`` (a ``PeftModel``), or one line saying which has none."""
    params = dict(model.named_parameters())
    out = {}
    for key in keys:
        suffix = next((s for s in _LIVE if key.endswith(s)), None)
        name = None if suffix is None else key[: -len(suffix)] + _LIVE[suffix].format(adapter)
        if name not in params:
            raise ValueError(f"{key}: adapter editing runs LoRA factors of Linear and Conv layers; this key has no "
                             "such parameter in the PEFT model of the zoo's base (DoRA, embeddings and saved modules "
                             "are not edited)")
        out[key] = name
    return out


@dataclass
class AdapterTasks:
    """Every adapter's task: the zoo's images rotated by the adapter's angle (``gmn.zoo.lora.rotate``)."""

    angles: Tensor
    data: object  #: the zoo's :class:`gmn.zoo.datasets.TaskData`

    def batch(self, member: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        from ..zoo.lora import rotate

        pick = torch.randint(len(self.data.y_train), (size,), generator=generator)
        return rotate(self.data.x_train[pick], float(self.angles[member])), self.data.y_train[pick]

    def test(self, member: int) -> tuple[Tensor, Tensor]:
        from ..zoo.lora import rotate

        return rotate(self.data.x_test, float(self.angles[member])), self.data.y_test


@dataclass
class AdapterEditResult:
    """Test accuracy on each test adapter's own task, before and after the edit."""

    before: np.ndarray
    after: np.ndarray
    seconds: float
    val_unedited: float  #: the validation loss of the unedited adapters (the untrained editor's)
    history: list[dict] = field(default_factory=list)
    editor: WeightEditor | None = None


class _Runner:
    """The base with one adapter's factors swapped in: PEFT's forward, differentiable in the factors.
    Runs a frozen copy of ``model`` (a ``PeftModel``); ``keys``: the saved LoRA keys it is given
    (mapped with :func:`live_names`)."""

    def __init__(self, model: nn.Module, keys):
        self.names = live_names(keys, model)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def logits(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(self.model, {self.names[k]: v for k, v in state.items()}, (x,))


def _states(batch, values: Tensor) -> list[dict[str, Tensor]]:
    """One state dict per graph of ``batch`` (``to_state_dict`` gives a lone graph's as a dict)."""
    states = converters.to_state_dict(batch, values)
    return states if isinstance(states, list) else [states]


def fit_adapter_editor(dataset, split: Split, tasks: AdapterTasks, model: nn.Module,
                       config: TrainConfig | None = None, images: int = 64, scale: float = 1.0,
                       out_dir: str | Path | None = None, progress: bool = True) -> AdapterEditResult:
    """Train a :class:`WeightEditor` on ``dataset``'s adapter graphs (``gmn.zoo.lora.AdapterDataset``, raw
    frame) so that the cross-entropy of ``model`` (a ``PeftModel`` of the zoo's base) with the edited
    factors falls on ``images`` of each adapter's task per step; early stopping on the validation
    adapters' loss (fixed draws). Reports each test adapter's test accuracy before and after."""
    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    runner = _Runner(model, [n for n, _, _ in next(iter(dataset.templates.values())).param_index.params])
    editor = WeightEditor(config.hidden, config.layers, aggr=config.aggr, scale=scale)
    draw = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset.index_select(split.train), batch_size=config.batch_size, shuffle=True)

    def losses(batch, values: Tensor, generator: torch.Generator) -> Tensor:
        out = []
        for member, state in zip(batch.member.tolist(), _states(batch, values)):
            x, y = tasks.batch(member, images, generator)
            out.append(F.cross_entropy(runner.logits(state, x), y))
        return torch.stack(out)

    def train_epoch() -> float:
        total, count = 0.0, 0
        for batch in loader:
            loss = losses(batch, editor(batch), draw).mean()
            trainer.step(loss)
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        return total / count

    def val_loss() -> float:
        fixed = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            return float(torch.cat([losses(b, editor(b), fixed)
                                    for b in DataLoader(dataset.index_select(split.val), batch_size=64)]).mean())

    unedited = val_loss()  # the editor starts as the identity
    trainer = _Trainer("adapter-editor", editor, config, Path(out_dir) if out_dir is not None else None, progress)
    trainer.fit(train_epoch, val_loss)
    before, after = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset.index_select(split.test), batch_size=64):
            pairs = zip(batch.member.tolist(), _states(batch, converters.parameter_values(batch)),
                        _states(batch, editor(batch)))
            for member, unedited_state, edited_state in pairs:
                x, y = tasks.test(member)  # rotated once for both
                before.append(float((runner.logits(unedited_state, x).argmax(-1) == y).float().mean()))
                after.append(float((runner.logits(edited_state, x).argmax(-1) == y).float().mean()))
    return AdapterEditResult(np.array(before), np.array(after), time.perf_counter() - start, unedited,
                             trainer.state["history"], editor)


__all__ = ["AdapterEditResult", "AdapterTasks", "fit_adapter_editor", "live_names"]
