"""The base model's side of an adapter graph: its layers' shapes and which neurons they share.

Nothing here allocates a base weight. Shapes come from the modules (a base built on the meta
device has them); which layers read or write the same neurons comes from one forward pass with
every parameter and buffer replaced by a meta tensor (no arithmetic, no memory), watched by a
``TorchFunctionMode``: layers that read the same tensor share their input neurons, and a sum of
two tensors of one shape (a residual connection) joins their neurons into one set, so the
residual stream is one set of neurons across layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

#: path components PEFT adds around a base layer (stripped to name the base layer itself)
WRAPPERS = ("base_layer", "original_module")
#: sub-modules of a PEFT wrapper that are not base layers
PEFT_PARTS = {"lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
              "modules_to_save"}
_ADDS = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_"}
_COPIES = {"clone", "contiguous", "to", "detach", "float", "half", "bfloat16", "double", "type_as", "dropout",
           "__get__"}


@dataclass(frozen=True)
class Layer:
    """A base layer an adapter may target: its kind and sizes."""

    kind: str  #: ``linear`` (nn.Linear, transformers' Conv1D), ``conv`` or ``embedding``
    in_features: int
    out_features: int
    kernel: tuple[int, ...] = ()


def layer_of(module: nn.Module) -> Layer | None:
    """The layer a module is, from its attributes alone (a meta module has them all)."""
    if isinstance(module, nn.Linear):
        return Layer("linear", module.in_features, module.out_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight stored (in, out)
        return Layer("linear", int(module.weight.shape[0]), int(module.nf))
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return Layer("conv", module.in_channels, module.out_channels, tuple(module.kernel_size))
    if isinstance(module, nn.Embedding):
        return Layer("embedding", module.num_embeddings, module.embedding_dim)
    return None


def base_path(name: str) -> str | None:
    """The base layer's own path for a module name of a (possibly PEFT-wrapped) model, or None for
    PEFT's own parts."""
    parts = name.split(".")
    if PEFT_PARTS.intersection(parts):
        return None
    return ".".join(p for p in parts if p not in WRAPPERS)


def layers(model: nn.Module) -> dict[str, tuple[Layer, nn.Module]]:
    """Every base layer of ``model`` by its path (PEFT's wrappers and parts looked through)."""
    found = {}
    for name, module in model.named_modules():
        layer = layer_of(module)
        path = base_path(name)
        if layer is not None and path is not None and path not in found:
            found[path] = (layer, module)
    return found


class _Sets:
    """Union-find over neuron sets; a set is ``(size)``, a tensor is mapped to its set by identity."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.of: dict[int, int] = {}
        self.keep: list[Tensor] = []  # keeps every mapped tensor alive, so ids are never reused

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b and self.size[a] == self.size[b]:
            self.parent[max(a, b)] = min(a, b)
        return self.find(a)

    def get(self, t) -> int | None:
        return self.of.get(id(t)) if isinstance(t, Tensor) else None

    def put(self, t: Tensor, s: int) -> None:
        self.of[id(t)] = s
        self.keep.append(t)


class _Watch(TorchFunctionMode):
    """Carries neuron sets through sums (joined) and copies (kept) of tensors of one shape."""

    def __init__(self, sets: _Sets) -> None:
        super().__init__()
        self.sets = sets

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, Tensor) and (name in _ADDS or name in _COPIES):
            found = [s for a in args if isinstance(a, Tensor) and a.shape == out.shape
                     if (s := self.sets.get(a)) is not None]
            if found:
                s = found[0]
                if name in _ADDS:
                    for other in found[1:]:
                        s = self.sets.union(s, other)
                self.sets.put(out, s)
        return out


def neuron_sets(model: nn.Module, example: dict | tuple,
                on_meta: bool = True) -> tuple[dict[str, tuple[int, int]], dict[int, int]]:
    """Per base layer ``(input set, output set)`` (-1: token ids) and each set's size, from one
    forward of ``model`` on ``example``: on the meta device (meta copies of parameters, buffers and
    inputs), or with ``on_meta=False`` a real one (for models whose forward reads values)."""
    found = layers(model)
    sets = _Sets()
    io: dict[str, list[int]] = {}
    by_module = {id(m): path for path, (_, m) in found.items()}

    def before(module, args, kwargs):
        path = by_module[id(module)]
        x = args[0] if args else next(iter(kwargs.values()), None)
        layer = found[path][0]
        if layer.kind == "embedding" or not isinstance(x, Tensor):
            io.setdefault(path, [-1, -1])
            return
        s = sets.get(x)
        if s is None:
            s = sets.new(layer.in_features)
            sets.put(x, s)
        io.setdefault(path, [s, -1])[0] = s

    def after(module, args, kwargs, out):
        path = by_module[id(module)]
        if isinstance(out, Tensor) and path in io:
            s = sets.get(out)
            if s is None:
                s = sets.new(found[path][0].out_features)
                sets.put(out, s)
            io[path][1] = s

    hooks = [h for _, (_, m) in found.items() for h in (
        m.register_forward_pre_hook(before, with_kwargs=True),
        m.register_forward_hook(after, with_kwargs=True))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Watch(sets):
            if on_meta:  # every parameter and buffer a meta tensor: no arithmetic, no memory
                state = {k: torch.empty_like(v, device="meta") for k, v in itertools.chain(
                    model.named_parameters(), model.named_buffers())}
                args, kwargs = (example, {}) if isinstance(example, tuple) else ((), example)
                torch.func.functional_call(model, state, tuple(_meta(a) for a in args),
                                           {k: _meta(v) for k, v in kwargs.items()}, tie_weights=True, strict=False)
            else:
                model(*example) if isinstance(example, tuple) else model(**example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    roots = {path: (sets.find(i) if i >= 0 else -1, sets.find(o) if o >= 0 else -1) for path, (i, o) in io.items()}
    return roots, {s: sets.size[s] for s in range(len(sets.size)) if sets.find(s) == s}


def _meta(x):
    return torch.empty_like(x, device="meta") if isinstance(x, Tensor) else x


def example_inputs(model: nn.Module) -> dict | None:
    """A small input for a transformers model (``dummy_inputs``; pixels for vision models), or None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(model, "main_input_name", "") == "pixel_values":
        size = getattr(config, "image_size", 32)
        size = size if isinstance(size, int) else int(size[0])
        return {"pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), size, size)}
    try:
        dummy = dict(model.dummy_inputs)
    except Exception:  # models without dummy inputs: no sharing is found, each layer keeps its own
        return None
    dummy = {k: v[:1] for k, v in dummy.items() if isinstance(v, Tensor)}
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" not in dummy and "input_ids" in dummy:
        dummy["decoder_input_ids"] = dummy["input_ids"]
    return dummy
