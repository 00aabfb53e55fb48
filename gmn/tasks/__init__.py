"""Tasks on zoos: property prediction (editing and generation build on it)."""

from .property import METHODS, MethodResult, TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn, metrics

__all__ = ["METHODS", "MethodResult", "TrainConfig", "fit_flat_mlp", "fit_metanetwork", "fit_statnn", "metrics"]
