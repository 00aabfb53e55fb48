"""Saving and loading parameter graphs: plain tensors, atomic writes, no pickle on load."""

from __future__ import annotations

import hashlib
import math
import os

import torch

from .files import atomic_write
from .graph import ConversionError, ParameterGraph, ParamIndex
from .vocab import Activation, EdgeType, NodeType

_SKIP = ("model", "onnx", "param_index")  # live objects: not saved


def graph_to_dict(g: ParameterGraph) -> dict:
    """Plain tensors, numbers and strings (loadable with ``weights_only``); live objects dropped.
    ``checksum`` covers every tensor and the index, so a corrupted file is noticed on load."""
    payload = {k: v for k, v in g.to_dict().items() if k not in _SKIP}
    payload["param_index"] = g.param_index.to_dict()
    payload["checksum"] = _checksum(payload)
    return payload


def graph_from_dict(payload: dict) -> ParameterGraph:
    """Inverse of :func:`graph_to_dict`; a payload that fails its checksum or whose structure
    is inconsistent is refused with a :class:`ConversionError` naming the problem."""
    payload = dict(payload)
    expected = payload.pop("checksum", None)
    if not isinstance(expected, str):
        raise ConversionError("no checksum: not written by save_graph, or its checksum was removed; refused")
    if expected != _checksum(payload):
        raise ConversionError("checksum mismatch: the graph's contents changed after it was saved (corrupt file)")
    _check_structure(payload)  # a checksum proves no corruption, not who wrote the file
    index = ParamIndex.from_dict(payload.pop("param_index"))
    return ParameterGraph(param_index=index, **payload)


def _checksum(payload: dict) -> str:
    digest = hashlib.sha256()

    def feed(key: str, value) -> None:
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for k in sorted(value):
                feed(f"{key}.{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                feed(f"{key}[{i}]", v)
        else:
            digest.update(repr(value).encode())

    for key in sorted(k for k in payload if k != "checksum"):
        feed(key, payload[key])
    return digest.hexdigest()


_REQUIRED = ("edge_index", "edge_type", "edge_pos", "edge_value", "node_type", "node_depth", "node_index",
             "node_act", "num_param_edges", "num_tied_edges", "tied_slot", "num_nodes", "param_index")


def _check_structure(payload: dict) -> None:
    """Indices in range and counts consistent (what a metanetwork or the writer would trust)."""
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ConversionError(f"not a complete parameter graph: missing {', '.join(missing)}")
    ei, n = payload["edge_index"], payload["num_nodes"]
    if not isinstance(ei, torch.Tensor) or ei.dim() != 2 or ei.shape[0] != 2 or ei.is_floating_point():
        raise ConversionError("edge_index is not a 2 x E integer tensor")
    e = ei.shape[1]
    if not isinstance(n, int) or n < 0 or (e and (int(ei.min()) < 0 or int(ei.max()) >= n)):
        raise ConversionError(f"edge_index points outside the graph's {n} nodes")
    for key in ("edge_type", "edge_pos", "edge_value"):
        if not isinstance(payload[key], torch.Tensor) or payload[key].shape != (e,):
            raise ConversionError(f"{key} has not one entry per edge ({e})")
    for key in ("node_type", "node_depth", "node_index", "node_act"):
        if not isinstance(payload[key], torch.Tensor) or payload[key].shape != (n,):
            raise ConversionError(f"{key} has not one entry per node ({n})")
    for key in ("edge_index", "edge_type", "edge_pos", "node_type", "node_depth", "node_index", "node_act",
                "tied_slot"):
        if not isinstance(payload[key], torch.Tensor) or payload[key].is_floating_point() \
                or payload[key].is_complex():
            raise ConversionError(f"{key} is not an integer tensor")
    if not payload["edge_value"].is_floating_point():
        raise ConversionError(f"edge_value is {payload['edge_value'].dtype}, not floating point")
    for key, vocab in (("node_type", NodeType), ("edge_type", EdgeType), ("node_act", Activation)):
        values = payload[key]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) > max(vocab)):
            bad = int(values[(values < 0) | (values > max(vocab))][0])
            raise ConversionError(f"{key} holds {bad}, not a {vocab.__name__} (0 to {int(max(vocab))})")
    p, t = (int(torch.as_tensor(payload[k]).reshape(-1).sum()) for k in ("num_param_edges", "num_tied_edges"))
    slot = payload["tied_slot"]
    if p < 0 or t < 0 or p + t > e:
        raise ConversionError(f"num_param_edges ({p}) + num_tied_edges ({t}) exceed the {e} edges")
    if not isinstance(slot, torch.Tensor) or slot.numel() != t or (t and (int(slot.min()) < 0 or int(slot.max()) >= p)):
        raise ConversionError("tied_slot does not name one parameter edge per tied edge")
    _check_index(payload["param_index"], p)


def _check_index(index, p: int) -> None:
    """Parameters laid out one after another in flat order (each offset the sum of the sizes
    before it), shapes of non-negative integers, names unique, covering exactly the ``p``
    parameter edges; every other field of the type ``ParamIndex.from_dict`` reads."""
    if not isinstance(index, dict) or not isinstance(index.get("params"), list):
        raise ConversionError("param_index is malformed (no list of params)")
    offset, names = 0, set()
    for entry in index["params"]:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ConversionError(f"param_index entry {entry!r:.80} is not (name, shape, offset)")
        name, shape, at = entry
        if not isinstance(name, str) or name in names:
            raise ConversionError(f"param_index names {name!r:.80} twice or not as a string")
        names.add(name)
        if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
            raise ConversionError(f"param_index: {name} has shape {shape!r:.80}, not a list of sizes")
        if type(at) is not int or at != offset:
            raise ConversionError(f"param_index: {name} starts at {at!r:.40}; after the parameters before it, "
                                  f"it must start at {offset}")
        offset += math.prod(shape)
    if offset != p:
        raise ConversionError(f"param_index holds {offset} parameter scalars, the graph {p} parameter edges")
    kinds = {"state_keys": list, "aliases": dict, "buffers": dict, "buffer_nodes": dict}
    for key, kind in kinds.items():
        if not isinstance(index.get(key), kind):
            raise ConversionError(f"param_index.{key} is missing or not a {kind.__name__}")
    for key, kind in (("dtypes", dict), ("pins", list), ("constant_buffers", list)):
        if key in index and not isinstance(index[key], kind):
            raise ConversionError(f"param_index.{key} is not a {kind.__name__}")
    for key, value in index["buffer_nodes"].items():
        if not isinstance(value, (list, tuple)) or len(value) != 2 or type(value[0]) is not int:
            raise ConversionError(f"param_index.buffer_nodes[{key!r:.80}] is not (axis, nodes)")


def save_graph(g: ParameterGraph, path: str | os.PathLike) -> None:
    """Write ``g`` to ``path`` atomically (a crash leaves the old file or none)."""
    save_atomic(graph_to_dict(g), path)


def save_atomic(payload, path: str | os.PathLike) -> None:
    """``torch.save(payload)`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_graph(path: str | os.PathLike) -> ParameterGraph:
    """Read a graph written by :func:`save_graph` (``weights_only``: no code runs)."""
    from .limits import check_archive

    try:
        check_archive(path)
    except ConversionError as err:
        raise ConversionError(f"{path} is not a gmn parameter graph: {str(err).removeprefix(f'{path}: ')}") from None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # torch's message suggests weights_only=False: never pass that on
        what = "it holds objects other than tensors, numbers and strings" if "weights_only" in str(err) else \
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        raise ConversionError(f"{path} is not a gmn parameter graph ({what})") from None
    if not isinstance(payload, dict) or "param_index" not in payload or "edge_index" not in payload:
        raise ConversionError(f"{path} is not a gmn parameter graph")
    try:
        return graph_from_dict(payload)
    except ConversionError as err:
        raise ConversionError(f"{path}: {err}") from None
