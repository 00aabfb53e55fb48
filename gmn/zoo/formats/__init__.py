"""Readers of the model zoos the field publishes, into ordinary gmn zoos.

- ``small-cnn-zoo``: Unterthiner et al. 2020's Small CNN Zoo (:mod:`.small_cnn_zoo`), with
  NFN's split; also the recipe of ``gmn zoo build --preset small-cnn-zoo``.
- ``siren-inr``: the SIREN INR sets of DWSNets and NFN (:mod:`.siren_inr`), with their splits.
- ``hsg-zoo``: Schürholt et al.'s model zoos (:mod:`.hsg_zoo`), with their split.

Each writes safetensors checkpoints under the architectures of :mod:`.architectures` (zoo
families ``small-cnn-zoo``, ``siren-inr``, ``hsg-net``) and a catalogue with the format's own
targets; the anchor's split goes to ``splits/<name>.json``, read by :func:`split_by_index_file`.
Nothing here imports the readers eagerly (``gmn.zoo`` imports this package's architectures).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("small-cnn-zoo", "siren-inr", "hsg-zoo")


def import_published(folder: str | Path, format: str, out: str | Path | None = None,
                     split_file: str | Path | None = None, steps: tuple[int, ...] | None = None,
                     replace: bool = False, progress: bool = True):
    """Import the published zoo in ``folder`` (``format`` one of :data:`FORMATS`) as a gmn zoo
    at ``out`` (default: ``folder``) and return it (a :class:`~gmn.zoo.Zoo`)."""
    if format == "small-cnn-zoo":
        from .small_cnn_zoo import import_small_cnn_zoo

        return import_small_cnn_zoo(folder, out, split_file, steps, replace, progress)
    if steps:
        raise ValueError(f"--steps selects Small CNN Zoo checkpoints; {format} has no steps")
    if format == "siren-inr":
        from .siren_inr import import_siren_inr

        return import_siren_inr(folder, out, split_file, replace, progress=progress)
    if format == "hsg-zoo":
        if split_file is not None:
            raise ValueError("an HSG zoo's split is defined by its run folders (seed 42); it takes no split file")
        from .hsg_zoo import import_hsg_zoo

        return import_hsg_zoo(folder, out, replace, progress=progress)
    raise ValueError(f"unknown zoo format {format!r}; known: {', '.join(FORMATS)}")


def published_model(arch: dict, dataset: str | None = None):
    """A fresh module of a published-zoo architecture and an example input. Specs an import
    wrote carry their input shape; a built zoo's (``--preset small-cnn-zoo``) take the data set's."""
    from .architectures import build_published, example_input

    if "input_shape" in arch or arch["family"] == "siren-inr":
        return build_published(arch), example_input(arch)
    from .. import datasets

    data = datasets.load(dataset)
    return build_published(arch, data.input_shape, data.classes), data.x_test[:2]


def split_by_index_file(data, path):
    """See :func:`.common.split_by_index_file`."""
    from .common import split_by_index_file as read

    return read(data, path)
