"""Writing files so that a crash or a full disk never leaves half of one. Light on purpose:
the command line and the zoo builder write through it without loading the graph machinery."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``: a
    crash leaves the old file or none, never half of one. A failed write is an ``OSError``
    naming the file, whether the old one is intact, and the free space when it is low."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - torch's "unexpected pos" on a full disk names no file
        raise OSError(f"could not write {path}: {type(err).__name__}: {err}{_free(path)}; "
                      f"{'the old file is unchanged' if path.exists() else 'nothing was written'}") from err


def _free(path: Path) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free on its disk)" if free < 2**30 else ""
