"""Tasks on zoos: property prediction (and applying a trained predictor) and weight editing."""

from ..choices import METHODS
from .editing import EditResult, WeightEditor, fit_editor
from .property import (
    MethodResult,
    Predictor,
    TrainConfig,
    fit_flat_mlp,
    fit_metanetwork,
    fit_statnn,
    load_predictor,
    metrics,
    save_predictor,
)

__all__ = ["METHODS", "EditResult", "MethodResult", "Predictor", "TrainConfig", "WeightEditor", "fit_editor",
           "fit_flat_mlp", "fit_metanetwork", "fit_statnn", "load_predictor", "metrics", "save_predictor"]
