"""An adapter graph back to a PEFT folder: ``adapter_config.json`` verbatim, tensors from the values.

Parameter names are the keys PEFT saved (an adapter-name sub-folder's keys behind ``sub/``), and
each parameter's dtype is restored, so unchanged values write tensors bit-identical to the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor
from torch_geometric.data import Batch

from converters.graph import ParameterGraph
from converters.io import atomic_write
from converters.writer import to_state_dict

from .folder import CONFIG, WEIGHTS, Adapter, AdapterError, _subdir_ok
from .graph import META


def adapters_of(graph: ParameterGraph) -> list[dict]:
    """The adapters a graph was made from (name, sub-folder, config text), checked: a saved graph
    is a file like any other."""
    text = getattr(graph, META, None)
    if not isinstance(text, str):
        raise AdapterError("this graph was not made from a PEFT adapter (no peft_adapters record)")
    try:
        entries = json.loads(text)["adapters"]
        ok = isinstance(entries, list) and entries and all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("config"), str)
            and isinstance(e.get("subdir"), str) and (e["subdir"] == "" or _subdir_ok(e["subdir"])) for e in entries)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise AdapterError("the graph's peft_adapters record is malformed")
    return entries


def adapters_in(graph: ParameterGraph, values: Tensor | None = None) -> list[Adapter]:
    """The graph's adapters (configs and tensors, with parameter values ``values``), as read."""
    entries = adapters_of(graph)
    out = [Adapter(e["name"], e["subdir"], json.loads(e["config"]), e["config"]) for e in entries]
    by_subdir = {a.subdir: a for a in out}
    for name, tensor in to_state_dict(graph, values).items():
        sub, _, key = name.rpartition("/")
        if sub not in by_subdir:
            raise AdapterError(f"parameter {name!r:.120} belongs to no adapter of the graph")
        by_subdir[sub].tensors[key] = tensor
    return out


def to_peft(graph: ParameterGraph, values: Tensor | None, out_dir: str | os.PathLike, *,
            overwrite: bool = False) -> list[Path]:
    """Write ``graph``'s adapters with parameter values ``values`` (None: the graph's own) as a PEFT
    folder ``out_dir`` (its first adapter there, the others in their sub-folders), which
    ``peft.PeftModel.from_pretrained(base, out_dir)`` loads. Returns the folders written."""
    from safetensors.torch import save_file

    if isinstance(graph, Batch):
        raise AdapterError("to_peft writes one adapter graph, not a batch")
    entries = adapters_of(graph)
    parts = {a.subdir: {k: v.detach().cpu().contiguous() for k, v in a.tensors.items()}
             for a in adapters_in(graph, values)}
    out = Path(out_dir)
    folders = [out / e["subdir"] if e["subdir"] else out for e in entries]
    if not overwrite:
        taken = [f / n for f in folders for n in (CONFIG, WEIGHTS) if (f / n).exists()]
        if taken:
            raise AdapterError(f"{taken[0]} exists (pass overwrite=True to replace it)")
    for entry, folder in zip(entries, folders):
        folder.mkdir(parents=True, exist_ok=True)
        tensors = parts[entry["subdir"]]
        atomic_write(folder / WEIGHTS, lambda tmp, t=tensors: save_file(t, tmp, metadata={"format": "pt"}))
        atomic_write(folder / CONFIG, lambda tmp, c=entry["config"]: Path(tmp).write_text(c, encoding="utf-8"))
    return folders
