"""Saving and loading parameter graphs: plain tensors, atomic writes, no pickle on load."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .graph import ConversionError, ParameterGraph, ParamIndex

_SKIP = ("model", "onnx", "param_index")  # live objects: not saved


def graph_to_dict(g: ParameterGraph) -> dict:
    """Plain tensors, numbers and strings (loadable with ``weights_only``); live objects dropped."""
    payload = {k: v for k, v in g.to_dict().items() if k not in _SKIP}
    payload["param_index"] = g.param_index.to_dict()
    return payload


def graph_from_dict(payload: dict) -> ParameterGraph:
    """Inverse of :func:`graph_to_dict`."""
    payload = dict(payload)
    index = ParamIndex.from_dict(payload.pop("param_index"))
    return ParameterGraph(param_index=index, **payload)


def save_graph(g: ParameterGraph, path: str | os.PathLike) -> None:
    """Write ``g`` to ``path`` atomically (a crash leaves the old file or none)."""
    save_atomic(graph_to_dict(g), path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``: a
    crash leaves the old file or none, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
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
    return graph_from_dict(payload)
