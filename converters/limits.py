"""The one place that bounds what a file may make gmn allocate, checked before the allocation.

A model file is hostile until read: a 200-byte ONNX file can ask ``Tile`` or ``Range`` for
billions of elements, a 35 MB DEFLATE-compressed ``.pt`` archive inflates to gigabytes inside
``torch.load``, a config can ask for billions of parameters. Every such size is computed from
the file's declarations (shapes, attribute values, zip directory entries, parameter counts)
and compared with the memory that is free *now*; a refusal is a :class:`ResourceLimitError`
(a :class:`ConversionError`, so a ``ValueError``) whose message is one line naming the file or
node and the size.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ConversionError

#: Peak memory of one conversion per byte of float32 weights, as measured by
#: ``benchmarks/convert_speed.py`` (part 3, ``benchmarks/results/convert_speed.txt``). The finished
#: graph's arrays are 26 bytes per edge (index 16, value 4, position 4, type 2): 6.5 per weight byte
#: where each scalar is one edge (CNNs), 9.2 for GPT-2 small (tied and structural edges). Beyond
#: them a conversion held 0.2 (VGG-19 from PyTorch) to 5.2 (ResNet-50 from ONNX, whose eager run at
#: 224 px keeps every activation) bytes per weight byte: 6.7 to 11.7 in all. This is the largest,
#: rounded up (VGG-19's 0.54 GiB of weights: 6.4 GiB, which it stays under).
PEAK_PER_BYTE = 12

#: The most elements one tensor computed from a file's values may have (4 GiB of float32),
#: whatever memory is free.
MAX_ELEMENTS = 1 << 30

#: The largest stride, dilation, pad or kernel size of a convolution or pooling a file may ask for.
MAX_WINDOW = 1 << 15

#: Bytes per element assumed for a tensor whose dtype is not known yet (the widest, float64).
WIDEST = 8

#: A zip entry (one storage of a ``torch.save`` archive) may inflate at most this many times
#: its compressed size: torch writes storages uncompressed (ratio 1), so anything near the
#: ratios DEFLATE reaches on zeros (1000x) is a bomb, not a checkpoint.
MAX_ZIP_RATIO = 20

#: Largest JSON file (a model folder's config.json, an index of shards) read whole.
MAX_JSON_BYTES = 16 << 20


class ResourceLimitError(ConversionError):
    """What a file asks for would not fit (or is beyond any sane model): refused before allocation."""


def free_memory() -> int:
    """Bytes of memory available now."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_elements(count: int, what: str, itemsize: int = WIDEST, factor: int = 1) -> None:
    """Refuse a tensor of ``count`` elements (``what`` names the file and node) when it is beyond
    :data:`MAX_ELEMENTS` or ``count * itemsize * factor`` bytes exceed free memory."""
    if count < 0:
        raise ResourceLimitError(f"{what}: negative size {count}")
    if count > MAX_ELEMENTS:
        raise ResourceLimitError(f"{what}: {count:,} elements, beyond gmn's limit of {MAX_ELEMENTS:,} per tensor")
    need, free = count * itemsize * factor, free_memory()
    if need > free:
        raise ResourceLimitError(f"{what}: {count:,} elements need about {_gib(need)}; only {_gib(free)} "
                                 "of memory is free")


def elements(shape: Iterable[int], what: str) -> int:
    """The element count of ``shape`` (Python ints, so no overflow), refused when a size is negative."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ResourceLimitError(f"{what}: negative size in shape {dims}")
    return math.prod(dims)


def check_shape(shape: Iterable[int], what: str, itemsize: int = WIDEST, factor: int = 1) -> None:
    """:func:`check_elements` of a shape."""
    check_elements(elements(shape, what), what, itemsize, factor)


class Budget:
    """Bytes a run may still allocate for tensors it keeps (an ONNX graph's intermediate
    results all stay alive until the end): each :meth:`spend` is checked before the allocation."""

    def __init__(self, what: str, limit: int | None = None):
        self.what = what
        self.left = free_memory() if limit is None else limit
        self.total = self.left

    def spend(self, count: int, where: str, itemsize: int = WIDEST) -> None:
        check_elements(count, f"{self.what}: {where}", itemsize)
        need = count * itemsize
        if need > self.left:
            raise ResourceLimitError(f"{self.what}: {where} needs {count:,} elements ({_gib(need)}) after "
                                     f"{_gib(self.total - self.left)} of earlier results; only {_gib(self.total)} "
                                     "of memory was free")
        self.left -= need


def conversion_bytes(count: int) -> int:
    """The peak memory of converting ``count`` weight scalars: whatever their dtype, each becomes
    an edge with a float32 value, so the estimate is per scalar (:data:`PEAK_PER_BYTE` per float32
    byte)."""
    return count * 4 * PEAK_PER_BYTE


def check_parameters(count: int, what: str) -> None:
    """A model of ``count`` parameters (from a config or a spec, counted before it is built):
    refused when converting it cannot fit in free memory."""
    need, free = conversion_bytes(count), free_memory()
    if need > free:
        raise ResourceLimitError(f"{what}: {count:,} parameters need about {_gib(need)} to build and convert; "
                                 f"only {_gib(free)} of memory is free")


def check_file_size(path: Path, limit: int, what: str = "file") -> None:
    """Refuse ``path`` by its size (``stat``, so a sparse file is never read) before parsing it."""
    size = Path(path).stat().st_size
    if size > limit:
        raise ResourceLimitError(f"{path}: a {what} of {size:,} bytes; gmn reads at most {limit:,}")


def check_archive(path: str | os.PathLike, legacy: bool = False) -> None:
    """A ``torch.save`` zip archive's declared entries, checked before ``torch.load`` inflates
    them: every entry's uncompressed size at most :data:`MAX_ZIP_RATIO` times its compressed
    size, and their total within free memory. A file in the legacy (pre-1.6, not zip) format,
    whose pickle declares storage sizes ``torch.load`` allocates before reading, is refused
    unless ``legacy``."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            if not legacy and path.is_file():
                raise ConversionError(f"{path}: not a torch.save zip archive (the legacy format, or another kind "
                                      "of file); re-save it with torch.save or as safetensors")
            return
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as err:
        raise ConversionError(f"{path}: an unreadable zip archive ({type(err).__name__})") from None
    total = 0
    for e in entries:
        if e.file_size > max(e.compress_size, 1) * MAX_ZIP_RATIO and e.file_size > 1 << 20:
            raise ResourceLimitError(f"{path}: archive entry {e.filename!r} inflates {e.compress_size:,} bytes to "
                                     f"{e.file_size:,} ({e.file_size // max(e.compress_size, 1):,}x); "
                                     "torch.save never compresses, refused as a zip bomb")
        total += e.file_size
    free = free_memory()
    if total > free:
        raise ResourceLimitError(f"{path}: its archive entries hold {total:,} bytes ({_gib(total)}); only "
                                 f"{_gib(free)} of memory is free")


#: Bytes a traced forward may allocate per element of its example input: activations of a few
#: dozen layers at that size, 8 bytes each.
EXAMPLE_FACTOR = 8 * 64


def check_example(shape: Iterable[int], what: str) -> None:
    """An example input of ``shape`` (from an option or a file's declaration): refused before it
    is made when running the model on it cannot fit in free memory."""
    check_elements(elements(shape, what), what, EXAMPLE_FACTOR)


def check_module(factory, what: str) -> None:
    """Build ``factory()`` on the meta device (no memory), count its parameters and buffers, and
    refuse (:func:`check_parameters`) before the real build when they cannot fit."""
    import torch

    with torch.device("meta"):
        model = factory()
    count = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    check_parameters(count, what)
