"""Reading PEFT LoRA adapters: folders on disk or a live ``peft.PeftModel``, checked before loading.

An adapter folder is hostile until read. The config is refused by size before parsing, every
number that sizes a tensor (``r``, ``rank_pattern``) is bounded, and the safetensors header
(names, shapes, dtypes: no data) is checked against the config before one tensor is read.
Every refusal is one :class:`AdapterError` line naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

try:
    import re._parser as _regex_parser
except ImportError:  # Python 3.10
    import sre_parse as _regex_parser

from converters.graph import ConversionError
from converters.limits import MAX_JSON_BYTES, check_elements

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
#: PEFT's prefix of every key it saves for LoRA (``LoraModel`` wraps the base as ``.model``)
PREFIX = "base_model.model."
#: the longest rank_pattern / alpha_pattern key (PEFT's are module names or short regular expressions)
MAX_PATTERN = 512
#: the longest tensor name (a 7B model's are under 80 characters)
MAX_KEY = 1024
#: the most repetitions (``*``, ``+``, ``{m,n}``) one pattern key may hold
MAX_REPEATS = 2
#: the largest rank a config may name (a 7B model's widest layer is 11,008: no real adapter comes close)
MAX_RANK = 1 << 16
#: layers PEFT saves whole when a LoRA targets them (``peft.utils.constants.EMBEDDING_LAYER_NAMES``)
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
#: LoRA options that change what the adapter computes in ways this converter does not model
UNSUPPORTED = ("layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens",
               "use_qalora", "use_bdlora", "arrow_config", "lora_ga_config", "kasa_config", "monteclora_config")
_WHY_UNSUPPORTED = {"target_parameters": " (LoRA on raw parameters, such as the fused experts of a mixture-of-"
                                         "experts layer: PEFT >= 0.22 writes it when target_modules names an expert "
                                         "projection; name the modules outside the experts to adapt only those)"}
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
#: suffix of a key -> its role in the module the rest of the key names
ROLES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_B.bias": "B_bias",
         ".lora_embedding_A": "A", ".lora_embedding_B": "B", ".lora_magnitude_vector": "magnitude"}


class AdapterError(ConversionError):
    """An adapter cannot be read or written; the message names the file and the problem."""


@dataclass
class LoraModule:
    """One adapted module of one adapter: ``delta = scaling * B @ A`` (``A`` flattened past its rows)."""

    adapter: int  #: position of its adapter in the graph (0 for the first)
    module: str  #: path relative to the base model (``model.layers.0.self_attn.q_proj``)
    kind: str  #: ``linear``, ``conv`` or ``embedding``
    keys: dict[str, str]  #: role (``A``, ``B``, ``B_bias``, ``magnitude``) -> parameter name in the graph
    rank: int
    in_features: int  #: input channels (``num_embeddings`` for an embedding)
    out_features: int
    kernel: tuple[int, ...]  #: a convolution's kernel size (``()`` otherwise)
    scaling: float


@dataclass
class Adapter:
    """One LoRA adapter: its config (and its text, written back verbatim) and its tensors."""

    name: str
    subdir: str  #: ``""`` for the folder itself, else PEFT's adapter-name sub-folder
    config: dict
    config_text: str
    tensors: dict[str, Tensor] = field(default_factory=dict)  #: keys as PEFT saves them

    def param_name(self, key: str) -> str:
        return f"{self.subdir}/{key}" if self.subdir else key


def _fail(where, problem: str) -> AdapterError:
    return AdapterError(f"{where}: {problem}")


# ---------------------------------------------------------------------------------------- config
def read_config(path: Path) -> tuple[dict, str]:
    """The config as a dict and as its text, refused by size before it is read."""
    if not path.is_file():
        raise _fail(path.parent, f"no {CONFIG} (not a PEFT adapter folder)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise _fail(path, f"{path.stat().st_size:,} bytes, beyond the {MAX_JSON_BYTES:,} a config may have")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
        config = json.loads(text)
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"not JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise _fail(path, "JSON nested too deeply") from None
    check_config(config, path)
    return config, text


def _rank(value, where, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_RANK:
        raise _fail(where, f"{what} is {value!r:.40}; a rank is an integer from 1 to {MAX_RANK}")
    return value


def _number(value, where, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _fail(where, f"{what} is {value!r:.40}, not a finite number")
    return float(value)


def check_config(config, where) -> None:
    """A LoRA config whose every size is bounded and every option understood, or one line saying not."""
    if not isinstance(config, dict):
        raise _fail(where, "not a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise _fail(where, f"PEFT type {kind!r:.40} is not LoRA (only LoRA adapters convert; IA3, LoHa, LoKr, "
                           "AdaLoRA, prompt tuning and the rest are refused)")
    _rank(config.get("r"), where, "r")
    _number(config.get("lora_alpha"), where, "lora_alpha")
    for key, check in (("rank_pattern", _rank), ("alpha_pattern", _number)):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            raise _fail(where, f"{key} is not an object")
        for name, value in pattern.items():
            _compiles(name, where, key)
            check(value, where, f"{key}[{name!r:.40}]")
    for key in UNSUPPORTED:
        if config.get(key) not in (None, False, {}, []):
            why = _WHY_UNSUPPORTED.get(key, "")
            raise _fail(where, f"LoRA option {key} is not supported{why}")
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        raise _fail(where, f"bias is {config.get('bias')!r:.40}, not none, all or lora_only")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if type(config.get(key, False)) is not bool:
            raise _fail(where, f"{key} is not true or false")
    saved = config.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(s, str) for s in saved)):
        raise _fail(where, "modules_to_save is not a list of names")


def _compiles(pattern: str, where, what: str) -> None:
    """A pattern key PEFT can match fast: it compiles, is at most ``MAX_PATTERN`` long, holds at most
    ``MAX_REPEATS`` repetitions and none inside another, no alternation under a repetition and no
    back-reference (``(a+)+``, ``(a|aa)*``, ``.*.*.*.*x``: Python's matcher backtracks exponentially or
    to a high power of the name's length on them, and the names they meet come from the file)."""
    try:
        tree = _regex_parser.parse(pattern)
    except re.error as err:
        raise _fail(where, f"{what} key {pattern!r:.40} is not a regular expression ({err})") from None
    if len(pattern) > MAX_PATTERN or not _linear(list(tree), inside_repeat=False) or _repeats(list(tree)) > MAX_REPEATS:
        raise _fail(where, f"{what} key {pattern!r:.40} could take exponential time to match (nested repetition, "
                           f"alternation or back-reference under a repetition, over {MAX_REPEATS} repetitions or "
                           f"over {MAX_PATTERN} characters)")


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _linear(items: list, inside_repeat: bool) -> bool:
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            if inside_repeat or not _linear(list(av[2]), inside_repeat=True):
                return False
        elif (name == "BRANCH" or name.startswith("GROUPREF")) and inside_repeat:
            return False
        elif name == "GROUPREF" or name.startswith("GROUPREF"):
            return False
        else:
            for part in _parts(av):
                if not _linear(part, inside_repeat):
                    return False
    return True


def _repeats(items: list) -> int:
    return sum((str(op) in _REPEATS) + sum(_repeats(part) for part in _parts(av)) for op, av in items)


def _parts(av) -> list[list]:
    """The sub-patterns inside one parsed item's arguments (groups, branches, assertions)."""
    if isinstance(av, _regex_parser.SubPattern):
        return [list(av)]
    if isinstance(av, (list, tuple)):
        return [p for x in av for p in _parts(x)]
    return []


def pattern_value(patterns: dict, module: str, default):
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of ``module``'s path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def scaling(config: dict, module: str, rank: int) -> float:
    """What PEFT multiplies ``B @ A`` by: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# ------------------------------------------------------------------------------------------ keys
def split_key(key: str) -> tuple[str, str]:
    """``(module, role)`` of a LoRA key (role ``""`` for a whole tensor, module then the key)."""
    for suffix, role in ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return key, ""


def _whole_tensor_allowed(config: dict, module_key: str) -> bool:
    """Whether PEFT saves this non-LoRA tensor for this config: a module to save, a bias when
    ``bias`` is not ``none``, or an embedding layer a LoRA targets (``save_embedding_layers``)."""
    path = module_key.removeprefix(PREFIX)
    parts = path.split(".")
    if any(name in parts for name in config.get("modules_to_save") or ()):
        return True
    if parts[-1] == "bias" and config.get("bias", "none") != "none":
        return True
    return any(name in parts for name in EMBEDDING_LAYER_NAMES)


def lora_pairs(names) -> list[tuple[str, str]]:
    """``(A, B)`` parameter names of every adapted module among ``names`` (graph parameter names)."""
    names = list(names)
    known = set(names)
    pairs = []
    for name in names:
        for a, b in ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B")):
            if name.endswith(a) and name[: -len(a)] + b in known:
                pairs.append((name, name[: -len(a)] + b))
    return pairs


# ----------------------------------------------------------------------------------- the folder
def _subdir_ok(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name) is not None and ".." not in name


def is_adapter_folder(path) -> bool:
    """Whether ``path`` is a PEFT adapter folder (``adapter_config.json`` in it or in a sub-folder)."""
    path = Path(path)
    return path.is_dir() and ((path / CONFIG).is_file() or any(
        (p / CONFIG).is_file() for p in path.iterdir() if p.is_dir() and not p.is_symlink()))


def find_adapters(folder: Path) -> list[tuple[str, str]]:
    """``(adapter name, sub-folder)`` of every adapter in ``folder``: the folder's own (``default``)
    first, then PEFT's adapter-name sub-folders in name order."""
    if not folder.is_dir():
        raise _fail(folder, "not a folder (a PEFT adapter is a folder with adapter_config.json)")
    found = [("default", "")] if (folder / CONFIG).is_file() else []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        if (sub / CONFIG).is_file():
            if not _subdir_ok(sub.name):
                raise _fail(sub, "an adapter sub-folder's name must be letters, digits, '_', '-' or '.'")
            found.append((sub.name, sub.name))
    if not found:
        raise _fail(folder, f"no {CONFIG} in it or in its sub-folders (not a PEFT adapter folder)")
    return found


def read_adapter(folder: Path, name: str, subdir: str) -> Adapter:
    """One adapter of ``folder``: config checked, header checked against it, then the tensors read."""
    where = folder / subdir if subdir else folder
    config, text = read_config(where / CONFIG)
    weights = where / WEIGHTS
    if not weights.is_file():
        extra = " (adapter_model.bin is a pickle and is not read)" if (where / "adapter_model.bin").exists() else ""
        raise _fail(where, f"no {WEIGHTS}{extra}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}
            check_header(header, config, weights)
            tensors = {k: fh.get_tensor(k) for k in header}
    except SafetensorError as err:
        raise _fail(weights, f"not a readable safetensors file ({str(err)[:200]})") from None
    return Adapter(name, subdir, config, text, tensors)


def check_header(header: dict[str, tuple[tuple[int, ...], str]], config: dict, where) -> None:
    """Names, shapes and dtypes against the config, and the total against free memory, before any read."""
    total = 0
    for key, (shape, dtype) in header.items():
        if len(key) > MAX_KEY:  # names meet regular expressions: their length bounds the matching time
            raise _fail(where, f"a key of {len(key):,} characters (at most {MAX_KEY})")
        if dtype not in FLOAT_DTYPES:
            raise _fail(where, f"{key} is {dtype}; adapter weights are floating point")
        if not key.startswith(PREFIX):
            raise _fail(where, f"unknown key {key!r:.120} (PEFT's LoRA keys start with {PREFIX!r})")
        module, role = split_key(key)
        if role == "" and not _whole_tensor_allowed(config, module):
            raise _fail(where, f"unknown key {key!r:.120}: not a LoRA weight, and the config saves no such "
                               "tensor (modules_to_save, bias)")
        if role == "magnitude" and not config.get("use_dora"):
            raise _fail(where, f"{key} is a DoRA magnitude, but use_dora is false")
        total += math.prod(shape)
    for module, roles in _by_module(header).items():
        _check_module(module, roles, config, where)
    check_elements(total, f"{where}", itemsize=8, factor=4)


def _by_module(header: dict) -> dict[str, dict[str, tuple[int, ...]]]:
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, (shape, _) in header.items():
        module, role = split_key(key)
        if role:
            modules.setdefault(module, {})[role] = shape
    return modules


def _check_module(module: str, roles: dict, config: dict, where) -> None:
    """An ``A`` and a ``B`` whose rank is the config's for this module and whose shapes fit together."""
    if "A" not in roles or "B" not in roles:
        raise _fail(where, f"{module} has {' and '.join(sorted(roles))} but no lora_{'B' if 'A' in roles else 'A'}")
    a, b = roles["A"], roles["B"]
    path = module.removeprefix(PREFIX)
    rank = pattern_value(config.get("rank_pattern") or {}, path, config["r"])
    conv = len(a) > 2
    ok = len(a) >= 2 and len(b) == len(a) and a[0] == rank and b[1] == rank and all(k == 1 for k in b[2:])
    if not ok:
        raise _fail(where, f"{module}: lora_A {list(a)} and lora_B {list(b)} are not a rank-{rank} pair "
                           "(the config's r / rank_pattern)")
    if "magnitude" in roles and math.prod(roles["magnitude"]) != b[0]:
        raise _fail(where, f"{module}: DoRA magnitude {list(roles['magnitude'])} is not one per output ({b[0]})")
    if "B_bias" in roles and roles["B_bias"] != (b[0],):
        raise _fail(where, f"{module}: lora_B bias {list(roles['B_bias'])} is not one per output ({b[0]})")
    if conv and "magnitude" in roles and roles["magnitude"] != (1, b[0]) + (1,) * (len(a) - 2):
        raise _fail(where, f"{module}: DoRA magnitude {list(roles['magnitude'])} of a convolution")


def read_folder(folder) -> list[Adapter]:
    """Every adapter of a PEFT folder (its own and its adapter-name sub-folders)."""
    folder = Path(folder)
    return [read_adapter(folder, name, subdir) for name, subdir in find_adapters(folder)]


def from_peft_model(model) -> list[Adapter]:
    """The adapters of a live ``peft.PeftModel``, as ``save_pretrained`` would write them."""
    from peft import get_peft_model_state_dict

    adapters = []
    names = list(model.peft_config)
    for i, name in enumerate(names):
        config = model.peft_config[name].to_dict()
        text = json.dumps(config, indent=2, sort_keys=True, default=lambda s: sorted(s))
        config = json.loads(text)
        check_config(config, f"adapter {name!r}")
        state = get_peft_model_state_dict(model, adapter_name=name)
        header = {k: (tuple(v.shape), _dtype_code(v.dtype, name, k)) for k, v in state.items()}
        check_header(header, config, f"adapter {name!r}")
        subdir = "" if i == 0 and name == "default" else name
        if subdir and not _subdir_ok(subdir):
            raise _fail(f"adapter {name!r}", "an adapter name must be letters, digits, '_', '-' or '.'")
        adapters.append(Adapter(name, subdir, config, text, {k: v.detach().cpu() for k, v in state.items()}))
    return adapters


def _dtype_code(dtype: torch.dtype, adapter: str, key: str) -> str:
    for code, d in FLOAT_DTYPES.items():
        if d == dtype:
            return code
    raise _fail(f"adapter {adapter!r}", f"{key} is {dtype}; adapter weights are floating point")


def modules_of(adapters: list[Adapter]) -> list[LoraModule]:
    """Every adapted module of every adapter, from the tensors' shapes (no base needed)."""
    out = []
    for i, adapter in enumerate(adapters):
        roles: dict[str, dict[str, str]] = {}
        for key in adapter.tensors:
            module, role = split_key(key)
            if role:
                roles.setdefault(module, {})[role] = key
        for module, keys in roles.items():
            a, b = adapter.tensors[keys["A"]], adapter.tensors[keys["B"]]
            embedding = keys["A"].endswith("lora_embedding_A")
            kind = "embedding" if embedding else ("conv" if a.dim() > 2 else "linear")
            path = module.removeprefix(PREFIX)
            out.append(LoraModule(
                adapter=i, module=path, kind=kind, keys={r: adapter.param_name(k) for r, k in keys.items()},
                rank=a.shape[0], in_features=a.shape[1], out_features=b.shape[0], kernel=tuple(a.shape[2:]),
                scaling=scaling(adapter.config, path, a.shape[0])))
    return out
