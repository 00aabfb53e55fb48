"""What every ``gmn`` command checks before any work, in one place: one-line argparse errors,
option validators (``type=``), and the output policy.

Output policy: an output a command writes (``-o``, ``--graphml``, the result files of an
``--out`` folder) is refused before any work when it already exists, unless ``--force``; it
is always written atomically (a temporary file in the same folder, then ``os.replace``), so
an interrupted or failed write leaves the old file or none, never half of one; a failed write
is one line naming the file.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..architectures import BUILTIN
from ..choices import POOLS

ARCH_HELP = (f"architecture of a checkpoint: a built-in name ({', '.join(BUILTIN)}), a built-in with arguments as "
             "JSON ('{\"name\": \"resnet18\", \"width\": 16, \"classes\": 10}'), a zoo family as JSON "
             "('{\"family\": \"cnn\", \"depth\": 3, ...}') or module:attr (imported from the current folder)")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the option and the problem (exit 2), not a
    usage block. Subcommand parsers inherit the class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
        self.exit(2, f"gmn: error: {text} (see {self.prog} --help)\n")


# --- option validators (argparse ``type=``) -------------------------------------------------

def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def at_least(low: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {text!r}")
        return value

    check.__name__ = f"at_least_{low}"
    return check


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A share: 0 < x <= 1."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def finite_floats(text: str) -> list[float]:
    """A comma list of finite numbers."""
    parts = [s.strip() for s in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers")
    return [finite_float(s) for s in parts]


def shape(text: str) -> tuple[int, ...]:
    """A comma list of positive integers (an input shape)."""
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers (e.g. 1,3,32,32)") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be a positive integer")
    return dims


def names(text: str) -> str:
    """A non-empty comma list of names (e.g. catalogue targets)."""
    parts = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of names (e.g. test_acc,gap)")
    return ",".join(parts)


AGGREGATIONS = ("mean", "sum", "max", "min")


def _joined(choices: tuple[str, ...], example: str) -> Callable[[str], str]:
    """A check of names from ``choices`` joined by '+', each once (e.g. ``example``)."""
    def check(text: str) -> str:
        parts = text.split("+")
        if not all(p in choices for p in parts) or len(set(parts)) != len(parts):
            raise argparse.ArgumentTypeError(f"{text!r}: give {', '.join(choices)} or several joined by + "
                                             f"(e.g. {example}), each once")
        return text
    return check


#: one GMN neighbourhood reduction or several joined by '+'
aggregations = _joined(AGGREGATIONS, "mean+max")
#: the graph readout's edge pools joined by '+'
pools = _joined(POOLS, "mean+attn")


def folder(text: str) -> str:
    """A folder to write into: refused when the path is an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def split_file(text: str) -> str:
    """A published split (``--split``): a JSON file of ``train``, ``val`` and ``test`` lists of
    checkpoint paths (``splits/<name>.json``, as the importers write it), read and checked here;
    or a bare name (``nfn``) for the zoo's own ``splits/<name>.json``. Its paths are checked
    against the zoo's members before any work (``gmn.cli._preflight``)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a split file")
    if not path.exists():
        if text and path.name == text and not path.suffix:
            return text  # a name: the zoo's splits/<name>.json, resolved with the zoo
        raise argparse.ArgumentTypeError(f"{text} does not exist (a split file, or the name of one in the zoo's "
                                         f"splits/ folder)")
    from ..zoo.formats.common import read_split

    try:
        read_split(path)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def adapter_base(text: str) -> str:
    """``--base`` of an adapter zoo: a built-in name (or its JSON) or a Hugging Face model folder
    (``gmn.zoo.adapter_import.base_record``); never ``module:attr``, which a zoo would have to import."""
    from ..zoo.adapter_import import base_record

    try:
        base_record(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--base {text}: ")) from None
    return text


def output_file(*suffixes: str) -> Callable[[str], str]:
    """A file to write: its kind by suffix, not a folder, in a folder that exists."""
    def check(text: str) -> str:
        out = Path(text)
        if out.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; name the file to write (ending in "
                                             f"{' or '.join(suffixes)})")
        if out.suffix not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: the output must end in {' or '.join(suffixes)}")
        if not out.parent.is_dir():
            raise argparse.ArgumentTypeError(f"{out.parent}: no such folder for the output {text}")
        return text

    check.__name__ = "output_file"
    return check


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace outputs that already exist (never by default)")


# --- the output policy --------------------------------------------------------------------

def refuse_existing(files: Iterable[str | Path], force: bool, inputs: Iterable[str | Path] = (),
                    folders: Iterable[str | Path] = ()) -> None:
    """Before any work: refuse output ``files`` that exist (or are folders) and output
    ``folders`` that hold files, unless ``force``; an output that is one of the ``inputs``
    says so."""
    sources = {_identity(p) for p in inputs if p and Path(p).exists()}
    for out in map(Path, files):
        if out.is_dir():
            raise ValueError(f"{out} is a folder, not a file to write")
        if (out.exists() or out.is_symlink()) and not force:
            what = "is one of this command's inputs" if _identity(out) in sources else "exists"
            raise ValueError(f"{out} {what}; gmn never replaces an output unless you pass --force")
    for out in map(Path, folders):
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} is a file, not a folder")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ValueError(f"{out} already holds outputs; gmn never replaces an output unless you pass --force")


def _identity(path: str | Path) -> tuple[int, int] | str:
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return str(Path(path).resolve())
