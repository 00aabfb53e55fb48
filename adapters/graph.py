"""An adapter as a parameter graph: the contract of docs/design.md, built without the base's weights.

Each adapted module of each adapter gives::

    input neurons --lora_A--> r rank nodes --lora_B--> delta nodes --RESIDUAL (value: scaling)--> output neurons

``lora_A`` and ``lora_B`` are parameter edges (LINEAR; CONV with the kernel offset; EMBEDDING from
token nodes), one per scalar. The delta node ``i`` is the module's low-rank update of output ``i``;
its RESIDUAL edge into output ``i`` carries the scaling (``alpha / r`` or ``alpha / sqrt(r)``) as its
value and the adapter's number as its position, so two adapters of one folder are never swapped.
A DoRA magnitude is a SCALE edge beside it, a ``lora_B`` bias BIAS edges from a bias node. Tensors
PEFT saves whole (``modules_to_save``, biases, embedding layers) are CONSTANT edges of one pinned node
per tensor (position: the scalar's flat index).

Input and output neurons belong to the base and are pinned (they carry a ``node_index``), and so are
delta nodes; only rank nodes move, so the graph's automorphisms are the rank permutations of each
module. With a base the
neurons are the base's own (numbered over all its layers, so every adapter of one base has one
frame), shared where its layers share them; without one each module's are its own.
"""

from __future__ import annotations

import json
import math
import re
import weakref

import torch
from torch import Tensor, nn

from converters.graph import GraphBuilder, ParameterGraph, ParamIndex
from converters.vocab import EdgeType, NodeType

from .base import Layer, example_inputs, layers, neuron_sets
from .folder import Adapter, AdapterError, LoraModule, modules_of

#: name of the graph attribute holding the adapters' names, sub-folders and config texts (JSON)
META = "peft_adapters"
EDGE_TYPE = {"linear": EdgeType.LINEAR, "conv": EdgeType.CONV, "embedding": EdgeType.EMBEDDING}


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class _Frame:
    """Which pinned nodes a module reads and writes; nodes made on first use, numbered by the frame."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.builder = builder
        self.nodes: dict[object, Tensor] = {}
        self.index: dict[object, int] = {}  #: set -> node_index of its first neuron
        self.size: dict[object, int] = {}
        self.tokens: set = set()
        self.io: dict[str, tuple[object, object]] = {}
        self.next = 0
        self.notes: list[str] = []

    def number(self, key, size: int, tokens: bool = False) -> None:
        if key not in self.index:
            self.index[key], self.size[key] = self.next, size
            self.next += size
            if tokens:
                self.tokens.add(key)

    def nodes_of(self, key, depth: int = 0) -> Tensor:
        if key not in self.nodes:
            size = self.size[key]
            kind = NodeType.TOKEN if key in self.tokens else NodeType.HIDDEN
            index = torch.arange(self.index[key], self.index[key] + size, dtype=torch.int32)
            self.nodes[key] = self.builder.add_nodes(size, kind, depth, index)
        return self.nodes[key]


def _own_frame(frame: _Frame, paths: list[str], sizes: dict[str, Layer]) -> None:
    for path in paths:
        layer = sizes[path]
        frame.number(("in", path), layer.in_features, tokens=layer.kind == "embedding")
        frame.number(("out", path), layer.out_features)
        frame.io[path] = (("in", path), ("out", path))


def _base_frame(frame: _Frame, base: nn.Module, found: dict, given) -> None:
    """The base's neuron sets, numbered over all its layers (so the numbering is the base's)."""
    example = given if given is not None else example_inputs(base)
    if example is None:
        frame.notes.append("no example input for the base (pass example_inputs): each adapted layer's neurons "
                           "are its own")
        io = {}
    else:
        io = _shared(frame, base, example, default=given is None)
    for path, (layer, _) in found.items():
        i, o = io.get(path, (-1, -1))
        tokens = layer.kind == "embedding"
        in_key = ("tokens", path) if tokens or i < 0 else ("set", i)
        out_key = ("set", o) if o >= 0 else ("out", path)
        frame.number(in_key, layer.in_features, tokens=tokens)
        frame.number(out_key, layer.out_features)
        frame.io[path] = (in_key, out_key)


#: neuron sets of bases seen with their default example (many adapters of one base: one forward)
_SETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shared(frame: _Frame, base: nn.Module, example, default: bool) -> dict[str, tuple[int, int]]:
    """Which layers share neurons: from a meta-device forward, or (a forward that reads values:
    ``.item()``, ``nonzero``) a real one when the base has real weights. With the default example
    the answer is kept for the base's lifetime (its structure, not its values, decides it)."""
    if default and base in _SETS:
        return _SETS[base]
    io = _run_forward(frame, base, example)
    if default and not frame.notes:
        _SETS[base] = io
    return io


def _run_forward(frame: _Frame, base: nn.Module, example) -> dict[str, tuple[int, int]]:
    real = not any(p.is_meta for p in base.parameters())
    for on_meta in (True, False) if real else (True,):
        try:
            return neuron_sets(base, example, on_meta)[0]
        except Exception as err:  # a forward that cannot run: each layer keeps its own neurons
            failure = f"{type(err).__name__}: {str(err)[:120]}"
    frame.notes.append(f"the base's forward failed ({failure}); each adapted layer's neurons are its own")
    return {}


def _check_base(modules: list[LoraModule], found: dict, where: str) -> None:
    for m in modules:
        if m.module not in found:
            raise AdapterError(f"{where}: {m.module} is adapted but the base has no such layer")
        layer = found[m.module][0]
        mine = Layer(m.kind, m.in_features, m.out_features, m.kernel)
        if mine != layer:
            raise AdapterError(f"{where}: {m.module}'s adapter is {_describe(mine)}; the base's layer is "
                               f"{_describe(layer)}")


def _describe(layer: Layer) -> str:
    kernel = f" kernel {list(layer.kernel)}" if layer.kernel else ""
    return f"a {layer.kind} {layer.in_features} -> {layer.out_features}{kernel}"


#: most base-weight edges a graph may get (``base_weights=True``): a 7B base's q, k, v, o would be 8.6 G
BASE_WEIGHT_EDGES = 50_000_000


def build(adapters: list[Adapter], base: nn.Module | None, where: str, example=None,
          base_weights: bool = False) -> ParameterGraph:
    """The parameter graph of ``adapters`` (one folder), in ``base``'s frame when given; with
    ``base_weights``, each adapted layer's base weights as structural edges (:func:`_base_edges`)."""
    modules = modules_of(adapters)
    found = layers(base) if base is not None else {}
    if base is not None:
        _check_base(modules, found, where)
        order = {path: i for i, path in enumerate(found)}
        modules.sort(key=lambda m: (m.adapter, order[m.module]))
    else:
        modules.sort(key=lambda m: (m.adapter, _natural(m.module)))
    params = _ordered_params(adapters, modules)
    builder = GraphBuilder(params)
    frame = _Frame(builder)
    if base is not None:
        _base_frame(frame, base, found, example)
    else:
        sizes = {m.module: Layer(m.kind, m.in_features, m.out_features, m.kernel) for m in modules}
        _own_frame(frame, list(dict.fromkeys(m.module for m in modules)), sizes)
    if base_weights:
        _check_base_weights(base, modules, found, where)
    scalings = [_module_edges(builder, frame, m) for m in modules]
    _whole_tensors(builder, frame, adapters, {k for m in modules for k in m.keys.values()})
    weights = _base_edges(builder, frame, modules, found) if base_weights else []
    data, layout, _ = builder.finish()
    start = int(data["num_param_edges"]) + int(data["num_tied_edges"])
    for m, s in zip(modules, scalings):  # the structural edges, in the order they were added
        data["edge_value"][start : start + m.out_features] = s
        start += m.out_features
    for w in weights:
        data["edge_value"][start : start + w.numel()] = w.to(data["edge_value"].dtype)
        start += w.numel()
    index = ParamIndex(
        params=layout, state_keys=tuple(params), aliases={}, buffers={}, buffer_nodes={},
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in params.items() if v.dtype != torch.float32},
        pins=tuple(frame.notes))
    graph = ParameterGraph(num_nodes=data["node_type"].numel(), param_index=index, **data)
    values = data["edge_value"][: int(data["num_param_edges"])]
    graph.nonfinite = torch.tensor([0 if bool(torch.isfinite(values.sum())) else int((~values.isfinite()).sum())])
    setattr(graph, META, json.dumps({"adapters": [
        {"name": a.name, "subdir": a.subdir, "config": a.config_text} for a in adapters]}))
    return graph


def _ordered_params(adapters: list[Adapter], modules: list[LoraModule]) -> dict[str, Tensor]:
    """Every tensor of every adapter by its graph name: modules in order (A, B, bias, magnitude), then
    each adapter's whole tensors in name order."""
    params: dict[str, Tensor] = {}
    tensors = {a.param_name(k): v for a in adapters for k, v in a.tensors.items()}
    for m in modules:
        for role in ("A", "B", "B_bias", "magnitude"):
            if role in m.keys:
                params[m.keys[role]] = tensors[m.keys[role]]
    for a in adapters:
        for key in sorted(a.tensors):
            params.setdefault(a.param_name(key), a.tensors[key])
    return params


def _module_edges(builder: GraphBuilder, frame: _Frame, m: LoraModule) -> float:
    """The module's rank and delta nodes and its edges; returns the scaling its RESIDUAL edges carry."""
    in_key, out_key = frame.io[m.module]
    inputs, outputs = frame.nodes_of(in_key), frame.nodes_of(out_key)
    rank = builder.add_nodes(m.rank, NodeType.HIDDEN, 1)
    # delta nodes are pinned too: two modules that read and write the same neurons (parallel branches)
    # must not trade their updates, which differ in scaling, DoRA norm and base weight
    frame.number(("delta", m.adapter, m.module), m.out_features)
    delta = frame.nodes_of(("delta", m.adapter, m.module), depth=2)
    a_shape = (m.rank, m.in_features) + m.kernel
    tail = (1,) * len(m.kernel)
    kernel_pos = torch.arange(math.prod(m.kernel)).view(m.kernel) if m.kernel else 0
    builder.param_edges(m.keys["A"], inputs.view(1, -1, *tail), rank.view(-1, 1, *tail), EDGE_TYPE[m.kind],
                        pos=kernel_pos, shape=a_shape)
    etype = EdgeType.CONV if m.kind == "conv" else EdgeType.LINEAR
    builder.param_edges(m.keys["B"], rank.view(1, -1, *tail), delta.view(-1, 1, *tail), etype,
                        shape=(m.out_features, m.rank) + tail)
    if "B_bias" in m.keys:
        bias = builder.add_nodes(1, NodeType.BIAS, 1)
        builder.param_edges(m.keys["B_bias"], bias, delta, EdgeType.BIAS, shape=(m.out_features,))
    if "magnitude" in m.keys:
        builder.param_edges(m.keys["magnitude"], delta, outputs, EdgeType.SCALE, pos=m.adapter,
                            shape=(m.out_features,))
    builder.edges(delta, outputs, EdgeType.RESIDUAL, pos=m.adapter)
    return m.scaling


def _check_base_weights(base: nn.Module | None, modules: list[LoraModule], found: dict, where: str) -> None:
    """Base weights as edges need a base with values, plain (ungrouped) layers and a bounded count."""
    if base is None:
        raise AdapterError(f"{where}: base weights as edge features need the base")
    paths = dict.fromkeys(m.module for m in modules)
    count = 0
    for path in paths:
        layer, module = found[path]
        weight = module.weight
        if weight.is_meta:
            raise AdapterError(f"{where}: base weights as edge features need the base's weights; {path}'s are on the "
                               "meta device (pass the base as a module with its weights)")
        if layer.kind == "conv" and getattr(module, "groups", 1) != 1:
            raise AdapterError(f"{where}: {path} is a grouped convolution: its base weights are not one edge per "
                               "input and output channel pair")
        count += weight.numel()
    if count > BASE_WEIGHT_EDGES:
        raise AdapterError(f"{where}: the adapted layers' base weights would be {count:,} edges (at most "
                           f"{BASE_WEIGHT_EDGES:,}); convert without base weights")


def _base_edges(builder: GraphBuilder, frame: _Frame, modules: list[LoraModule], found: dict) -> list[Tensor]:
    """Each adapted layer's base weight ``W[o, i]`` as a structural edge from input neuron ``i`` to
    output neuron ``o`` (per kernel offset for a convolution, from token ``i`` for an embedding),
    of the layer's edge type: the base is shared by every adapter of the frame, so its weights are
    features of the graph, never parameters of the adapter. Returns the values in edge order."""
    values = []
    for path in dict.fromkeys(m.module for m in modules):
        layer, module = found[path]
        inputs, outputs = (frame.nodes_of(key) for key in frame.io[path])
        weight = module.weight.detach()
        if layer.kind == "embedding" or type(module).__name__ == "Conv1D":  # stored (tokens or in, out)
            grid = weight.unsqueeze(-1)
        else:  # (out, in, *kernel) -> (in, out, kernel offsets)
            grid = weight.reshape(layer.out_features, layer.in_features, -1).transpose(0, 1)
        k = grid.shape[-1]
        src = inputs.view(-1, 1, 1).expand(grid.shape).reshape(-1)
        dst = outputs.view(1, -1, 1).expand(grid.shape).reshape(-1)
        pos = torch.arange(k).view(1, 1, k).expand(grid.shape).reshape(-1) if layer.kind == "conv" else 0
        builder.edges(src, dst, EDGE_TYPE[layer.kind], pos)
        values.append(grid.reshape(-1))
    return values


def _whole_tensors(builder: GraphBuilder, frame: _Frame, adapters: list[Adapter], lora: set[str]) -> None:
    """A pinned CONSTANT node per tensor PEFT saves whole, one edge per scalar (position: flat index)."""
    for a in adapters:
        for key in sorted(a.tensors):
            name = a.param_name(key)
            if name in lora:
                continue
            numel = a.tensors[key].numel()
            frame.number(("whole", name), 1)
            node = builder.add_nodes(1, NodeType.CONSTANT, 0, torch.tensor([frame.index[("whole", name)]]))
            builder.param_edges(name, node, node, EdgeType.CONSTANT, pos=torch.arange(numel), shape=(numel,))


__all__ = ["BASE_WEIGHT_EDGES", "META", "build"]
