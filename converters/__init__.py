"""converters: PyTorch / ONNX models (and PEFT adapters, through the ``adapters`` package) <->
parameter graphs. Never imports ``gmn``.

Names load on first use (PEP 562): the graph type is a PyG ``Data`` and the ONNX frontend needs
``onnx``, together seconds of imports that a command which only writes a file or prints its help
should not pay.
"""

from __future__ import annotations

import importlib

#: each public name and the module that defines it
_SOURCES = {
    "ConversionError": "errors",
    "ParameterGraph": "graph", "ParamIndex": "graph",
    "graph_from_dict": "io", "graph_to_dict": "io", "load_graph": "io", "save_graph": "io",
    "register_module": "registry", "register_op": "registry",
    "from_torch": "torch_frontend",
    "Signature": "templates", "TemplateMismatch": "templates", "Templates": "templates", "from_state_dict": "templates",
    "code_fingerprint": "templates", "module_key": "templates", "signature": "templates",
    "state_values": "templates",
    "Activation": "vocab", "EdgeType": "vocab", "NodeType": "vocab",
    "edge_kinds": "writer", "functional_call": "writer", "parameter_edge_mask": "writer", "parameter_values": "writer",
    "to_state_dict": "writer", "with_values": "writer",
    "OptimizedOnnxWarning": "onnx_frontend", "from_onnx": "onnx_frontend", "load_onnx": "onnx_frontend",
    "to_onnx": "onnx_frontend",
}
#: PEFT adapters live in the ``adapters`` package beside this one (it builds on converters)
_ADAPTER_NAMES = ("from_peft", "to_peft")


def __getattr__(name: str):
    if name in _ADAPTER_NAMES:
        return getattr(importlib.import_module("adapters"), name)
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    if source == "registry":  # the built-in rules first, so that a user's rule for the same op overrides them
        importlib.import_module(".rules", __name__)
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES) | set(_ADAPTER_NAMES))


__all__ = sorted([*_SOURCES, *_ADAPTER_NAMES])
