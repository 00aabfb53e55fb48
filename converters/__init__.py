"""converters: PyTorch / ONNX models (and PEFT adapters, via ``adapters``) <-> parameter graphs. Never imports
``gmn``."""

from .graph import ConversionError, ParameterGraph, ParamIndex
from .io import graph_from_dict, graph_to_dict, load_graph, save_graph
from .registry import register_module, register_op
from .torch_frontend import from_torch
from .vocab import Activation, EdgeType, NodeType
from .writer import edge_kinds, functional_call, parameter_edge_mask, parameter_values, to_state_dict, with_values

#: the ONNX frontend imports ``onnx`` (about a second); it loads when first used
_ONNX_NAMES = ("OptimizedOnnxWarning", "from_onnx", "load_onnx", "to_onnx")
#: PEFT adapters live in the ``adapters`` package (safetensors, optionally peft); loaded when first used
_ADAPTER_NAMES = ("from_peft", "to_peft")


def __getattr__(name: str):
    if name in _ONNX_NAMES:
        from . import onnx_frontend

        return getattr(onnx_frontend, name)
    if name in _ADAPTER_NAMES:
        import adapters

        return getattr(adapters, name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


__all__ = [
    "Activation", "ConversionError", "EdgeType", "NodeType", "ParamIndex", "ParameterGraph",
    "edge_kinds", "parameter_edge_mask",
    "OptimizedOnnxWarning", "from_onnx", "from_peft", "from_torch", "functional_call", "load_graph", "load_onnx",
    "parameter_values",
    "register_module", "to_onnx",
    "register_op", "save_graph", "graph_from_dict", "graph_to_dict", "to_peft", "to_state_dict", "with_values",
]
