"""gmn: graph metanetworks over parameter graphs of any architecture."""

from . import architectures, symmetry
from .summary import summary, to_networkx

__all__ = ["architectures", "summary", "symmetry", "to_networkx"]
__version__ = "0.1.0"
