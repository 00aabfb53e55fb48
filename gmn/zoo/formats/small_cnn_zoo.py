"""Unterthiner et al. 2020's Small CNN Zoo ("Predicting Neural Network Accuracy from Weights",
arXiv:2002.11448): the reader of its released files and its recipe as a build preset.

Files of one collection (google-research ``dnn_predict_accuracy/README.md``):

- ``weights.npy``: one row per checkpoint, the 4,970 parameters of the CNN flattened;
- ``metrics.csv.gz``: one row per checkpoint, same order: ``config.*`` hyperparameters,
  ``modeldir`` (the training run), ``step`` (the epoch: 0, 1, 2, 3, 20, 40, 60, 80, 86),
  ``test_accuracy``, ``test_loss``, ``train_accuracy``, ``train_loss``;
- ``layout.csv``: ``varname``, ``start_idx``, ``end_idx``, ``shape`` of every variable in a row;
  TensorFlow layouts, kernels ``(kh, kw, in, out)`` and dense kernels ``(in, out)``.

The layout is parsed, never evaluated (NFN's loader ``eval``\\ s the shape). Kernels are
transposed to torch's ``(out, in, kh, kw)`` / ``(out, in)`` as NFN's
``experiments/data_utils.py:ZooDataset`` does; a kernel is paired with the bias of its
variable scope. The split of NFN (Zhou et al. 2023, used by NFN, NG-GNN, ScaleGMN):
``weights.npy`` rows reordered by their fixed permutation file (read with pandas'
``header=None``, so the file's header line ``0`` is an index too), the rows of
``step == 86`` kept in that order, the second half (from ``int(0.5 n)``) the test set, the
first half shuffled with ``random.Random(0)`` and cut at ``int(0.8 m)`` into train and val.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..zoo import Zoo
from .common import FormatError, catalogue_runs, metrics, number, write_checkpoint, write_split

FINAL_STEP = 86  #: the last checkpoint (``config.epochs``); NFN keeps ``step == 86``
#: image side of each collection: 28 for the MNISTs, 32 for CIFAR10-GS and SVHN-GS (grey scale)
INPUT_SIDE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}
STRIDE = 2  #: ``--cnn_stride`` of train_network.py (default 2; the README: "stride 2")
METRIC_COLUMNS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")

_SHAPE = re.compile(r"^\s*[\(\[]?\s*(\d+(?:\s*,\s*\d+)*)?\s*,?\s*[\)\]]?\s*$")


def parse_shape(text: str, where: str) -> tuple[int, ...]:
    """``"(3, 3, 1, 16)"``, ``"(16,)"``, ``"[16, 10]"`` -> a tuple of ints; anything else is refused."""
    match = _SHAPE.match(text or "")
    if match is None or match.group(1) is None:
        raise FormatError(f"{where}: shape {text!r} is not a tuple of integers")
    return tuple(int(s) for s in match.group(1).split(","))


def read_layout(path: Path, row_length: int | None = None) -> list[dict]:
    """The network's layers from ``layout.csv``, in its order: ``{"scope", "kind" ("conv" or
    "dense"), "kernel": (start, end, tf_shape), "bias": (start, end, shape)}``. Checked: the
    columns, every shape, ``end - start`` equals the shape's size, the variables tile
    ``[0, row_length)`` without overlap, one kernel and one bias per scope, chained sizes."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: cannot read the layout ({err})") from None
    need = ("varname", "start_idx", "end_idx", "shape")
    if not rows or any(c not in rows[0] for c in need):
        raise FormatError(f"{path}: needs the columns {', '.join(need)}")
    scopes: dict[str, dict] = {}
    spans = []
    for i, row in enumerate(rows, start=2):
        where = f"{path} row {i}"
        name = row["varname"] or ""
        try:
            start, end = int(row["start_idx"]), int(row["end_idx"])
        except (TypeError, ValueError):
            raise FormatError(f"{where}: start_idx/end_idx {row['start_idx']!r}, {row['end_idx']!r} are not "
                              f"integers") from None
        shape = parse_shape(row["shape"], where)
        if start < 0 or end - start != math.prod(shape):
            raise FormatError(f"{where}: {name} spans [{start}, {end}) but its shape {shape} holds "
                              f"{math.prod(shape)} values")
        kind = "kernel" if name.endswith("kernel:0") else "bias" if name.endswith("bias:0") else None
        if kind is None:
            raise FormatError(f"{where}: variable {name!r} is neither a kernel:0 nor a bias:0")
        scope = scopes.setdefault(name.rsplit("/", 1)[0] if "/" in name else name[: -len(kind) - 2], {"row": i})
        if kind in scope:
            raise FormatError(f"{where}: a second {kind} in scope {name.rsplit('/', 1)[0]!r}")
        scope[kind] = (start, end, shape)
        spans.append((start, end, where))
    spans.sort()
    covered = 0
    for start, end, where in spans:
        if start != covered:
            raise FormatError(f"{where}: the variables {'overlap' if start < covered else 'leave a gap'} at "
                              f"index {min(start, covered)}")
        covered = end
    if row_length is not None and covered != row_length:
        raise FormatError(f"{path}: the layout covers {covered} values, the rows of weights.npy hold {row_length}")
    layers = []
    for name, scope in sorted(scopes.items(), key=lambda kv: kv[1]["kernel"][0] if "kernel" in kv[1] else -1):
        if "kernel" not in scope or "bias" not in scope:
            raise FormatError(f"{path}: scope {name!r} needs one kernel:0 and one bias:0")
        k, b = scope["kernel"][2], scope["bias"][2]
        if len(k) not in (2, 4) or b != (k[-1],):
            raise FormatError(f"{path}: scope {name!r} has kernel {k} and bias {b}; expected (kh, kw, in, out) or "
                              f"(in, out) and (out,)")
        layers.append({"scope": name, "kind": "conv" if len(k) == 4 else "dense", **scope})
    # NFN pairs kernels and biases by their order in the file; ours pairs by scope: same order for the zoo
    layers.sort(key=lambda layer: layer["row"])
    return layers


def layout_arch(layers: list[dict], path: Path) -> dict:
    """The ``small-cnn-zoo`` architecture a layout describes (convolutions of one width and
    kernel, then one dense layer), or a :class:`FormatError` naming ``path``."""
    convs = [layer["kernel"][2] for layer in layers if layer["kind"] == "conv"]
    denses = [layer["kernel"][2] for layer in layers if layer["kind"] == "dense"]
    if not convs or len(denses) != 1 or layers[-1]["kind"] != "dense":
        raise FormatError(f"{path}: expected convolutions then one dense layer, found "
                          f"{[layer['kind'] for layer in layers]}")
    kh, kw, channels, width = convs[0]
    for i, (a, b, cin, cout) in enumerate(convs):
        expected_in = channels if i == 0 else width
        if (a, b) != (kh, kh) or kw != kh or cout != width or cin != expected_in:
            raise FormatError(f"{path}: convolution {i} has kernel {(a, b, cin, cout)}; the Small CNN Zoo's are "
                              f"{kh}x{kh}, {expected_in} -> {width}")
    if denses[0][0] != width:
        raise FormatError(f"{path}: the dense layer reads {denses[0][0]} features, the convolutions give {width}")
    return {"family": "small-cnn-zoo", "depth": len(convs), "width": width, "kernel": kh, "stride": STRIDE,
            "padding": "valid", "channels": channels, "classes": denses[0][1]}


def row_state(row: np.ndarray, layers: list[dict]) -> dict[str, torch.Tensor]:
    """One ``weights.npy`` row as the state dict of :class:`~.architectures.SmallCNNZooNet`
    (TensorFlow ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)``, dense ``(in, out)`` -> ``(out, in)``)."""
    state = {}
    convs = [layer for layer in layers if layer["kind"] == "conv"]
    for i, layer in enumerate(layers):
        (ks, ke, kshape), (bs, be, _) = layer["kernel"], layer["bias"]
        kernel = np.asarray(row[ks:ke], dtype=np.float32).reshape(kshape)
        kernel = kernel.transpose(3, 2, 0, 1) if layer["kind"] == "conv" else kernel.T
        name = f"convs.{i}" if i < len(convs) else "head"
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{name}.bias"] = torch.from_numpy(np.asarray(row[bs:be], dtype=np.float32).copy())
    return state


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of ``metrics.csv.gz`` (gzip, or a plain CSV) as dicts of strings."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        rows = list(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: cannot read the metrics ({err})") from None
    need = ("modeldir", "step", *METRIC_COLUMNS)
    if not rows or any(c not in rows[0] for c in need):
        raise FormatError(f"{path}: needs the columns {', '.join(need)}")
    return rows


def read_order(path: Path) -> list[int]:
    """NFN's permutation file as NFN reads it (``pd.read_csv(..., header=None)``): every line an index."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        return [int(line.split(",")[-1]) for line in lines]
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: not a file of row indices, one a line ({err})") from None


def nfn_split(order: list[int], steps: list[int], final_step: int = FINAL_STEP) -> dict[str, list[int]]:
    """Rows of ``weights.npy`` in NFN's train/val/test (``experiments/data_utils.py``,
    ``ZooDataset`` and ``_split_indices_iid``): rows in ``order``, only the final step, the second
    half test, the first half shuffled by ``random.Random(0)``, 80 % train, 20 % val."""
    final = [r for r in order if steps[r] == final_step]
    cut = int(0.5 * len(final))
    trainval = list(range(cut))
    random.Random(0).shuffle(trainval)
    val_point = int(0.8 * len(trainval))
    return {"train": [final[i] for i in trainval[:val_point]], "val": [final[i] for i in trainval[val_point:]],
            "test": final[cut:]}


def _hparams(row: dict[str, str]) -> dict:
    config = {k[len("config."):]: (number(v) if number(v) is not None else v) for k, v in row.items()
              if k and k.startswith("config.")}
    return {"optimizer": f"keras.{config['optimizer']}" if "optimizer" in config else None,
            "lr": config.get("learning_rate"), "l2": config.get("l2reg"),
            "init": f"keras.{config['w_init']}" if "w_init" in config else None, "init_std": config.get("init_std"),
            "b_init": config.get("b_init"), "dropout": config.get("dropout"),
            "train_fraction": config.get("train_fraction"), "config": config}


def import_small_cnn_zoo(folder: str | Path, out: str | Path | None = None, split_file: str | Path | None = None,
                         steps: tuple[int, ...] | None = None, replace: bool = False, progress: bool = True) -> Zoo:
    """Import one collection of the Small CNN Zoo (a folder with ``weights.npy``,
    ``metrics.csv.gz``, ``layout.csv``) as a gmn zoo at ``out`` (default: ``folder``).

    One run per ``modeldir``, one checkpoint per row (``steps``: only those steps), targets from
    the metrics (``test_acc``, ``train_acc``, losses, ``gap``; extras ``step`` and ``row``).
    ``split_file``: NFN's permutation file; the NFN split is written to ``splits/nfn.json``
    (read it with :func:`~.common.split_by_index_file`). Rows with non-finite weights are
    left out, as NFN asserts and Unterthiner's notebook filters."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    files = {name: folder / name for name in ("weights.npy", "metrics.csv.gz", "layout.csv")}
    for name, path in files.items():
        if not path.is_file():
            raise FormatError(f"{folder}: no {name} (a Small CNN Zoo collection has weights.npy, metrics.csv.gz, "
                              f"layout.csv)")
    try:
        weights = np.load(files["weights.npy"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FormatError(f"{files['weights.npy']}: not a numpy array file ({err})") from None
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.floating):
        raise FormatError(f"{files['weights.npy']}: expected a 2-D float matrix, found {weights.dtype} "
                          f"{weights.shape}")
    layers = read_layout(files["layout.csv"], weights.shape[1])
    arch = layout_arch(layers, files["layout.csv"])
    rows = read_metrics(files["metrics.csv.gz"])
    if len(rows) != len(weights):
        raise FormatError(f"{files['metrics.csv.gz']}: {len(rows)} rows, weights.npy holds {len(weights)}")
    row_steps = []
    for i, row in enumerate(rows, start=2):
        try:
            row_steps.append(int(float(row["step"])))
        except ValueError:
            raise FormatError(f"{files['metrics.csv.gz']} row {i}: step {row['step']!r} is not a number") from None
    order = read_order(split_file) if split_file is not None else None
    if order is not None and any(not 0 <= r < len(rows) for r in order):
        raise FormatError(f"{split_file}: indices outside the {len(rows)} rows of weights.npy")
    if order is not None and steps and FINAL_STEP not in steps:
        raise FormatError(f"NFN's split holds the checkpoints of step {FINAL_STEP}: import that step (--steps)")
    dataset = rows[0].get("config.dataset") or folder.name
    side = INPUT_SIDE.get(dataset, 32)
    keep = set(steps) if steps else None
    runs: dict[str, dict] = {}
    paths: dict[int, str] = {}
    skipped = 0
    for r in tqdm(range(len(rows)), desc=f"importing {folder.name}", unit="ckpt", disable=not progress):
        row, step = rows[r], row_steps[r]
        if keep is not None and step not in keep:
            continue
        vector = np.asarray(weights[r])
        if not np.isfinite(vector).all():
            skipped += 1
            continue
        run_id = row["modeldir"] or f"row-{r}"
        run = runs.get(run_id)
        if run is None:
            act = row.get("config.activation") or "relu"
            spec = {**arch, "act": act, "dropout": number(row.get("config.dropout")) or 0.0,
                    "input_shape": [arch["channels"], side, side]}
            run = runs[run_id] = {"run_id": run_id, "family": "small-cnn-zoo", "arch": spec, "hparams": _hparams(row),
                                  "seed": int(number(row.get("config.random_seed")) or 0),
                                  "dataset": f"small-cnn-zoo:{dataset}", "status": "imported", "checkpoints": [],
                                  "index": len(runs)}
        rel = f"checkpoints/{run['index']:06d}/step_{step:03d}.safetensors"
        if any(c["epoch"] == step for c in run["checkpoints"]):
            raise FormatError(f"{files['metrics.csv.gz']} row {r + 2}: run {run_id!r} has step {step} twice")
        write_checkpoint(out, rel, row_state(vector, layers))
        paths[r] = rel
        run["checkpoints"].append({"epoch": step, "path": rel, "extra": {"step": step, "row": r},
                                   **metrics(row["train_accuracy"], row["test_accuracy"], row["train_loss"],
                                             row["test_loss"])})
    for run in runs.values():
        run.pop("index")
        run["checkpoints"].sort(key=lambda c: c["epoch"])
        last = run["checkpoints"][-1]
        run.update({m: last.get(m) for m in ("test_acc", "test_loss", "train_acc", "train_loss", "gap")})
    zoo = catalogue_runs(out, list(runs.values()), replace, {"imported": "small-cnn-zoo"})
    if order is not None:
        parts = nfn_split(order, row_steps)
        write_split(out, "nfn", {p: [paths[r] for r in rows_ if r in paths] for p, rows_ in parts.items()},
                    "NFN (Zhou et al. 2023) experiments/data_utils.py: permutation file, step 86, second half test, "
                    "first half shuffled by random.Random(0), 80/20 train/val")
    zoo.skipped = skipped
    return zoo


# --- the recipe as a build preset (gmn zoo build --preset small-cnn-zoo) -------------------------

#: the collection's checkpoints (epochs; 0 is the initialisation), README of dnn_predict_accuracy
CHECKPOINT_EPOCHS = (0, 1, 2, 3, 20, 40, 60, 80, 86)


def checkpoint_epochs(epochs: int) -> tuple[int, ...]:
    """The zoo's schedule for a run of ``epochs``: train_network.py's rule ("epochs < 4, every
    ``epochs_between_checkpoints`` (20 of 86), the end") with 20, 40, 60, 80 scaled by ``epochs / 86``."""
    early = {e for e in (0, 1, 2, 3) if e <= epochs}
    return tuple(sorted(early | {round(e * epochs / FINAL_STEP) for e in (20, 40, 60, 80)} | {epochs}))


#: Unterthiner et al. 2020, Sec. 3 / the released ``config.*`` columns (their ranges also in
#: google-research's approxNN config, ``ALL_HPARAM_RANGES``): activation relu/tanh; weight init
#: he_normal, orthogonal, glorot_normal, RandomNormal, TruncatedNormal (std from init_std);
#: init std log-uniform [1e-3, 0.5]; bias init zeros; dropout uniform [0, 0.7]; L2 log-uniform
#: [1e-8, 1e-2]; learning rate log-uniform [5e-4, 5e-2]; optimizer adam, rmsprop, sgd; training
#: fraction one of 0.1, 0.25, 0.5, 1.0.
SPACE = {
    "act": ("relu", "tanh"),
    "w_init": ("he_normal", "orthogonal", "glorot_normal", "RandomNormal", "TruncatedNormal"),
    "init_std": (1e-3, 0.5),
    "b_init": ("zeros",),
    "dropout": (0.0, 0.7),
    "l2": (1e-8, 1e-2),
    "lr": (5e-4, 5e-2),
    "optimizer": ("adam", "rmsprop", "sgd"),
    "train_fraction": (0.1, 0.25, 0.5, 1.0),
}


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def sample_run(rng: np.random.Generator) -> tuple[dict, dict]:
    """Architecture and hyperparameters of one run of Unterthiner's recipe (:data:`SPACE`):
    the ``small-cnn-zoo`` CNN (3 x 16 channels, 3x3, stride 2, 'valid' (see below), global average pooling,
    dense to the classes), Keras' initialisers and optimizers (``keras.*``: see
    :func:`keras_initialise`, :func:`keras_optimizer`)."""
    # 'auto': the zoo's 'valid' on MNIST's 28x28; TensorFlow's 'same' on digits' 8x8, which three
    # unpadded stride-2 convolutions would reduce to nothing (8 -> 3 -> 1 -> none)
    arch = {"family": "small-cnn-zoo", "depth": 3, "width": 16, "kernel": 3, "stride": STRIDE, "padding": "auto",
            "act": _pick(rng, SPACE["act"]), "dropout": float(rng.uniform(*SPACE["dropout"]))}
    hparams = {
        "optimizer": f"keras.{_pick(rng, SPACE['optimizer'])}",
        "lr": _log_uniform(rng, *SPACE["lr"]),
        "l2": _log_uniform(rng, *SPACE["l2"]),
        "init": f"keras.{_pick(rng, SPACE['w_init'])}",
        "init_std": _log_uniform(rng, *SPACE["init_std"]),
        "b_init": _pick(rng, SPACE["b_init"]),
        "train_fraction": _pick(rng, SPACE["train_fraction"]),
    }
    return arch, hparams


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    """Keras' fans: ``kh * kw * in`` and ``kh * kw * out`` (torch's for conv and dense alike)."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _truncated(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


@torch.no_grad()
def keras_initialise(model: nn.Module, init: str, std: float, bias: str = "zeros") -> None:
    """Keras' initialisers as tf.keras 2 defines them: ``he_normal`` and ``glorot_normal`` are
    ``VarianceScaling`` with a normal truncated at two standard deviations (std divided by
    0.8796 so the truncated spread is right; fan_in, scale 2 / fan_avg, scale 1),
    ``RandomNormal``/``TruncatedNormal`` take ``std`` (train_network.py sets ``stddev``),
    ``orthogonal`` gain 1; biases ``zeros`` (the zoo's only bias init)."""
    name = init.removeprefix("keras.")
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        w = module.weight
        fan_in, fan_out = _fans(w)
        if name == "he_normal":
            _truncated(w, math.sqrt(2.0 / fan_in) / 0.87962566103423978)
        elif name == "glorot_normal":
            _truncated(w, math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978)
        elif name == "RandomNormal":
            nn.init.normal_(w, std=std)
        elif name == "TruncatedNormal":
            _truncated(w, std)
        elif name == "orthogonal":
            nn.init.orthogonal_(w)
        else:
            raise ValueError(f"unknown Keras initialiser {init!r}; known: {', '.join(SPACE['w_init'])}")
        if module.bias is not None:
            if bias not in ("zeros", "zero"):
                raise ValueError(f"bias init {bias!r}: the Small CNN Zoo initialises biases with zeros")
            nn.init.zeros_(module.bias)


def keras_optimizer(model: nn.Module, name: str, lr: float, l2: float) -> torch.optim.Optimizer:
    """tf.keras 2's ``sgd`` (no momentum), ``rmsprop`` (rho 0.9, eps 1e-7) and ``adam``
    (eps 1e-7) with the zoo's L2: ``kernel_regularizer=l2(l2)`` adds ``l2 * |W|^2`` to the
    loss for kernels only, a gradient ``2 l2 W``; biases are not regularised."""
    kernels = [p for n, p in model.named_parameters() if n.endswith("weight")]
    others = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [{"params": kernels, "weight_decay": 2 * l2}, {"params": others, "weight_decay": 0.0}]
    name = name.removeprefix("keras.")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-7)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=1e-7)
    raise ValueError(f"unknown Keras optimizer {name!r}; known: {', '.join(SPACE['optimizer'])}")
