"""Op rules, one file per op family; importing this package registers them all."""

from . import activation, attention, conv, einsum, elementwise, embedding, linear, moe, norm, reduction, shape

__all__ = ["activation", "attention", "conv", "einsum", "elementwise", "embedding", "linear", "moe", "norm",
           "reduction", "shape"]
