"""Embedding tables: every row is a token node (a one-hot input), every column a neuron.

Token nodes are numbered across all lookups (as input nodes are): two tables of one size
(token and position embeddings) must not be interchangeable."""

from __future__ import annotations

from torch.fx import Node

from ..context import Context
from ..registry import register_op
from ..tensor_info import TensorInfo
from ..vocab import EdgeType, NodeType
from .common import whole


def lookup_rows(ctx: Context, table: TensorInfo) -> TensorInfo:
    """Rows of a 2-D parameter picked by token ids (``embedding`` or ``weight[idx]``)."""
    if table.param is None or table.flat.dim() != 2:
        raise ctx.fail("embedding lookup in something other than a 2-D parameter")
    rows, cols = table.flat.shape
    tokens = ctx.token_nodes(rows)
    out = ctx.new_neurons(cols, NodeType.HIDDEN, 1)
    flat = None if whole(ctx, table) else table.flat.reshape(-1)
    ctx.builder.param_edges(table.param, tokens.view(rows, 1), out.view(1, cols), EdgeType.EMBEDDING,
                            flat=flat, shape=(rows, cols))
    return ctx.neurons_along(out, ctx.shape(), -1)


@register_op("aten.embedding")
def embedding(ctx: Context, node: Node) -> TensorInfo:
    return lookup_rows(ctx, ctx.info(node.args[0]))

