"""What the command line accepts as a model: ``--arch`` (a built-in name, JSON of a built-in
with arguments or of a zoo family, or ``module:attr`` from the current folder), checkpoints
checked against it in one line, and Hugging Face model folders (``config.json`` +
safetensors, read offline)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from .architectures import BUILTIN
from .zoo.zoo import load_weights

ARCH_HELP = (f"architecture of a checkpoint: a built-in name ({', '.join(BUILTIN)}), a built-in with arguments as "
             "JSON ('{\"name\": \"resnet18\", \"width\": 16, \"classes\": 10}'), a zoo family as JSON "
             "('{\"family\": \"cnn\", \"depth\": 3, ...}') or module:attr (imported from the current folder)")


def parse_arch(text: str) -> dict:
    """``--arch`` as data: ``{"family": "builtin", "name", "kwargs"}``, ``{"family": "module",
    "name"}`` or a zoo family spec. Refused in one line when it is none of them."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--arch is not valid JSON: {err}") from None
        if not isinstance(spec, dict):
            raise ValueError("--arch JSON must be an object")
        if "name" in spec and "family" not in spec:
            name = spec.pop("name")
            return _builtin_spec(name, spec)
        from .zoo.families import FAMILIES

        if spec.get("family") not in FAMILIES:
            raise ValueError(f"--arch JSON needs \"name\" (built-in: {', '.join(BUILTIN)}) or \"family\" "
                             f"({', '.join(FAMILIES)}); got {sorted(spec)}")
        return spec
    if text in BUILTIN:
        return _builtin_spec(text, {})
    if ":" in text:
        return {"family": "module", "name": text}
    raise ValueError(f"unknown --arch {text!r}: a built-in name ({', '.join(BUILTIN)}), JSON or module:attr")


def _builtin_spec(name: str, kwargs: dict) -> dict:
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in architecture {name!r}; built-in: {', '.join(BUILTIN)}")
    return {"family": "builtin", "name": name, "kwargs": kwargs}


def import_attr(name: str):
    """``module:attr``, looked up from the current folder first (as ``python -m`` does)."""
    module, _, attr = name.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {name!r} from the current folder or the installed packages: {err}") from None


def build_arch(spec: dict, input_shape: tuple[int, ...] | None = None,
               classes: int = 10) -> tuple[nn.Module, tuple | None]:
    """A fresh module of ``spec`` and its default example inputs (None where there is none:
    then ``--input-shape`` is needed). ``input_shape`` (no batch) and ``classes`` size zoo families."""
    family = spec["family"]
    if family == "builtin":
        factory, example = BUILTIN[spec["name"]]
        try:
            return factory(**spec["kwargs"]), (example(),)
        except TypeError as err:
            raise ValueError(f"built-in {spec['name']!r} does not take these arguments: {err}") from None
    if family == "module":
        obj = import_attr(spec["name"])
        model = obj if isinstance(obj, nn.Module) else obj()
        if isinstance(model, tuple):  # a factory may return (model, example input)
            model, example = model
            return model, example if isinstance(example, tuple) else (example,)
        return model, None
    from .zoo.families import build

    if input_shape is None:
        raise ValueError("a zoo-family --arch needs the data's input shape (--data or --input-shape)")
    try:
        model = build(spec, input_shape, classes)
    except KeyError as err:
        raise ValueError(f"--arch JSON of family {family!r} lacks {err}") from None
    return model, (torch.randn(2, *input_shape),)


def load_state(model: nn.Module, path: Path) -> None:
    """Load checkpoint ``path`` into ``model``; a checkpoint of another architecture or width is
    one line saying how many tensors differ and the first of each kind."""
    state = load_weights(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (first: {k} is {tuple(state[k].shape)} in the file, "
                         f"{tuple(expected[k].shape)} in --arch)")
        if missing:
            parts.append(f"{len(missing)} tensors missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise ValueError(f"{path} does not fit --arch: " + "; ".join(parts)
                         + " (a built-in of another size takes JSON arguments, e.g. '{\"name\": \"resnet18\", "
                           "\"width\": 16}')")
    model.load_state_dict(state)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def hf_model(folder: Path) -> tuple[nn.Module, tuple | None]:
    """A Hugging Face model folder (``save_pretrained``: config.json and safetensors weights),
    built offline with its weights, and an example input for its main input (None when gmn
    cannot guess one: give ``--input-shape``)."""
    if not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder}: no safetensors weights (gmn reads no pickled .bin checkpoints; "
                         "save with save_pretrained(..., safe_serialization=True))")
    try:
        import transformers
    except ImportError:
        raise ValueError("a Hugging Face model folder needs transformers (pip install transformers)") from None
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    cls = cls or transformers.AutoModel
    kwargs = {"attn_implementation": "eager"}
    if hasattr(config, "experts_implementation"):
        kwargs["experts_implementation"] = "batched_mm"  # fused experts as plain batched products
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs).eval()
    model.config.use_cache = False
    return model, _hf_example(model)


def _hf_example(model: nn.Module) -> tuple | None:
    config, name = model.config, getattr(model, "main_input_name", "input_ids")
    if name == "input_ids" and getattr(config, "vocab_size", None):
        return (torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)),)
    if name == "pixel_values" and getattr(config, "image_size", None):
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return (torch.randn(1, getattr(config, "num_channels", 3), side, side),)
    return None


def check_output(path: str, suffixes: tuple[str, ...]) -> Path:
    """The output path, refused before any work when its kind or folder is wrong."""
    out = Path(path)
    if out.suffix not in suffixes:
        raise ValueError(f"{path}: the output must end in {' or '.join(suffixes)}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such folder for the output")
    return out
