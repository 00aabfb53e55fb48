"""Metanetworks: models that read parameter graphs."""

from .metanetwork import KINDS, READOUTS, GraphMetanetwork, node_graphs

__all__ = ["KINDS", "READOUTS", "GraphMetanetwork", "node_graphs"]
