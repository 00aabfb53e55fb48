"""Models from what a user names: an architecture spec (a built-in name, JSON of a built-in
with arguments or of a zoo family, or ``module:attr`` from the current folder), checkpoints
checked against it in one line, and Hugging Face model folders (``config.json`` +
safetensors, read offline). The command line, the zoo and the data sets all load through here."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import pickle
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .architectures import BUILTIN


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


def _is_example(value) -> bool:
    return isinstance(value, torch.Tensor) or (isinstance(value, tuple) and bool(value)
                                                and all(isinstance(v, torch.Tensor) for v in value))


def module_from(name: str) -> tuple[nn.Module, tuple | None]:
    """The module ``module:attr`` names and its example inputs (None when it gives none): an
    ``nn.Module``, or a function returning one or ``(module, example input)``. Anything else
    (a PEFT factory's ``(base, adapter)``, a config) is refused in one line saying so."""
    obj = import_attr(name)
    made = obj if isinstance(obj, nn.Module) or not callable(obj) else obj()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module) and _is_example(made[1]):
        return made[0], made[1] if isinstance(made[1], tuple) else (made[1],)
    if not isinstance(made, nn.Module):
        got = (f"a tuple of {', '.join(type(v).__name__ for v in made)}" if isinstance(made, tuple)
               else f"a {type(made).__name__}")
        raise ValueError(f"{name} gave {got}; a module:attr must be an nn.Module, or a function returning one or "
                         "(module, example input); for a PEFT model return get_peft_model(...)'s model itself, "
                         "not (base, adapter)")
    return made, None


def build_arch(spec: dict, input_shape: tuple[int, ...] | None = None,
               classes: int = 10) -> tuple[nn.Module, tuple | None]:
    """A fresh module of ``spec`` and its default example inputs (None where there is none:
    then ``--input-shape`` is needed). ``input_shape`` (no batch) and ``classes`` size zoo families."""
    from converters.limits import check_example, check_module

    family = spec["family"]
    if family == "builtin":
        factory, example = BUILTIN[spec["name"]]
        try:
            check_module(lambda: factory(**spec["kwargs"]), f"--arch {spec['name']} {spec['kwargs']}")
            return factory(**spec["kwargs"]), (example(),)
        except TypeError as err:
            raise ValueError(f"built-in {spec['name']!r} does not take these arguments: {err}") from None
    if family == "module":
        return module_from(spec["name"])
    from .zoo.families import build

    if input_shape is None:
        raise ValueError("a zoo-family --arch needs the data's input shape (--data or --input-shape)")
    check_example((2, *input_shape), f"an example input of shape {(2, *input_shape)}")
    try:
        model = build(spec, input_shape, classes)
    except KeyError as err:
        raise ValueError(f"--arch JSON of family {family!r} lacks {err}") from None
    return model, (torch.randn(2, *input_shape),)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or ``torch.load(weights_only=True)`` (never pickle).
    A file that is neither (a pickle with code, a corrupt file), a zip archive whose entries
    would inflate beyond reason or free memory (checked before ``torch.load`` reads them), or a
    checkpoint with complex tensors (no gmn model holds them; casting would drop the imaginary
    part) gets a ``ValueError`` naming the file."""
    from converters.limits import check_archive

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))  # safetensors checks every offset against the file's size
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    else:
        check_archive(path, legacy=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
            # torch's message suggests weights_only=False: never pass that on
            raise ValueError(f"{path}: not a plain checkpoint of tensors (gmn never unpickles code): "
                             f"{type(err).__name__}") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path} holds no state_dict (a mapping of names to tensors)")
    complex_ = [k for k, v in state.items() if v.is_complex()]
    if complex_:
        raise ValueError(f"{path}: tensor {complex_[0]!r} is complex ({state[complex_[0]].dtype}); gmn models are "
                         "real and will not drop the imaginary part")
    return state


def load_state(model: nn.Module, path: Path) -> None:
    """Load checkpoint ``path`` into ``model``; a checkpoint of another architecture or width is
    one line saying how many tensors differ and the first of each kind."""
    state = load_weights(path)
    expected = model.state_dict()
    _check_kinds(state, expected, path)
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


def _kind(t: torch.Tensor) -> str:
    return "complex" if t.is_complex() else "floating-point" if t.is_floating_point() else \
        "boolean" if t.dtype == torch.bool else "integer"


def _check_kinds(state: dict, expected: dict, path: Path) -> None:
    """Values are never silently cast across kinds: an integer, boolean or complex tensor where
    the model holds floating point (a quantised or foreign checkpoint) is one line naming it.
    Casts within a kind (float16 to float32) are exact."""
    for key, want in expected.items():
        got = state.get(key)
        if isinstance(got, torch.Tensor) and _kind(got) != _kind(want):
            raise ValueError(f"{path}: tensor {key!r} is {got.dtype} ({_kind(got)}), the model's is {want.dtype} "
                             f"({_kind(want)}); gmn does not cast across kinds (a quantised checkpoint?)")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class ModelFolderError(ValueError):
    """A Hugging Face model folder gmn will not build: the message names the folder and why."""


#: Files of a model folder that transformers reads, each refused by size before it is parsed.
_HF_JSON = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _hf_config(folder: Path) -> dict:
    """config.json as data, checked before transformers sees it: bounded in size, an object,
    no custom code (``auto_map``), a ``model_type`` transformers itself implements."""
    from converters.limits import MAX_JSON_BYTES, check_file_size

    for name in _HF_JSON:
        if (folder / name).exists():
            if not (folder / name).is_file():
                raise ModelFolderError(f"{folder / name} is not a file")
            check_file_size(folder / name, MAX_JSON_BYTES, "JSON file")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelFolderError(f"{folder / 'config.json'} is not valid JSON ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{folder / 'config.json'} is not a JSON object")
    if "auto_map" in config:
        raise ModelFolderError(f"{folder / 'config.json'} names custom code (auto_map: {_short(config['auto_map'])}); "
                               "gmn never runs code from a model folder")
    return config


def hf_config(folder: Path) -> dict:
    """A model folder's config.json as data (checked as ``hf_model`` checks it), without the
    fields that name no architecture (versions, dtype): equal for folders of one architecture."""
    config = _hf_config(Path(folder))
    unnamed = ("transformers_version", "torch_dtype", "dtype", "_name_or_path")
    return {k: v for k, v in config.items() if k not in unnamed}


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hf_class(folder: Path, config: dict, transformers):
    """The model class config.json's ``architectures`` names: a transformers class of the
    config's own model type (never a fallback to ``AutoModel``)."""
    from transformers import CONFIG_MAPPING, PreTrainedModel

    where = folder / "config.json"
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ModelFolderError(f"{where}: model_type {_short(model_type)} is not one transformers "
                               f"{transformers.__version__} implements")
    names = config.get("architectures")
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise ModelFolderError(f"{where}: architectures must name one model class as a list of one string, "
                               f"got {_short(names)}")
    name = names[0]
    cls = getattr(transformers, name, None) if name.isidentifier() and not name.startswith("_") else None
    if not isinstance(cls, type) or not issubclass(cls, PreTrainedModel) or cls.__name__ != name:
        raise ModelFolderError(f"{where}: architectures names {name!r}, not a model class of transformers "
                               f"{transformers.__version__}")
    expected = CONFIG_MAPPING[model_type]
    if getattr(cls, "config_class", None) is not expected:
        theirs = getattr(getattr(cls, "config_class", None), "model_type", None)
        raise ModelFolderError(f"{where}: architectures names {name!r}, a model of type {theirs!r}, but "
                               f"model_type is {model_type!r}")
    return cls


def _hf_weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers will read (one file, or the shards its index lists,
    each inside the folder)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
            names = sorted({str(s) for s in shards})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ModelFolderError(f"{index} is not an index of shards ({type(err).__name__})") from None
        files = []
        for name in names:
            path = (folder / name).resolve()
            if not path.is_relative_to(folder.resolve()) or not path.is_file() or path.suffix != ".safetensors":
                raise ModelFolderError(f"{index} lists shard {name!r}, not a safetensors file in {folder}")
            files.append(path)
        return files
    if single.is_file():
        return [single]
    raise ModelFolderError(f"{folder}: no model.safetensors (gmn reads no pickled .bin checkpoints; "
                           "save with save_pretrained(..., safe_serialization=True))")


#: safetensors dtype names by kind (the rest are integers)
_ST_KINDS = {"F": "floating-point", "BF": "floating-point", "C": "complex", "BOOL": "boolean"}


def _st_kind(dtype: str) -> str:
    if dtype == "BOOL":
        return "boolean"
    return next((kind for prefix, kind in _ST_KINDS.items() if dtype.startswith(prefix)), "integer")


def _hf_file_tensors(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and dtype kinds of the tensors the files hold, by name (their headers only)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    part = f.get_slice(key)
                    out[key] = tuple(part.get_shape())
                    kinds[key] = _st_kind(part.get_dtype())
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ModelFolderError(f"{path}: not a readable safetensors file ({_short(str(err))})") from None
    return out, kinds


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def hf_model(folder: Path) -> tuple[nn.Module, tuple | None]:
    """A Hugging Face model folder (``save_pretrained``: config.json and safetensors weights),
    built offline with its weights, and an example input for its main input (None when gmn
    cannot guess one: give ``--input-shape``).

    The one place gmn opens model folders. Nothing in the folder runs, prompts or waits
    (``trust_remote_code=False``, configs with ``auto_map`` refused, stdin closed to it); the
    class is the one ``architectures`` names, for the config's own type; the parameter count
    is bounded against free memory on a model built on the meta device, before anything is
    allocated; and every parameter comes from the files (missing, unexpected or mismatched
    tensors are one line naming them). transformers' load report and progress bars are
    silenced: gmn's line is the only one."""
    try:
        import transformers
    except ImportError:
        raise ValueError("a Hugging Face model folder needs transformers (pip install transformers)") from None
    folder = Path(folder)
    raw = _hf_config(folder)
    cls = _hf_class(folder, raw, transformers)
    files = _hf_weight_files(folder)
    file_tensors, file_kinds = _hf_file_tensors(files)
    with _quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as err:
            raise ModelFolderError(f"{folder / 'config.json'}: transformers refuses it ({_short(str(err), 160)})") \
                from None
        kwargs = {"attn_implementation": "eager"}
        if hasattr(config, "experts_implementation"):
            kwargs["experts_implementation"] = "batched_mm"  # fused experts as plain batched products
        _check_size_and_tensors(folder, cls, config, file_tensors, file_kinds)
        model, info = _load_strict(folder, cls, config, kwargs)
    problems = []
    for kind, keys in (("missing from the files", info["missing"]), ("unexpected", info["unexpected"]),
                       ("of mismatched shape", info["mismatched"])):
        if keys:
            problems.append(f"{len(keys)} tensors {kind} ({_names(keys)})")
    if problems:
        raise ModelFolderError(f"{folder}: its weights do not fit {cls.__name__}: " + "; ".join(problems)
                               + "; gmn converts only models whose every parameter comes from the files")
    model.eval()
    model.config.use_cache = False
    return model, _hf_example(model)


def _check_size_and_tensors(folder: Path, cls, config, file_tensors: dict[str, tuple[int, ...]],
                            file_kinds: dict[str, str]) -> None:
    """Before anything is allocated: the model's parameter count (built on the meta device)
    against free memory, and the files' tensors against the model's where the names match
    directly (so a file missing most of a model is refused without building it)."""
    from converters.limits import check_parameters

    try:
        with torch.device("meta"):
            meta = cls(config)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is counted from its files
        meta = None
    state = meta.state_dict() if meta is not None else {}
    # transformers casts what it loads to the model's dtype: a tensor may only fill one of its own
    # kind (a quantised file, cast, would load as nonsense). A file tensor is matched to the model's
    # by name, with the base model's prefix added or removed; an integer, boolean or complex one
    # that matches none is refused unless it is a buffer transformers drops (old position_ids)
    prefix = f"{getattr(cls, 'base_model_prefix', '') or '-'}."
    for key, kind in file_kinds.items():
        target = next((k for k in (key, prefix + key, key.removeprefix(prefix)) if k in state), None)
        if target is not None and _kind(state[target]) == kind or target is None and (
                kind == "floating-point" or meta is not None and key.endswith(("position_ids", "inv_freq"))):
            continue
        raise ModelFolderError(f"{folder}: tensor {key!r} is {kind} in the files, "
                               f"{_kind(state[target]) if target else 'absent'} in {cls.__name__}; gmn does not "
                               "cast across kinds (a quantised checkpoint?)")
    if meta is None:
        count = sum(math.prod(s) for s in file_tensors.values())
        check_parameters(count, f"{folder}")
        return
    tied = set(getattr(meta, "all_tied_weights_keys", None) or {})
    count = sum(t.numel() for k, t in state.items() if k not in tied)
    check_parameters(count, f"{folder} ({cls.__name__})")
    wrong = [k for k, t in state.items() if k in file_tensors and tuple(t.shape) != file_tensors[k]]
    if wrong:
        k = wrong[0]
        raise ModelFolderError(f"{folder}: {len(wrong)} tensors of the files do not fit {cls.__name__}'s shapes "
                               f"(first: {k} is {file_tensors[k]} in the files, {tuple(state[k].shape)} in the model)")
    held = sum(math.prod(s) for s in file_tensors.values())
    if held < count:  # the files cannot cover the model, whatever names they use
        missing = [k for k in state if k not in tied and k not in file_tensors]
        named = f" (e.g. {_names(missing)})" if missing else ""
        raise ModelFolderError(f"{folder}: its safetensors hold {held:,} values, {cls.__name__} needs {count:,}: "
                               f"tensors are missing{named}; gmn converts only models whose every parameter comes "
                               "from the files")


def _load_strict(folder: Path, cls, config, kwargs: dict):
    """``from_pretrained`` with the raw loading report: transformers drops keys it is told to
    ignore (``_keys_to_ignore_on_load_missing``) from its report and initialises them at random;
    gmn records the missing keys before that."""
    from transformers import PreTrainedModel

    seen: dict[str, set] = {}
    adjust = PreTrainedModel.__dict__.get("_adjust_missing_and_unexpected_keys")

    def record(self, loading_info):
        seen["missing"] = set(loading_info.missing_keys)
        return adjust(self, loading_info)

    if adjust is not None:
        PreTrainedModel._adjust_missing_and_unexpected_keys = record
    stdin = sys.stdin
    sys.stdin = io.StringIO("")  # whatever asks, nothing answers
    try:
        model, info = cls.from_pretrained(folder, config=config, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False, output_loading_info=True, **kwargs)
    except (ValueError, OSError, RuntimeError, TypeError, KeyError, EOFError) as err:
        raise ModelFolderError(f"{folder}: transformers cannot load it as {cls.__name__} "
                               f"({_short(str(err).splitlines()[0] if str(err) else type(err).__name__, 160)})") \
            from None
    finally:
        sys.stdin = stdin
        if adjust is not None:
            PreTrainedModel._adjust_missing_and_unexpected_keys = adjust
    missing = set(info.get("missing_keys") or ()) | seen.get("missing", set())
    # a BatchNorm's step counter is no weight (eval mode never reads it); old files lack it
    missing = {k for k in missing if not k.endswith("num_batches_tracked")}
    return model, {"missing": missing, "unexpected": set(info.get("unexpected_keys") or ()),
                   "mismatched": {str(k[0]) if isinstance(k, tuple) else str(k)
                                  for k in info.get("mismatched_keys") or ()}}


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings, load report and progress bars off (gmn prints one line)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _hf_example(model: nn.Module) -> tuple | None:
    config, name = model.config, getattr(model, "main_input_name", "input_ids")
    if name == "input_ids" and getattr(config, "vocab_size", None):
        return (torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)),)
    if name == "pixel_values" and getattr(config, "image_size", None):
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return (torch.randn(1, getattr(config, "num_channels", 3), side, side),)
    return None


#: checkpoint suffixes: read without --arch they are no saved graphs, and the refusal says so
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def load_module(target: str | Path, arch: str | None = None, input_shape: tuple[int, ...] | None = None,
                classes: int = 10) -> tuple[nn.Module, tuple | None]:
    """The module (weights loaded) that ``target`` names and its default example inputs (None
    where gmn cannot guess them): a Hugging Face model folder, a checkpoint file with ``arch``,
    or, when no file has that name, a built-in name, its JSON or ``module:attr`` (fresh
    weights). ``input_shape`` (no batch) and ``classes`` size zoo families."""
    path = Path(target)
    if is_hf_folder(path):
        return hf_model(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder without config.json: give a file, a Hugging Face model folder, "
                         f"a built-in name ({', '.join(BUILTIN)}) or module:attr")
    if path.is_file():
        if arch is None:
            raise ValueError(f"{path.name} is a checkpoint: name its architecture with --arch "
                             f"(built-in: {', '.join(BUILTIN)}; JSON or module:attr)")
        spec = parse_arch(arch)
        model, default = build_arch(spec, input_shape, spec.get("classes", classes))
        load_state(model, path)
        return model, default
    text = str(target)
    if text in BUILTIN or text.lstrip().startswith("{") or ":" in text:
        spec = parse_arch(text)
        return build_arch(spec, input_shape, spec.get("classes", classes))
    raise FileNotFoundError(f"{text!r}: no such file or folder, and no built-in model ({', '.join(BUILTIN)}) or "
                            "module:attr")


def load_graph(target: str | Path, arch: str | None = None, input_shape: tuple[int, ...] | None = None,
               classes: int = 10, example: tuple | None = None, progress: bool = False, base: str | None = None,
               templates=None):
    """Any model gmn reads, as a parameter graph: an ONNX file, a saved graph (``gmn convert``'s
    .pt, no ``arch``), a checkpoint with ``arch``, a Hugging Face model folder, a PEFT adapter
    folder (``base``: its base model, anything :func:`load_module` reads; a Hugging Face folder is
    built on the meta device), a built-in name (or its JSON) or ``module:attr``. Every command reads
    models through here. The graph carries its runnable model (``g.model``), except a saved graph's
    and an adapter's. ``example`` (inputs to trace with) defaults to the model's own; ``input_shape``
    has no batch dimension. ``templates`` (a ``converters.Templates``): files of one architecture
    are traced once and the others read into that structure."""
    import converters
    from converters import ConversionError

    path = Path(target)
    if _is_adapter_folder(path):
        return _adapter_graph(path, base, input_shape, classes, example)
    if base is not None:
        raise ValueError(f"{target}: --base goes with a PEFT adapter folder (adapter_config.json), and this is none")
    if path.suffix == ".onnx":
        return (templates.from_onnx(path, progress=progress) if templates is not None
                else converters.from_onnx(path, progress=progress))
    if path.is_file() and arch is None:
        try:
            return converters.load_graph(path)
        except ConversionError as err:
            if path.suffix in CHECKPOINT_SUFFIXES:
                raise ConversionError(f"{err}; if {path.name} is a checkpoint, name its architecture with --arch "
                                      f"(built-in: {', '.join(BUILTIN)}; JSON or module:attr)") from None
            raise
    model, default = load_module(target, arch, input_shape, classes)
    example = example if example is not None and not is_hf_folder(path) else default
    if example is None:
        raise ValueError(f"{target}: gmn cannot guess this model's inputs; give --input-shape (e.g. 1,3,32,32)")
    if templates is not None:
        return templates.from_torch(model.eval(), example, progress=progress)
    return converters.from_torch(model.eval(), example, progress=progress)


def _is_adapter_folder(path: Path) -> bool:
    if not path.is_dir() or is_hf_folder(path):
        return False
    from adapters import is_adapter_folder

    return is_adapter_folder(path)


def _adapter_graph(path: Path, base: str | None, input_shape: tuple[int, ...] | None, classes: int,
                   example: tuple | None):
    """A PEFT adapter folder's graph over ``base`` (none: each adapted module's neurons its own)."""
    import converters

    if base is not None and not is_hf_folder(Path(base)):  # a Hugging Face base stays a path: built on meta
        base = load_module(base, None, input_shape, classes)[0]
    return converters.from_peft(path, base=base, example_inputs=example)


def is_hf_model(model: object) -> bool:
    """A transformers model (``save_pretrained`` writes it back as a model folder)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def save_hf_folder(model: nn.Module, state: dict[str, torch.Tensor], folder: str | Path,
                   metadata: dict[str, str] | None = None) -> None:
    """``model``'s config with weights ``state`` as a Hugging Face model folder (config.json and
    model.safetensors, the ``save_pretrained`` layout, no custom code), written into a fresh
    folder beside ``folder`` and moved into place: an interrupted write leaves no half folder.
    ``metadata`` goes into the safetensors header (provenance)."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    if not is_hf_model(model):
        raise ValueError(f"{folder}: an output without a suffix is a Hugging Face model folder, and this model is "
                         "no Hugging Face model; name a file (.safetensors, .onnx or .pt)")
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.config.save_pretrained(tmp)
        generation = getattr(model, "generation_config", None)
        if generation is not None and getattr(model, "can_generate", lambda: False)():
            generation.save_pretrained(tmp)
        keep = set(model.state_dict())  # transformers' own keys; tied copies are written once
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        tensors = {k: v.detach().contiguous() for k, v in state.items() if k in keep and k not in tied}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
        if folder.exists():
            if not is_hf_folder(folder):  # --force replaces a model folder, never another folder
                raise ValueError(f"{folder} exists and is no Hugging Face model folder (no config.json): "
                                 "gmn will not replace it")
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (name and content, sorted: a model folder)."""
    import hashlib

    digest, path = hashlib.sha256(), Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def provenance(arch, command: list[str], sources: list[str | Path] = ()) -> dict[str, str]:
    """What a written checkpoint carries in its safetensors header: ``gmn.arch`` (the
    architecture spec as JSON, as ``--arch`` or a zoo catalogue gives it), ``gmn.command`` (the
    command line, JSON) and ``gmn.sources`` (JSON: each source file's SHA-256 by its path)."""
    return {"gmn.arch": json.dumps(arch, sort_keys=True), "gmn.command": json.dumps(list(command)),
            "gmn.sources": json.dumps({str(s): file_sha256(s) for s in sources if s and Path(s).exists()})}


def read_provenance(path: str | Path) -> dict:
    """A checkpoint's provenance (``provenance``), decoded; empty for a file that has none."""
    from safetensors import safe_open

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    return {k.removeprefix("gmn."): json.loads(v) for k, v in meta.items() if k.startswith("gmn.")}
