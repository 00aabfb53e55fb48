"""Layers over parameter graphs (PyG conventions: one layer per file)."""

from .encoders import EdgeEncoder, FourierFeatures, NodeEncoder
from .gmn_conv import GMNConv
from .pna_conv import PNAConv
from .scale import canonical_scales, canonicalise, decanonicalise
from .scatter import USE_TORCH_SCATTER, scatter

__all__ = ["EdgeEncoder", "FourierFeatures", "GMNConv", "NodeEncoder", "PNAConv", "USE_TORCH_SCATTER",
           "canonical_scales", "canonicalise", "decanonicalise", "scatter"]
