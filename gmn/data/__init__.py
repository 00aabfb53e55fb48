"""Data sets of parameter graphs."""

from .splits import Split, split_by_run
from .zoo_dataset import ZooDataset, architecture_key

__all__ = ["Split", "ZooDataset", "architecture_key", "split_by_run"]
