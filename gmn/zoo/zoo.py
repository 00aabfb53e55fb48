"""A zoo on disk: checkpoint files plus the catalogue; generated or imported from a folder."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import nn

from ..architectures import BUILTIN
from ..checkpoints import hf_model, is_hf_folder, load_graph, load_state, load_weights, module_from, parse_arch
from . import datasets
from .catalogue import FILENAME, METRICS, Catalogue
from .families import build


def confined(root: Path, relative: str) -> Path:
    """``root / relative``, refused when it leads outside ``root`` (``..``, absolute paths, links)."""
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} leads outside the zoo folder {root}")
    return path


class Zoo:
    """The zoo in folder ``root``: ``members`` are its checkpoints with their runs' records.

    A catalogue is data: an architecture it names as a Python ``module:attr`` is imported only
    when that path is in ``allow_modules`` (the caller's explicit choice, never the file's)."""

    def __init__(self, root: str | Path, allow_modules: tuple[str, ...] = ()):
        self.root = Path(root)
        if not (self.root / FILENAME).is_file():
            raise FileNotFoundError(f"{self.root} holds no zoo catalogue ({FILENAME}); build or import one first")
        self.catalogue = Catalogue(self.root, readonly=True)  # a zoo is read; a read-only one too
        self.allow_modules = frozenset(allow_modules)

    def members(self, include_diverged: bool = False) -> list[dict]:
        """Checkpoints (run_id, epoch, path, metrics, extra, family, arch, hparams, status, dataset)."""
        rows = self.catalogue.checkpoints()
        return rows if include_diverged else [r for r in rows if r["status"] != "diverged"]

    def __len__(self) -> int:
        return len(self.members())

    def path(self, member: dict) -> Path:
        """The member's checkpoint file, confined to the zoo folder (a catalogue can be edited)."""
        return confined(self.root, member["path"])

    def weights(self, member: dict) -> dict[str, torch.Tensor]:
        return load_weights(self.path(member))

    def model(self, member: dict) -> tuple[nn.Module, torch.Tensor]:
        """A fresh module of the member's architecture (weights not loaded) and an example input."""
        where = f"run {member['run_id']} of {self.root}"
        if member["arch"].get("family") == "huggingface":  # the folder's config.json is the architecture
            model, example = hf_model(self.path(member))
            return model, example[0] if example else None
        try:
            return architecture(member["arch"], member.get("dataset"), self.allow_modules, where)
        except (KeyError, TypeError) as err:  # an edited catalogue's spec lacks or mistypes a field
            raise ValueError(f"{where}: the architecture {member['arch']!r} is malformed "
                             f"({type(err).__name__}: {err})") from None


def architecture(arch: dict, dataset: str | None, allow_modules=frozenset(), where: str = "the zoo"
                 ) -> tuple[nn.Module, torch.Tensor]:
    """A fresh module of the catalogue architecture ``arch`` and an example input; a Python
    ``module:attr`` is imported only when it is in ``allow_modules``."""
    family = arch.get("family") if isinstance(arch, dict) else None
    if family == "builtin" and arch.get("name") in BUILTIN:
        factory, example = BUILTIN[arch["name"]]
        return factory(**arch.get("kwargs", {})), example()
    if family == "module":
        name = arch.get("name")
        if name not in allow_modules:
            raise ValueError(f"{where} names the Python architecture {name!r}; a zoo never imports code its catalogue "
                             f"names: allow it explicitly (allow_modules=({name!r},), or --allow-module {name})")
        model, _ = module_from(name)
        return model, torch.randn(2, *arch["input_shape"])
    if family in ("small-cnn-zoo", "siren-inr", "hsg-net"):  # gmn.zoo.formats: the published zoos
        from .formats import published_model

        return published_model(arch, dataset)
    if family == "siren":
        from .inr import Siren, coordinates

        return Siren(arch["hidden"], arch["depth"]), coordinates()
    if family == "onnx":
        raise ValueError("ONNX members carry their own architecture: convert the file itself")
    if family == "huggingface":
        raise ValueError("Hugging Face members carry their own architecture (config.json): load the folder itself")
    if family is None or family == "builtin":
        raise ValueError(f"{where} has an unknown architecture {arch!r}")
    data = datasets.load(dataset)
    return build(arch, data.input_shape, data.classes), data.x_test[:2]


def _number(text: str | None, column: str, where: str) -> float | None:
    """A target cell: a finite number, or empty (missing). NaN, inf and text are refused."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: target {column!r} is {text!r}, not a number (every column but path, run, epoch, "
                         f"family and arch is a numeric target; leave a cell empty when missing)") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: target {column!r} is {text!r}; targets must be finite numbers (leave the cell "
                         f"empty when it is missing)")
    return value


def _check_onnx(path: Path, where: str) -> None:
    """Parse and check an ONNX file (size, external data confined, graph), as at conversion."""
    try:
        import onnx

        from converters.onnx_frontend import load_onnx
    except ImportError:
        raise ValueError(f"{where}: {path.name} is ONNX: pip install -e \".[onnx]\"") from None
    try:
        onnx.checker.check_model(load_onnx(path))
    except ValueError as err:  # ConversionError: names the file and the problem
        raise ValueError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError, DecodeError, ...
        text = " ".join(str(err).split())
        raise ValueError(f"{where}: {path} is not a valid ONNX model ({type(err).__name__}: {text[:300]})") from None


def _fits(path: Path, spec: dict, allow: tuple[str, ...], models: dict, where: str) -> None:
    """Load checkpoint ``path`` into a module of ``spec`` (one built per spec): names, shapes and
    dtype kinds checked by ``checkpoints.load_state``, the one place that does, in one line."""
    key = repr(spec)
    if key not in models:
        models[key], _ = architecture(spec, None, frozenset(allow), f"architecture {spec}")
    try:
        load_state(models[key], path)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def read_targets_csv(targets: str | Path) -> list[dict]:
    """The rows of an import's CSV (a ``path`` column and targets), or one line naming the file."""
    try:
        with open(targets, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{targets}: cannot read the CSV ({err})") from err
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{targets} needs a header with a 'path' column and at least one row")
    return rows


def import_folder(folder: str | Path, targets: str | Path, arch: str | None = None,
                  input_shape: tuple[int, ...] | None = None, replace: bool = False) -> Zoo:
    """Catalogue a folder of PyTorch or ONNX checkpoints or model folders with a CSV of targets as a zoo.

    The CSV has a ``path`` column (relative to ``folder``), optionally ``run`` (checkpoints
    of one training run share it; splits never separate them), ``epoch``, ``family`` and
    ``arch`` (a built-in name), and numeric target columns (``test_acc``, ``gap``, ... or any
    other name; finite numbers or empty). ``arch=`` gives one architecture for all rows: a
    built-in name, or a Python ``module:attr`` (with ``input_shape``) — only ever from the
    caller, never from the CSV, and loading such a zoo later needs ``Zoo(..., allow_modules=...)``.
    A ``path`` may also be a Hugging Face model folder (config.json + safetensors): like an ONNX
    file it carries its own architecture. Every member is opened before anything is written:
    PyTorch checkpoints are checked against their architecture (names and shapes), ONNX files
    parsed and checked, model folders built offline; an ONNX file or folder for which an
    architecture is named must have that architecture's parameter shapes. Runs already in the
    zoo are never replaced unless ``replace``. Nothing is written when a row is refused, and
    all runs are catalogued in one transaction (a killed import leaves all or none).
    """
    folder = Path(folder).resolve()
    rows = read_targets_csv(targets)
    runs: dict[str, dict] = {}
    seen: dict[tuple[str, int], int] = {}
    models: dict[str, nn.Module] = {}
    allow = (arch,) if arch and ":" in arch else ()
    for i, row in enumerate(rows, start=2):
        where = f"row {i} of {targets}"
        rel = row.get("path") or ""
        try:
            path = confined(folder, rel)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not (path.is_file() or is_hf_folder(path)):
            raise FileNotFoundError(f"{where}: no file or Hugging Face model folder {path}")
        named = _arch_spec(row.get("arch") or None, arch, input_shape, path, where)
        spec = _own_arch(path)
        if spec is not None:  # an ONNX file or model folder: checked against the named architecture too
            _check_own(path, spec, named, allow, models, where)
        elif named is None:
            raise ValueError(f"{where}: {path.name} needs an architecture (an 'arch' column or arch=; built-in: "
                             f"{', '.join(BUILTIN)})")
        else:  # refuse an unreadable checkpoint, or one of another architecture, now, not at training time
            spec = named
            _fits(path, spec, allow, models, where)
        run_id = row.get("run") or rel
        try:
            epoch = int(row.get("epoch") or len(runs.get(run_id, {}).get("checkpoints", [])))
        except ValueError:
            raise ValueError(f"{where}: epoch {row.get('epoch')!r} is not an integer") from None
        if (run_id, epoch) in seen:
            raise ValueError(f"{where}: run {run_id!r} epoch {epoch} already given in row {seen[run_id, epoch]}")
        seen[run_id, epoch] = i
        family = row.get("family") or spec.get("name") or spec["family"]
        run = runs.setdefault(run_id, {"run_id": run_id, "family": family, "arch": spec, "hparams": {},
                                       "status": "imported", "checkpoints": []})
        if run["arch"] != spec:
            raise ValueError(f"{where}: run {run_id!r} mixes architectures {run['arch']} and {spec}")
        if None in row:
            raise ValueError(f"{where}: more cells than the header has columns")
        numbers = {k: _number(v, k, where) for k, v in row.items()
                   if k not in ("path", "run", "epoch", "family", "arch")}
        run["checkpoints"].append({"epoch": epoch, "path": str(path.relative_to(folder)),
                                   **{m: numbers.get(m) for m in METRICS},
                                   "extra": {k: v for k, v in numbers.items() if k not in METRICS}})
    catalogue = Catalogue(folder)
    try:
        clash = sorted(set(runs) & catalogue.done())
        if clash and not replace:
            raise ValueError(f"{folder} already holds runs {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}; "
                             f"an import never replaces runs (pass replace=True / --replace to do so)")
        catalogue.add_runs(list(runs.values()))  # one transaction: all runs or none
    finally:
        catalogue.close()
    return Zoo(folder, allow_modules=allow)


def _own_arch(path: Path) -> dict | None:
    """The architecture of a member that carries its own (ONNX file, model folder), else None."""
    if path.suffix == ".onnx":
        return {"family": "onnx"}
    if is_hf_folder(path):
        return {"family": "huggingface"}
    return None


def _check_own(path: Path, spec: dict, named: dict | None, allow: tuple[str, ...], models: dict, where: str) -> None:
    """An ONNX file or model folder is read now (parsed, checked, built offline); with an
    architecture named for it (``--arch`` or an arch column), its parameters' shapes must be
    that architecture's, as a checkpoint's must (else the mismatch surfaced only at training)."""
    if spec["family"] == "onnx":
        _check_onnx(path, where)
        if named is None:
            return
    try:
        own = load_graph(path)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if named is None:
        return
    key = repr(named)
    if key not in models:
        models[key], _ = architecture(named, None, frozenset(allow), f"architecture {named}")
    model = models[key]
    want = sorted(tuple(t.shape) for t in model.parameters())
    have = sorted(tuple(shape) for _, shape, _ in own.param_index.params)
    if want != have:
        extra = sorted(set(have) - set(want)) or sorted(set(want) - set(have))
        raise ValueError(f"{where}: {path.name} does not fit --arch {named.get('name', named)}: it has {len(have)} "
                         f"parameter tensors, the architecture {len(want)}"
                         + (f" (first shape only one has: {extra[0]})" if extra else " of other shapes"))


def _arch_spec(row_arch: str | None, arch: str | None, input_shape, path: Path, where: str) -> dict | None:
    """The architecture named for one CSV row, as data (None when none is): a built-in name,
    its JSON, or the caller's module path."""
    if row_arch is not None:
        if row_arch in BUILTIN:
            return {"family": "builtin", "name": row_arch}
        raise ValueError(f"{where}: architecture {row_arch!r} is not built in ({', '.join(BUILTIN)}); a CSV may only "
                         f"name built-in architectures (a Python module:attr is given by the caller, arch=/--arch)")
    if arch in BUILTIN:
        return {"family": "builtin", "name": arch}
    if arch and arch.lstrip().startswith("{"):
        spec = parse_arch(arch)
        if spec["family"] != "builtin":
            raise ValueError("--arch JSON for an import names a built-in with arguments ({\"name\": ..., ...})")
        return spec
    if arch and ":" in arch:
        if input_shape is None:
            raise ValueError("a module:attr architecture needs input_shape")
        return {"family": "module", "name": arch, "input_shape": list(input_shape)}
    if arch:
        parse_arch(arch)  # an unknown name: refused in parse_arch's words
    return None
