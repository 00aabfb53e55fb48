"""adapters: PEFT LoRA adapters <-> parameter graphs. Never imports ``gmn``.

``from_peft`` reads an adapter folder (or a live ``peft.PeftModel``) into an ordinary
:class:`converters.ParameterGraph`; ``to_peft`` writes one back. See ``adapters/graph.py`` for the
graph's layout and ``gmn.lora`` for the GL(r) canonical form.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from converters.graph import ParameterGraph
from converters.limits import MAX_JSON_BYTES

from .folder import (
    Adapter,
    AdapterError,
    LoraModule,
    from_peft_model,
    is_adapter_folder,
    lora_pairs,
    modules_of,
    read_folder,
)
from .graph import META, build
from .writer import adapters_in, adapters_of, to_peft


def from_peft(source, base: nn.Module | str | os.PathLike | None = None, *,
              example_inputs: dict | tuple | None = None, base_weights: bool = False) -> ParameterGraph:
    """The parameter graph of a PEFT LoRA adapter.

    ``source``: an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, other
    adapters in PEFT's adapter-name sub-folders) or a ``peft.PeftModel``. ``base``: the base model
    (a module, built on the meta device or not: its weights are never read), a Hugging Face model
    folder (built on the meta device), or None (each adapted module's neurons its own; a PeftModel
    source brings its base). ``example_inputs``: an input for the base's meta-device forward that
    finds which layers share neurons (default: transformers' dummy inputs). ``base_weights``: each
    adapted layer's base weights as structural edges between its input and output neurons (values,
    not parameters: every adapter of the base has the same ones); needs a base with its weights,
    refused above :data:`adapters.graph.BASE_WEIGHT_EDGES`.
    """
    if hasattr(source, "peft_config") and isinstance(source, nn.Module):
        adapters, where = from_peft_model(source), type(source).__name__
        base = source.get_base_model() if base is None else base
    else:
        adapters, where = read_folder(source), str(source)
    if isinstance(base, (str, os.PathLike)):
        base = meta_base(Path(base))
    return build(adapters, base, where, example_inputs, base_weights)


def meta_base(folder: Path) -> nn.Module:
    """A Hugging Face model folder's model built on the meta device from its config.json alone
    (the class its ``architectures`` names; no remote code, no weights read)."""
    import json

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise AdapterError(f"{folder}: no config.json (a base is a module or a Hugging Face model folder)")
    if config_path.stat().st_size > MAX_JSON_BYTES:
        raise AdapterError(f"{config_path}: beyond the {MAX_JSON_BYTES:,} bytes a config may have")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise AdapterError(f"{config_path}: not JSON ({err})") from None
    if not isinstance(raw, dict) or "auto_map" in raw:
        problem = "names custom code (auto_map)" if isinstance(raw, dict) else "not a JSON object"
        raise AdapterError(f"{config_path}: {problem}")
    names = raw.get("architectures")
    if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)):
        raise AdapterError(f"{config_path}: architectures must name one model class")
    import torch
    import transformers

    cls = getattr(transformers, names[0], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise AdapterError(f"{config_path}: {names[0]!r:.80} is not a transformers model class")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        with torch.device("meta"):
            return cls._from_config(config)
    except Exception as err:  # transformers raises many types; one line names the folder
        raise AdapterError(f"{folder}: could not build {names[0]} from config.json "
                           f"({type(err).__name__}: {str(err)[:200]})") from None


__all__ = ["META", "Adapter", "AdapterError", "LoraModule", "adapters_in", "adapters_of", "build", "from_peft",
           "is_adapter_folder", "lora_pairs", "meta_base", "modules_of", "to_peft"]
