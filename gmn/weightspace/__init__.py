"""Operations on weight space itself: a graph's symmetries (``symmetry``: the permutations and
scalings that leave a model's function unchanged; ``free_groups``: the groups of neurons that move
together), alignment of one model to another in that group (``alignment``) and merging aligned
models (``merging``)."""

from . import symmetry

__all__ = ["symmetry"]
