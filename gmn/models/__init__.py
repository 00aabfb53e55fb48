"""Metanetworks: models that read parameter graphs."""

from ..choices import KINDS, READOUTS
from .metanetwork import GraphMetanetwork, node_graphs

__all__ = ["KINDS", "READOUTS", "GraphMetanetwork", "node_graphs"]
