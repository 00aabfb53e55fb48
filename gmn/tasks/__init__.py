"""Tasks on zoos: property prediction and weight editing."""

from .editing import EditResult, WeightEditor, fit_editor
from .property import METHODS, MethodResult, TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn, metrics

__all__ = ["METHODS", "EditResult", "MethodResult", "TrainConfig", "WeightEditor", "fit_editor", "fit_flat_mlp",
           "fit_metanetwork", "fit_statnn", "metrics"]
