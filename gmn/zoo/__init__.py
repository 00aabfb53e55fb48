"""Model zoos: generate populations of trained models from packaged data, or import a
folder of checkpoints; one SQLite catalogue per zoo."""

from .catalogue import Catalogue
from .datasets import TaskData
from .families import FAMILIES, PRESETS, build
from .generate import build_zoo
from .zoo import Zoo, import_folder

__all__ = ["FAMILIES", "PRESETS", "Catalogue", "TaskData", "Zoo", "build", "build_zoo", "import_folder"]
