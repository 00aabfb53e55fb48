"""Metanetworks: models that read parameter graphs."""

from .metanetwork import KINDS, READOUTS, GraphMetanetwork

__all__ = ["KINDS", "READOUTS", "GraphMetanetwork"]
