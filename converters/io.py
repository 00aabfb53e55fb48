"""Saving and loading parameter graphs: plain tensors, atomic writes, no pickle on load."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .graph import ConversionError, ParameterGraph, ParamIndex

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
    if expected is not None and expected != _checksum(payload):
        raise ConversionError("checksum mismatch: the graph's contents changed after it was saved (corrupt file)")
    _check_structure(payload)
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
    p, t = (int(torch.as_tensor(payload[k]).reshape(-1).sum()) for k in ("num_param_edges", "num_tied_edges"))
    slot = payload["tied_slot"]
    if p < 0 or t < 0 or p + t > e:
        raise ConversionError(f"num_param_edges ({p}) + num_tied_edges ({t}) exceed the {e} edges")
    if not isinstance(slot, torch.Tensor) or slot.numel() != t or (t and (int(slot.min()) < 0 or int(slot.max()) >= p)):
        raise ConversionError("tied_slot does not name one parameter edge per tied edge")
    index = payload["param_index"]
    try:
        scalars = sum(math.prod(shape) for _, shape, _ in index["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConversionError(f"param_index is malformed ({err!r})") from None
    if scalars != p:
        raise ConversionError(f"param_index holds {scalars} parameter scalars, the graph {p} parameter edges")


def save_graph(g: ParameterGraph, path: str | os.PathLike) -> None:
    """Write ``g`` to ``path`` atomically (a crash leaves the old file or none)."""
    save_atomic(graph_to_dict(g), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``: a
    crash leaves the old file or none, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(payload, path: str | os.PathLike) -> None:
    """``torch.save(payload)`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_graph(path: str | os.PathLike) -> ParameterGraph:
    """Read a graph written by :func:`save_graph` (``weights_only``: no code runs)."""
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:
        raise ConversionError(f"{path} is not a gmn parameter graph: {err}") from err
    if not isinstance(payload, dict) or "param_index" not in payload or "edge_index" not in payload:
        raise ConversionError(f"{path} is not a gmn parameter graph")
    try:
        return graph_from_dict(payload)
    except ConversionError as err:
        raise ConversionError(f"{path}: {err}") from None
