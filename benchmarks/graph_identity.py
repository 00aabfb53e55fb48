"""Bit-identity check for converter changes: convert a fixed set of models, save every field of
every graph, and compare a later run with a saved one exactly (same dtypes, shapes, values).

A speed change to ``converters`` must not change any graph. Run ``save`` on the code before the
change and ``compare`` after it:

    python benchmarks/graph_identity.py save /tmp/before.pt [--onnx-dir /tmp/ident_onnx]
    python benchmarks/graph_identity.py compare /tmp/before.pt [--onnx-dir /tmp/ident_onnx]

The cases: every model of ``tests/models.py`` (PyTorch), ResNet-50 at 224 px, and the ONNX exports
of a few of them (exported once into ``--onnx-dir`` and reused, so both runs read the same files).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ONNX_CASES = ("mlp", "flatten_cnn", "small_cnn", "conv_zoo", "resnet18", "vit", "resnet50-224")


def _build(name: str):
    if name == "resnet50-224":
        from gmn.architectures import ResNet50

        torch.manual_seed(0)
        return ResNet50().eval(), torch.randn(1, 3, 224, 224)
    from models import build

    return build(name)


def _fields(graph) -> dict[str, object]:
    """Every field of a graph: its PyG store and its ``ParamIndex``, as plain Python and tensors."""
    out = {k: v for k, v in graph.to_dict().items() if k != "param_index"}
    out["param_index"] = graph.param_index.to_dict()
    return out


def _onnx_path(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    if not path.exists():
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        model, x = _build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=True, optimize=False, verbose=False)
    return path


def convert_all(onnx_dir: Path) -> dict[str, dict]:
    from models import ALL_CASES

    import converters

    graphs = {}
    for name in [*ALL_CASES, "resnet50-224"]:
        try:
            model, x = _build(name)
        except Exception as err:  # an optional dependency missing: say so, compare the rest
            print(f"skip {name}: {type(err).__name__}: {err}")
            continue
        graphs[f"torch/{name}"] = _fields(converters.from_torch(model, x))
    onnx_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ONNX_CASES:
            graphs[f"onnx/{name}"] = _fields(converters.from_onnx(str(_onnx_path(name, onnx_dir))))
    return graphs


def _bits(t: torch.Tensor) -> torch.Tensor:
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}
    return t.contiguous().view(ints[t.element_size()]) if t.is_floating_point() else t


def _diff(a: object, b: object, where: str) -> list[str]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: tensor against {type(b).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} against {b.dtype}{tuple(b.shape)}"]
        # bits, not numbers: NaN equals NaN, -0.0 differs from 0.0
        same = torch.equal(_bits(a), _bits(b))
        return [] if same else [f"{where}: values differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where}: keys {sorted(a)} against {sorted(b)}"]
        return [d for k in a for d in _diff(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{where}[{i}]")]
    return [] if (type(a) is type(b) and a == b) else [f"{where}: {a!r} against {b!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "compare"))
    parser.add_argument("file")
    parser.add_argument("--onnx-dir", default="/tmp/gmn_identity_onnx")
    args = parser.parse_args()
    torch.set_num_threads(1)
    graphs = convert_all(Path(args.onnx_dir))
    if args.action == "save":
        torch.save(graphs, args.file)
        print(f"saved {len(graphs)} graphs to {args.file}")
        return
    saved = torch.load(args.file, weights_only=False)
    problems = [] if list(saved) == list(graphs) else [f"cases {list(saved)} against {list(graphs)}"]
    problems += [d for k in saved if k in graphs for d in _diff(saved[k], graphs[k], k)]
    print("\n".join(problems) or f"all {len(graphs)} graphs bit-identical")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
