"""gmn: graph metanetworks over parameter graphs of any architecture.

Names load on first use (PEP 562): the metanetworks need PyTorch Geometric, seconds of imports
that ``gmn --help`` or ``gmn zoo build`` should not pay.
"""

from __future__ import annotations

import importlib

from .summary import summary, to_networkx  # light, and a function named like its module: bound first

#: the names that load on first use: modules, and the metanetwork class
_MODULES = {"architectures": ".architectures", "models": ".models", "nn": ".nn", "symmetry": ".weightspace.symmetry"}
_SOURCES = {**_MODULES, "GraphMetanetwork": ".models"}
__version__ = "0.1.0"


def __getattr__(name: str):
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'gmn' has no attribute {name!r}")
    module = importlib.import_module(source, __name__)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


__all__ = ["summary", "to_networkx", *sorted(_SOURCES)]
