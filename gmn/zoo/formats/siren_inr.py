"""The SIREN INR sets of DWSNets (Navon et al. 2023) and NFN (Zhou et al. 2023): one SIREN
state dict per image, the label from the folder.

- DWSNets (``experiments/mnist/generate_data_splits.py``, ``nn/inr.py``): files
  ``mnist_png_<training|testing>_<label>_<image>/checkpoints/*.pth``; the label is the
  second-to-last ``_`` field of the file's grandparent folder, the part "train" when the path
  says "train", else "test"; validation is 5,000 training INRs drawn by sklearn's
  ``train_test_split`` (unseeded there, so their ``mnist_splits.json`` is the split: pass it
  as ``split_file``; without it we draw with ``random_state=0``). The INR: ``seq.0`` and
  ``seq.1`` are ``sin(30 (W x + b))`` layers, ``seq.2`` linear, output ``+ 0.5``.
- NFN (``experiments/data_utils.py:SirenDataset``, ``siren_utils.py``): files
  ``<prefix>_<label>s/net<index>.pth``; ``<prefix>_aug<k>_<label>s`` hold augmented copies
  (training only); the split is by index with the config's ``split_points: [45000, 50000]``
  (train below 45,000, val below 50,000, test above). The SIREN: ``net.0.linear``,
  ``net.1.linear`` with ``w0 = 30``, ``net.2`` linear (``outermost_linear=True``), no offset.

Files are read with ``torch.load(weights_only=True)`` and written back as safetensors under
:class:`~.architectures.SirenINR`'s names (``layers.<i>.weight``); run ``<image>``'s
checkpoints are the original (epoch 0) and its augmented copies (epoch ``k + 1``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...checkpoints import load_weights
from ..zoo import Zoo, confined
from .common import FormatError, catalogue_runs, finite, write_checkpoint, write_split

W0 = 30.0  #: both sets' frequency (DWSNets ``Siren(w0=30.0)``, NFN ``first/hidden_omega_0=30``)
OFFSET = {"dwsnets": 0.5, "nfn": 0.0}  #: DWSNets' INR returns ``seq(x) + 0.5``
NFN_SPLIT_POINTS = (45000, 50000)  #: NFN's ``split_points`` (mnist, fashion and cifar configs)
DWS_VAL_SIZE = 5000  #: DWSNets' ``--val-size``

_DWS_FOLDER = re.compile(r"^(?P<name>.+)_(?P<label>\d+)_(?P<image>\d+)$")
_NFN_FOLDER = re.compile(r"^(?P<prefix>.+?)(?:_aug(?P<aug>\d+))?_(?P<label>\d)s$")
_NFN_FILE = re.compile(r"^net(?P<index>\d+)\.pth$")


def siren_state(state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], list[int]]:
    """A SIREN state dict (layers as ``<prefix>.weight`` / ``<prefix>.bias`` pairs, in order) in
    :class:`SirenINR`'s names, and its layer sizes."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        prefix, _, kind = key.rpartition(".")
        if kind not in ("weight", "bias"):
            raise FormatError(f"{where}: {key!r} is not a SIREN layer's weight or bias")
        groups.setdefault(prefix, {})[kind] = value
    sizes: list[int] = []
    out = {}
    for i, (prefix, group) in enumerate(groups.items()):
        w, b = group.get("weight"), group.get("bias")
        if w is None or b is None or w.dim() != 2 or tuple(b.shape) != (w.shape[0],):
            raise FormatError(f"{where}: layer {prefix!r} needs a 2-D weight and a matching bias")
        if sizes and w.shape[1] != sizes[-1]:
            raise FormatError(f"{where}: layer {prefix!r} reads {w.shape[1]} features, the layer before gives "
                              f"{sizes[-1]}")
        sizes = sizes or [w.shape[1]]
        sizes.append(w.shape[0])
        out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = w, b
    if len(sizes) < 3:
        raise FormatError(f"{where}: a SIREN has at least one hidden layer")
    return out, sizes


def _discover(folder: Path) -> tuple[str, list[dict]]:
    """The set's convention and its INRs (``path``, ``label``, ``image``, ``part``, ``aug``)."""
    found = []
    for path in sorted(folder.rglob("*.pth")):
        rel = path.relative_to(folder)
        nfn_dir, nfn_file = _NFN_FOLDER.match(path.parent.name), _NFN_FILE.match(path.name)
        dws_dir = _DWS_FOLDER.match(path.parent.parent.name) if len(rel.parts) >= 3 else None
        if nfn_dir and nfn_file:
            found.append({"convention": "nfn", "path": path, "label": int(nfn_dir["label"]),
                          "image": int(nfn_file["index"]), "aug": int(nfn_dir["aug"]) + 1 if nfn_dir["aug"] else 0,
                          "prefix": nfn_dir["prefix"]})
        elif dws_dir:
            found.append({"convention": "dwsnets", "path": path, "label": int(dws_dir["label"]),
                          "image": int(dws_dir["image"]), "aug": 0,
                          "part": "train" if "train" in rel.as_posix() else "test"})
    kinds = {f["convention"] for f in found}
    if not found:
        raise FormatError(f"{folder}: no SIREN files in the DWSNets layout "
                          f"(mnist_png_<training|testing>_<label>_<image>/checkpoints/*.pth) or NFN's "
                          f"(<prefix>_<label>s/net<index>.pth)")
    if len(kinds) > 1:
        raise FormatError(f"{folder}: holds files of both the DWSNets and the NFN layout; import one set at a time")
    return kinds.pop(), found


def _dws_split_file(folder: Path, split_file: Path, found: list[dict]) -> dict[str, list[tuple[Path, int]]]:
    """DWSNets' ``mnist_splits.json`` (``{part: {"path": [...], "label": [...]}}``), paths matched
    to files under ``folder`` by their longest tail that exists there."""
    try:
        spec = json.loads(Path(split_file).read_text())
        parts = {p: list(zip(spec[p]["path"], spec[p]["label"])) for p in ("train", "val", "test")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FormatError(f"{split_file}: not a DWSNets split file ({{train|val|test: {{path, label}}}}): "
                          f"{err}") from None
    out: dict[str, list[tuple[Path, int]]] = {}
    for part, items in parts.items():
        resolved = []
        for listed, label in items:
            pieces = Path(str(listed)).parts
            path = next((p for k in range(len(pieces)) if (p := folder / Path(*pieces[k:])).is_file()), None)
            if path is None:
                raise FormatError(f"{split_file}: {listed} ({part}) is not a file under {folder}")
            confined(folder, str(path.relative_to(folder)))
            try:
                resolved.append((path, int(label)))
            except (TypeError, ValueError):
                raise FormatError(f"{split_file}: label {label!r} of {listed} is not an integer") from None
        out[part] = resolved
    return out


def import_siren_inr(folder: str | Path, out: str | Path | None = None, split_file: str | Path | None = None,
                     replace: bool = False, split_points: tuple[int, int] = NFN_SPLIT_POINTS,
                     val_size: int = DWS_VAL_SIZE, progress: bool = True) -> Zoo:
    """Import a DWSNets or NFN SIREN set as a gmn zoo at ``out`` (default ``folder``): one run
    per image (target ``label`` in the extras), the anchor's split in ``splits/<convention>.json``."""
    folder = Path(folder).resolve()
    out = Path(out) if out is not None else folder
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder")
    convention, found = _discover(folder)
    if split_file is not None:
        if convention != "dwsnets":
            raise FormatError(f"{split_file}: a split file is DWSNets' (NFN's split is by index); {folder} holds "
                              f"NFN's layout")
        listed = _dws_split_file(folder, Path(split_file), found)
        by_path = {f["path"]: f for f in found}
        found = []  # the split file's INRs only, with its labels and parts
        for part, items in listed.items():
            for path, label in items:
                item = dict(by_path.get(path, {"path": path, "image": None, "aug": 0}))
                item["label"], item["part"] = label, part
                found.append(item)
    runs: dict[str, dict] = {}
    for item in tqdm(found, desc=f"importing {folder.name}", unit="inr", disable=not progress):
        path = item["path"]
        where = str(path)
        try:
            state = load_weights(path)
        except ValueError as err:
            raise FormatError(str(err)) from None
        state, sizes = siren_state(state, where)
        if not finite(state):
            continue
        rel_source = path.relative_to(folder)
        run_id = f"image-{item['image']:06d}" if item["image"] is not None else rel_source.as_posix()
        rel = f"checkpoints/{run_id.replace('/', '_')}/inr-{item['aug']:02d}.safetensors"
        arch = {"family": "siren-inr", "sizes": sizes, "w0": W0, "offset": OFFSET[convention],
                "convention": convention}
        run = runs.setdefault(run_id, {"run_id": run_id, "family": "siren-inr", "arch": arch, "hparams": {},
                                       "dataset": f"siren-inr:{folder.name}", "status": "imported",
                                       "checkpoints": []})
        if run["arch"] != arch:
            raise FormatError(f"{where}: a SIREN of sizes {sizes}; image {item['image']}'s others are "
                              f"{run['arch']['sizes']}")
        if any(c["epoch"] == item["aug"] for c in run["checkpoints"]):
            raise FormatError(f"{where}: image {item['image']} appears twice (e.g. two prefixes); import one set")
        write_checkpoint(out, rel, state)
        extra = {"label": item["label"], "augmentation": item["aug"], "source": rel_source.as_posix()}
        if item["image"] is not None:
            extra["image"] = item["image"]
        run["checkpoints"].append({"epoch": item["aug"], "path": rel, "extra": extra, "part": item.get("part")})
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for run in runs.values():
        run["checkpoints"].sort(key=lambda c: c["epoch"])
    if convention == "nfn":
        val_point, test_point = split_points
        for run in sorted(runs.values(), key=lambda r: r["checkpoints"][0]["extra"]["image"]):
            for c in run["checkpoints"]:
                image = c["extra"]["image"]
                part = "train" if image < val_point else "val" if image < test_point else "test"
                if part == "train" or c["epoch"] == 0:  # augmented copies are training data only
                    parts[part].append(c["path"])
        definition = f"NFN SirenDataset: index < {val_point} train, < {test_point} val, else test; augmentations train"
    else:
        for run in runs.values():
            for c in run["checkpoints"]:
                parts[c["part"]].append(c["path"])
        if split_file is None:
            from sklearn.model_selection import train_test_split

            train = parts["train"]
            if len(train) > val_size:
                keep, held = train_test_split(range(len(train)), test_size=val_size, random_state=0)
                parts["train"], parts["val"] = [train[i] for i in keep], [train[i] for i in held]
            definition = (f"DWSNets generate_data_splits.py: 'train' in the path, else test; {val_size} validation "
                          f"INRs by train_test_split(random_state=0) (theirs is unseeded)")
        else:
            definition = f"DWSNets split file {Path(split_file).name}"
    for run in runs.values():
        for c in run["checkpoints"]:
            c.pop("part", None)
    zoo = catalogue_runs(out, list(runs.values()), replace, {"imported": "siren-inr"})
    write_split(out, convention, parts, definition)
    return zoo
