"""Data sets of parameter graphs."""

from .splits import Split, split_by_run
from .zoo_dataset import ZooDataset

__all__ = ["Split", "ZooDataset", "split_by_run"]
