"""The op-rule registry: one rule per op (or module class), one small file per op family.

A rule is ``rule(ctx, node) -> TensorInfo | list[TensorInfo]``: it reads its inputs'
:class:`~converters.tensor_info.TensorInfo` from ``ctx``, adds nodes and edges through
``ctx.builder`` and returns what it knows about its output. Register a new op with::

    @converters.register_op("mylib.fancy_linear")
    def fancy_linear(ctx, node): ...

Module rules take over a whole module call (every op traced inside it) and are for
modules whose traced ops cannot be read one by one (data-dependent expert dispatch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Rule = Callable[..., object]

OP_RULES: dict[str, Rule] = {}
MODULE_RULES: list[tuple[Callable[[torch.nn.Module], bool], Rule]] = []


def op_name(target: object) -> str:
    """``aten.linear`` for ``torch.ops.aten.linear.default``; ``getitem`` for builtins."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.replace("::", ".")
    return getattr(target, "__name__", str(target))


def register_op(*names: str) -> Callable[[Rule], Rule]:
    """Register ``rule`` for the ops ``names`` (``namespace.op``, any overload)."""

    def deco(rule: Rule) -> Rule:
        for name in names:
            OP_RULES[name] = rule
        return rule

    return deco


def register_module(predicate: Callable[[torch.nn.Module], bool]) -> Callable[[Rule], Rule]:
    """Register a rule that converts every call of a module for which ``predicate`` holds."""

    def deco(rule: Rule) -> Rule:
        MODULE_RULES.append((predicate, rule))
        return rule

    return deco
