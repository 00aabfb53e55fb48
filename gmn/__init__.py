"""gmn: graph metanetworks over parameter graphs of any architecture."""

from . import architectures, models, nn
from .models import GraphMetanetwork
from .summary import summary, to_networkx
from .weightspace import symmetry

__all__ = ["GraphMetanetwork", "architectures", "models", "nn", "summary", "symmetry", "to_networkx"]
__version__ = "0.1.0"
