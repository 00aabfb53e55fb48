"""Layers over parameter graphs (PyG conventions: one layer per file)."""

from .encoders import EdgeEncoder, FourierFeatures, NodeEncoder
from .gmn_conv import GMNConv
from .pna_conv import PNAConv
from .relational_transformer import RelationalTransformerConv
from .scale import canonical_scales, canonicalise, decanonicalise
from .scatter import USE_TORCH_SCATTER, scatter

__all__ = ["EdgeEncoder", "FourierFeatures", "GMNConv", "NodeEncoder", "PNAConv", "RelationalTransformerConv",
           "USE_TORCH_SCATTER", "canonical_scales", "canonicalise", "decanonicalise", "scatter"]
