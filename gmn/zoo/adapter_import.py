"""``gmn zoo import`` of PEFT adapter folders: a folder of adapters of one base and a CSV of their
targets become a LoRA zoo that :class:`gmn.zoo.lora.AdapterDataset` reads as it reads a built one.

Every adapter is read against the base (``adapters.from_peft``: safetensors only, configs and headers
checked before any tensor is read, nothing in a folder runs) and every target parsed before anything
is written; then ``zoo.json`` (the base, the targets, the catalogue's digest) and ``catalogue.csv``
are each written atomically, the catalogue last. A reader refuses a ``zoo.json`` whose digest is not
the catalogue's, so a killed import is all or nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from torch import nn

from converters.files import atomic_write

from ..architectures import BUILTIN
from ..checkpoints import build_arch, is_hf_folder, parse_arch
from .lora import CATALOGUE, SETTINGS
from .zoo import _number, confined, read_targets_csv


def base_record(text: str, root: Path | None = None) -> dict:
    """``--base`` as the record a zoo keeps: a Hugging Face model folder or a built-in architecture
    (a name or its JSON). A folder inside the zoo's ``root`` is kept relative to it (the zoo moves
    with its base), any other by its absolute path. Python ``module:attr`` is refused: a zoo never
    names code to import."""
    if is_hf_folder(Path(text)):
        path, root = Path(text).resolve(), None if root is None else Path(root).resolve()
        inside = root is not None and path.is_relative_to(root)
        return {"family": "huggingface", "path": str(path.relative_to(root) if inside else path)}
    if Path(text).exists():
        raise ValueError(f"--base {text}: neither a Hugging Face model folder (config.json + safetensors) nor a "
                         f"built-in name")
    try:
        spec = parse_arch(text)
    except ValueError as err:  # parse_arch speaks of --arch; this is --base, and it may be a missing folder
        why = str(err).split(": ", 1)[0].replace("--arch", "the value")
        raise ValueError(f"--base {text}: no such Hugging Face model folder, nor a built-in name "
                         f"({', '.join(BUILTIN)}) or its JSON ({why})") from None
    if spec["family"] != "builtin":
        raise ValueError(f"--base {text}: a zoo's base is a built-in name (or its JSON) or a Hugging Face model "
                         f"folder; a zoo never imports code its files name (module:attr) nor builds zoo families")
    return spec


def base_from_record(record, where: Path) -> tuple[nn.Module, tuple | None]:
    """The base a zoo's record names, with an example input (None: transformers' dummy inputs): a
    Hugging Face folder built on the meta device (no weights read), a built-in freshly built."""
    from adapters import meta_base

    if isinstance(record, dict) and record.get("family") == "huggingface" and isinstance(record.get("path"), str):
        path = Path(record["path"])  # relative: inside the zoo folder, never through a link out of it
        return meta_base(path if path.is_absolute() else confined(where.parent, record["path"])), None
    if isinstance(record, dict) and record.get("family") == "builtin" and isinstance(record.get("kwargs"), dict):
        spec = parse_arch(json.dumps({"name": record.get("name"), **record["kwargs"]}))
        return build_arch(spec)
    raise ValueError(f"{where}: the base record {record!r:.120} is malformed")


def import_adapters(folder: str | Path, targets: str | Path, base: str, replace: bool = False) -> Path:
    """Catalogue the PEFT adapter folders of ``folder`` with the CSV ``targets`` (a ``path`` column:
    each adapter folder relative to ``folder``; every other column a finite number) as a LoRA zoo of
    ``base`` (a built-in name or its JSON, or a Hugging Face model folder). Every row is checked (the
    adapter read against the base, its weights finite, its targets numbers) before anything is
    written; an existing zoo is replaced only with ``replace``. Returns the catalogue's path."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (the folder holding the adapter folders)")
    outputs = [folder / SETTINGS, folder / CATALOGUE]
    if not replace and any(p.exists() for p in outputs):
        found = next(p for p in outputs if p.exists())
        raise ValueError(f"{found} exists; an import never replaces a zoo's catalogue (pass --replace to do so)")
    rows, names = _read_csv(targets)
    record = base_record(base, folder)
    model, example = base_from_record(record, folder / SETTINGS)
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        _check_row(folder, row, names, model, example, f"row {i} of {targets}", seen, i)
    text = _catalogue_text(rows, names)
    settings = {"preset": "lora", "imported": True, "base": record, "descriptors": list(names), "adapters": len(rows),
                "catalogue_sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write(outputs[0], lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2), encoding="utf-8"))
    atomic_write(outputs[1], lambda tmp: Path(tmp).write_bytes(text.encode()))  # last: the import's commit
    return outputs[1]


def _read_csv(targets: str | Path) -> tuple[list[dict], tuple[str, ...]]:
    """The CSV's rows and target columns (every column but ``path``)."""
    rows = read_targets_csv(targets)
    names = tuple(k for k in rows[0] if k != "path")
    if not names or any(not n or not n.strip() for n in names):
        raise ValueError(f"{targets}: besides 'path', every column is a named numeric target (there must be one)")
    return rows, names


def _check_row(folder: Path, row: dict, names: tuple[str, ...], model: nn.Module, example, where: str,
               seen: dict[str, int], line: int) -> None:
    """One adapter: inside the folder, listed once, read against the base, finite; its targets numbers."""
    from adapters import from_peft, is_adapter_folder

    if None in row:
        raise ValueError(f"{where}: more cells than the header has columns")
    rel = row.get("path") or ""
    try:
        path = confined(folder, rel)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    key = str(path.relative_to(folder))
    if key in seen:
        raise ValueError(f"{where}: adapter folder {rel!r} is already row {seen[key]}")
    seen[key] = line
    if not is_adapter_folder(path):
        raise ValueError(f"{where}: {rel!r} is no PEFT adapter folder (adapter_config.json + "
                         f"adapter_model.safetensors)")
    for name in names:
        if _number(row[name], name, where) is None:
            raise ValueError(f"{where}: target {name!r} is empty (every adapter needs every target)")
    try:
        g = from_peft(path, base=model, example_inputs=example)
    except ValueError as err:  # AdapterError and shape mismatches name the file and the problem
        raise ValueError(f"{where}: adapter folder {rel}: {err}") from None
    if int(g.nonfinite.sum()):  # counted when the graph was built
        raise ValueError(f"{where}: adapter folder {rel} has non-finite weights (NaN or inf)")
    row["path"] = key


def _catalogue_text(rows: list[dict], names: tuple[str, ...]) -> str:
    """``catalogue.csv``: path, then every target as the float it parsed to (``repr``: exact)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", *names])
    for row in rows:
        writer.writerow([row["path"], *(repr(float(row[n])) for n in names)])
    return out.getvalue()


__all__ = ["base_from_record", "base_record", "import_adapters"]
