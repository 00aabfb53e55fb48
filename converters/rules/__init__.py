"""Op rules, one file per op family; importing this package registers them all."""

from . import (
    activation,
    attention,
    conv,
    einsum,
    elementwise,
    embedding,
    linear,
    moe,
    norm,
    recurrent,
    reduction,
    shape,
    weight_norm,
)

__all__ = ["activation", "attention", "conv", "einsum", "elementwise", "embedding", "linear", "moe", "norm",
           "recurrent", "reduction", "shape", "weight_norm"]
