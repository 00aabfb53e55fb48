"""What the published-zoo readers share: the catalogue write, split files, value parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from converters.files import atomic_write

from ...data.splits import Split
from ..catalogue import METRICS, Catalogue
from ..generate import save_checkpoint
from ..zoo import Zoo, confined

SPLITS = "splits"  #: folder of a zoo's published splits (``splits/<name>.json``)
PARTS = ("train", "val", "test")


class FormatError(ValueError):
    """A published zoo's file does not have the layout its format defines (the message names it)."""


def number(text) -> float | None:
    """A finite float, or None (empty cells, ``nan``, words)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metrics(train_acc, test_acc, train_loss, test_loss) -> dict[str, float | None]:
    """gmn's catalogue metrics; ``gap`` is train minus test accuracy (HSG's ``ggap`` too)."""
    out = {"train_acc": number(train_acc), "test_acc": number(test_acc), "train_loss": number(train_loss),
           "test_loss": number(test_loss)}
    out["gap"] = None if out["train_acc"] is None or out["test_acc"] is None else out["train_acc"] - out["test_acc"]
    return out


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values())


def write_checkpoint(out: Path, rel: str, state: dict[str, torch.Tensor]) -> str:
    save_checkpoint({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, out / rel)
    return rel


def catalogue_runs(out: Path, runs: list[dict], replace: bool, settings: dict) -> Zoo:
    """Catalogue ``runs`` (checkpoint files already written) in the zoo at ``out``; runs it holds
    already are refused unless ``replace``. A zoo imported from another source is refused.
    The runs and the zoo's ``settings`` go in one transaction (``Catalogue.add_runs``, as in
    ``gmn zoo import``): an import that fails or is killed midway catalogues nothing, and its
    rerun is not refused."""
    catalogue = Catalogue(out)
    try:
        catalogue.check_claim(**settings)
        clash = sorted({r["run_id"] for r in runs} & catalogue.done())
        if clash and not replace:
            raise ValueError(f"{out} already holds runs {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}; "
                             f"an import never replaces runs (--replace does)")
        for run in runs:
            for ckpt in run["checkpoints"]:
                ckpt.setdefault("extra", {})
                for m in METRICS:
                    ckpt.setdefault(m, None)
        catalogue.add_runs(runs, meta=settings)  # one transaction: all runs (and the settings) or none
    finally:
        catalogue.close()
    return Zoo(out)


def write_split(out: Path, name: str, parts: dict[str, list[str]], definition: str) -> Path:
    """``splits/<name>.json``: the checkpoint paths (as catalogued) of each part, in the anchor's
    order (a path listed twice is kept twice: the anchor's split is reproduced, not cleaned)."""
    path = out / SPLITS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"definition": definition, **{p: parts.get(p, []) for p in PARTS}})
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))  # the old split or the new, never half
    return path


def read_split(path: str | Path) -> dict[str, list[str]]:
    """A split file's parts (``train``, ``val``, ``test``: lists of checkpoint paths), refused
    in one line naming the file when it is too large to be one, not JSON, or not of that shape."""
    from converters.limits import MAX_JSON_BYTES, check_file_size

    path = Path(path)
    try:
        check_file_size(path, MAX_JSON_BYTES, "split file")
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: not a readable split file ({str(err).removeprefix(f'{path}: ')})") from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(p), list) for p in PARTS):
        raise FormatError(f"{path}: not a split file (a JSON object of lists 'train', 'val' and 'test')")
    for part in PARTS:
        bad = [p for p in spec[part] if not isinstance(p, str)]
        if bad:
            raise FormatError(f"{path}: '{part}' lists {bad[0]!r}, not a checkpoint path")
    return {p: spec[p] for p in PARTS}


def split_by_index_file(data, path: str | Path) -> Split:
    """The split a split file lists (``splits/<name>.json`` of an imported zoo: the checkpoint
    paths of ``train``, ``val`` and ``test``) as member indices of ``data`` (a
    :class:`~gmn.data.ZooDataset` or anything with ``members``). A listed checkpoint that is
    not a member (left out as diverged, or another zoo's) is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        root = getattr(getattr(data, "zoo", None), "root", None)
        if root is not None and not path.is_absolute():
            path = confined(Path(root), str(Path(SPLITS) / path) if path.suffix else f"{SPLITS}/{path}.json")
    spec = read_split(path)
    where = {m["path"]: i for i, m in enumerate(data.members)}
    out = []
    for part in PARTS:
        missing = [p for p in spec[part] if p not in where]
        if missing:
            raise FormatError(f"{path}: {len(missing)} checkpoints of '{part}' are not members of this zoo "
                              f"(first: {missing[0]})")
        out.append(torch.tensor([where[p] for p in spec[part]], dtype=torch.long))
    return Split(*out)
