"""The fallback tracer: run the model once and record every aten op it executes.

``torch.export`` traces symbolically and stops at data-dependent Python control flow
(``if x.sum() > 0``, ``.item()``). Recording one real execution under a
``TorchDispatchMode`` has no such limit: the graph is the ops this input ran, in the same
fx form the export frontend produces (placeholders for parameters, buffers and inputs,
``meta["val"]`` and ``meta["nn_module_stack"]`` on every op), so the same rules apply.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.fx import Graph, Node
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass
class RecordedProgram:
    graph: Graph
    to_param: dict[str, str]
    to_buffer: dict[str, str]
    user_inputs: list[str]
    constants: dict[str, Tensor] = field(default_factory=dict)  #: placeholder -> lifted constant
    #: recorded from one real run: Python control flow followed the example input's values
    eager: bool = False


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: Graph, nodes: dict[int, Node], stack: list):
        super().__init__()
        self.graph, self.nodes, self.stack = graph, nodes, stack
        self.keep: list[Tensor] = []  # tensors stay alive so their ids stay unique

    def _node_of(self, value):
        if isinstance(value, Tensor):
            node = self.nodes.get(id(value))
            if node is None:  # a tensor made outside the recorded ops: a constant
                node = self.graph.placeholder(f"const_{len(self.nodes)}")
                node.meta["val"] = value.detach()
                self._bind(value, node)
            return node
        if isinstance(value, (list, tuple)):
            return type(value)(self._node_of(v) for v in value)
        return value

    def _bind(self, value: Tensor, node: Node) -> None:
        self.nodes[id(value)] = node
        self.keep.append(value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        node = self.graph.call_function(
            func, tuple(self._node_of(a) for a in args), {k: self._node_of(v) for k, v in kwargs.items()}
        )
        node.meta["val"] = out
        node.meta["nn_module_stack"] = {f"m{i}": entry for i, entry in enumerate(self.stack)}
        if isinstance(out, Tensor):
            self._bind(out, node)
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                if isinstance(item, Tensor):
                    getter = self.graph.call_function(operator.getitem, (node, i))
                    getter.meta["val"] = item
                    getter.meta["nn_module_stack"] = node.meta["nn_module_stack"]
                    self._bind(item, getter)
        return out


def record(model: nn.Module, args: tuple) -> RecordedProgram:
    """Run ``model(*args)`` once (no grad) and return the ops it executed as an fx graph."""
    graph = Graph()
    nodes: dict[int, Node] = {}
    to_param, to_buffer, user_inputs = {}, {}, []
    for kind, named in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for i, (name, tensor) in enumerate(named):
            node = graph.placeholder(f"{kind}_{i}")
            node.meta["val"] = tensor.detach()
            nodes[id(tensor)] = node
            (to_param if kind == "p" else to_buffer)[node.name] = name
    for i, leaf in enumerate(pytree.tree_leaves(args)):
        if isinstance(leaf, Tensor):
            node = graph.placeholder(f"input_{i}")
            node.meta["val"] = leaf
            nodes[id(leaf)] = node
            user_inputs.append(node.name)
    names = {id(m): (name, type(m)) for name, m in model.named_modules()}
    stack: list = []

    def enter(mod, _inputs):
        if id(mod) in names:
            stack.append(names[id(mod)])

    def leave(mod, _inputs, _output):  # must return None: a value would replace the output
        if id(mod) in names:
            stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(enter)
    post = nn.modules.module.register_module_forward_hook(leave)
    recorder = _Recorder(graph, nodes, stack)
    try:
        with torch.enable_grad(), recorder:  # grad on: fused inference fast paths stay off
            out = model(*args)
    finally:
        pre.remove()
        post.remove()
    leaves = [recorder._node_of(t) for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
    graph.output(tuple(leaves))
    return RecordedProgram(graph, to_param, to_buffer, user_inputs, eager=True)
