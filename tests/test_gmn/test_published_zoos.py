"""The published zoos' readers (gmn.zoo.formats) on small fixtures in exactly their layouts: the
Small CNN Zoo (weights.npy rows in TensorFlow layout, metrics.csv.gz, layout.csv), the SIREN
sets of DWSNets and NFN, an HSG model zoo. A torch model built from the imported weights must
compute what the files say (checked against forwards written here, in the anchors' semantics),
and the splits must be the anchors' definitions."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from gmn.cli import main
from gmn.zoo import Zoo
from gmn.zoo.formats import import_published, split_by_index_file
from gmn.zoo.formats.small_cnn_zoo import CHECKPOINT_EPOCHS, SPACE, checkpoint_epochs, nfn_split, sample_run

# --- Small CNN Zoo -------------------------------------------------------------------------------

STEPS = (0, 1, 86)
CONFIG = ["config.activation", "config.b_init", "config.dataset", "config.dropout", "config.init_std",
          "config.l2reg", "config.learning_rate", "config.optimizer", "config.train_fraction", "config.w_init"]


def _tf_row(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, int, int, tuple]]]:
    """A random CNN (3 conv 16 ch 3x3 + dense 10) flattened as the zoo does: per layer the bias,
    then the kernel in TF layout (Unterthiner's colab: bias (0, 16), kernel (16, 160), ...)."""
    parts, layout, at = [], [], 0
    shapes = [("sequential/conv2d", (3, 3, 1, 16)), ("sequential/conv2d_1", (3, 3, 16, 16)),
              ("sequential/conv2d_2", (3, 3, 16, 16)), ("sequential/dense", (16, 10))]
    for scope, kshape in shapes:
        for name, shape in ((f"{scope}/bias:0", (kshape[-1],)), (f"{scope}/kernel:0", kshape)):
            value = rng.normal(0, 0.3, size=shape).astype(np.float32)
            parts.append(value.reshape(-1))
            layout.append((name, at, at + value.size, shape))
            at += value.size
    return np.concatenate(parts), layout


def _write_small_cnn_zoo(folder, runs: int = 4, seed: int = 0, nan_row: int | None = None):
    rng = np.random.default_rng(seed)
    rows, metrics = [], []
    layout = None
    for run in range(runs):
        act = ("relu", "tanh")[run % 2]
        for step in STEPS:
            row, layout = _tf_row(rng)
            rows.append(row)
            metrics.append({"config.activation": act, "config.b_init": "zeros", "config.dataset": "mnist",
                            "config.dropout": 0.1 * run, "config.init_std": 0.05, "config.l2reg": 1e-5,
                            "config.learning_rate": 0.01, "config.optimizer": "adam", "config.train_fraction": 0.5,
                            "config.w_init": "he_normal", "modeldir": f"/cns/zoo/mnist/{1000 + run}",
                            "step": step, "test_accuracy": rng.uniform(0.1, 0.9), "test_loss": rng.uniform(0.5, 2),
                            "train_accuracy": rng.uniform(0.1, 0.9), "train_loss": rng.uniform(0.5, 2)})
    weights = np.stack(rows)
    if nan_row is not None:
        weights[nan_row, 5] = np.nan
    np.save(folder / "weights.npy", weights)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*CONFIG, "modeldir", "step", "test_accuracy", "test_loss",
                                              "train_accuracy", "train_loss"])
    writer.writeheader()
    writer.writerows(metrics)
    (folder / "metrics.csv.gz").write_bytes(gzip.compress(text.getvalue().encode()))
    with open(folder / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        for name, start, end, shape in layout:
            w.writerow([name, start, end, str(shape)])  # "(3, 3, 1, 16)", "(16,)": Python's tuple text
    return weights, metrics, layout


def _tf_forward(row: np.ndarray, layout, x_nhwc: np.ndarray, act: str, padding: str = "valid") -> np.ndarray:
    """Keras' forward of the zoo's CNN in numpy: NHWC, Conv2D stride 2 (cross-correlation, kernel
    (kh, kw, in, out)), activation, GlobalAveragePooling2D, Dense (kernel (in, out)). 'same' as
    tf.nn.conv2d documents it: output ceil(n / s), the padding's odd pixel at the bottom/right."""
    var = {name: row[start:end].reshape(shape) for name, start, end, shape in layout}
    f = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}[act]
    x = x_nhwc.astype(np.float64)
    for scope in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = var[f"sequential/{scope}/kernel:0"], var[f"sequential/{scope}/bias:0"]
        kh, kw, _, cout = k.shape
        if padding == "same":
            pads = []
            for n, kk in ((x.shape[1], kh), (x.shape[2], kw)):
                out = -(-n // 2)
                total = max((out - 1) * 2 + kk - n, 0)
                pads.append((total // 2, total - total // 2))
            x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        oh, ow = (x.shape[1] - kh) // 2 + 1, (x.shape[2] - kw) // 2 + 1
        y = np.zeros((x.shape[0], oh, ow, cout))
        for i in range(oh):
            for j in range(ow):
                patch = x[:, 2 * i:2 * i + kh, 2 * j:2 * j + kw, :]
                y[:, i, j, :] = np.einsum("nabc,abco->no", patch, k) + b
        x = f(y)
    pooled = x.mean(axis=(1, 2))
    return pooled @ var["sequential/dense/kernel:0"] + var["sequential/dense/bias:0"]


def test_tf_same_padding_matches_tensorflow_semantics():
    from gmn.zoo.formats.architectures import SmallCNNZooNet
    from gmn.zoo.formats.small_cnn_zoo import row_state

    row, layout = _tf_row(np.random.default_rng(5))
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 1)).astype(np.float32)  # digits' 8x8: 4, 2, 1 pixels
    layers = [{"scope": n.rsplit("/", 1)[0], "kind": "conv" if len(shape) == 4 else "dense", "row": i,
               "kernel": (s, e, shape)} for i, (n, s, e, shape) in enumerate(layout) if n.endswith("kernel:0")]
    for layer in layers:
        name, s, e, shape = next(v for v in layout if v[0] == f"{layer['scope']}/bias:0")
        layer["bias"] = (s, e, shape)
    model = SmallCNNZooNet(padding="same", act="tanh")
    model.load_state_dict(row_state(row, layers))
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(got, _tf_forward(row, layout, x, "tanh", "same"), rtol=1e-4, atol=1e-4)


def _nfn_order_file(path, n: int, seed: int = 1) -> None:
    """A permutation file as NFN's repository stores it: pandas' header line ``0``, then one index a line."""
    perm = np.random.default_rng(seed).permutation(n)
    path.write_text("0\n" + "\n".join(map(str, perm)) + "\n")


def test_small_cnn_zoo_weights_compute_what_the_layout_says(tmp_path):
    src = tmp_path / "mnist"
    src.mkdir()
    weights, metrics, layout = _write_small_cnn_zoo(src)
    zoo = import_published(src, "small-cnn-zoo", out=tmp_path / "zoo", progress=False)
    members = zoo.members()
    assert len(members) == len(weights) and len({m["run_id"] for m in members}) == 4
    x = np.random.default_rng(3).normal(size=(2, 28, 28, 1)).astype(np.float32)
    for m in members:
        row = m["extra"]["row"]
        assert m["epoch"] == metrics[row]["step"] and m["test_acc"] == pytest.approx(metrics[row]["test_accuracy"])
        assert m["gap"] == pytest.approx(metrics[row]["train_accuracy"] - metrics[row]["test_accuracy"])
        assert m["hparams"]["init"] == "keras.he_normal" and m["arch"]["padding"] == "valid"
        model, example = zoo.model(m)
        assert example.shape[1:] == (1, 28, 28)
        model.load_state_dict(zoo.weights(m))
        with torch.no_grad():
            got = model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
        expected = _tf_forward(weights[row], layout, x, m["arch"]["act"])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_small_cnn_zoo_converts_and_keeps_the_nfn_split(tmp_path):
    pd = pytest.importorskip("pandas")
    src = tmp_path / "cifar"
    src.mkdir()
    weights, metrics, _ = _write_small_cnn_zoo(src, runs=10, seed=1, nan_row=None)
    order_file = tmp_path / "cifar10_split.csv"
    _nfn_order_file(order_file, len(weights))
    zoo = import_published(src, "small-cnn-zoo", out=tmp_path / "zoo", split_file=order_file, progress=False)
    # NFN's ZooDataset, step by step: rows reordered by the file read with header=None, step 86 kept
    shuffled = pd.read_csv(order_file, header=None).values.flatten()
    assert shuffled[0] == 0 and len(shuffled) == len(weights) + 1  # the header line is an index too
    steps = np.array([m["step"] for m in metrics])[shuffled]
    final_rows = shuffled[steps == 86]
    cut = int(0.5 * len(final_rows))
    trainval = list(range(cut))
    random.Random(0).shuffle(trainval)
    val_point = int(0.8 * len(trainval))
    expected = {"train": [int(final_rows[i]) for i in trainval[:val_point]],
                "val": [int(final_rows[i]) for i in trainval[val_point:]],
                "test": [int(r) for r in final_rows[cut:]]}
    assert nfn_split([int(v) for v in shuffled], [m["step"] for m in metrics]) == expected

    from gmn.data import ZooDataset

    data = ZooDataset(zoo, targets=("test_acc",), progress=False)
    split = split_by_index_file(data, "nfn")
    for part, idx in zip(("train", "val", "test"), (split.train, split.val, split.test)):
        assert [data.members[i]["extra"]["row"] for i in idx.tolist()] == expected[part]
    assert data[0].y.shape == (1, 1) and len(data.templates) == 2  # relu and tanh


def test_small_cnn_zoo_leaves_out_non_finite_rows_and_selects_steps(tmp_path):
    src = tmp_path / "svhn"
    src.mkdir()
    _write_small_cnn_zoo(src, runs=2, nan_row=2)
    zoo = import_published(src, "small-cnn-zoo", steps=(0, 86), progress=False)  # into the folder itself
    assert zoo.root == src and {m["epoch"] for m in zoo.members()} == {0, 86}
    assert 2 not in {m["extra"]["row"] for m in zoo.members()} and zoo.skipped == 1


@pytest.mark.parametrize("row, needle", [
    (("sequential/conv2d/bias:0", 0, 16, "__import__('os').system('true')"), "not a tuple of integers"),
    (("sequential/conv2d/bias:0", 0, 15, "(16,)"), "holds 16 values"),
    (("sequential/conv2d/gamma:0", 0, 16, "(16,)"), "neither a kernel:0 nor a bias:0"),
    (("sequential/conv2d/bias:0", 1, 17, "(16,)"), "leave a gap"),
])
def test_malformed_layout_is_one_line_naming_the_file(tmp_path, capsys, row, needle):
    src = tmp_path / "bad"
    src.mkdir()
    _write_small_cnn_zoo(src, runs=1)
    lines = (src / "layout.csv").read_text().splitlines()
    lines[1] = ",".join(f'"{v}"' if isinstance(v, str) and "," in v else str(v) for v in row)
    (src / "layout.csv").write_text("\n".join(lines) + "\n")
    assert main(["zoo", "import", str(src), "--format", "small-cnn-zoo", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layout.csv" in err[0] and needle in err[0]
    assert not (tmp_path / "z" / "catalogue.sqlite").exists()


def test_cli_import_small_cnn_zoo(tmp_path, capsys):
    src = tmp_path / "fmnist"
    src.mkdir()
    _write_small_cnn_zoo(src, runs=2)
    order_file = tmp_path / "order.csv"
    _nfn_order_file(order_file, 6)
    assert main(["zoo", "import", str(src), "--format", "small-cnn-zoo", "--out", str(tmp_path / "z"),
                 "--split-file", str(order_file)]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 6 checkpoints" in out and "splits/nfn.json" in out
    family_line = next(line for line in out.splitlines() if "small-cnn-zoo" in line)
    assert family_line.split() == ["small-cnn-zoo", "imported", "2", "runs"]  # columns sized to the family
    assert Zoo(tmp_path / "z").catalogue.meta()["imported"] == "small-cnn-zoo"



def test_a_published_import_is_one_transaction(tmp_path, monkeypatch):
    from gmn.zoo.catalogue import Catalogue

    src = tmp_path / "mnist"
    src.mkdir()
    _write_small_cnn_zoo(src, runs=4)
    calls, original = [], Catalogue._insert

    def dies_at_the_third(self, run):
        calls.append(run["run_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would stop it, mid-transaction
        original(self, run)

    monkeypatch.setattr(Catalogue, "_insert", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        import_published(src, "small-cnn-zoo", out=tmp_path / "zoo", progress=False)
    monkeypatch.setattr(Catalogue, "_insert", original)
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.members() == [] and zoo.catalogue.meta() == {}  # nothing of the half-done import
    zoo.catalogue.close()
    zoo = import_published(src, "small-cnn-zoo", out=tmp_path / "zoo", progress=False)  # the rerun is not refused
    assert len(zoo.catalogue.runs()) == 4 and zoo.catalogue.meta()["imported"] == "small-cnn-zoo"


_KILLED_PUBLISHED_IMPORT = """
import sys, time
from pathlib import Path
from gmn.zoo.catalogue import Catalogue
from gmn.zoo.formats import import_published
original = Catalogue._insert
def slow(self, run):
    original(self, run)
    Path(sys.argv[3]).touch()
    time.sleep(60)
Catalogue._insert = slow
import_published(sys.argv[1], "small-cnn-zoo", out=sys.argv[2], progress=False)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_a_published_import_leaves_all_or_nothing(tmp_path):
    src = tmp_path / "mnist"
    src.mkdir()
    _write_small_cnn_zoo(src, runs=3)
    out, marker = tmp_path / "zoo", tmp_path / "inserting"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISHED_IMPORT, str(src), str(out), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the import never reached the catalogue"
        os.kill(proc.pid, signal.SIGKILL)  # after the first run's insert, inside the transaction
        proc.wait()
    finally:
        proc.kill()
    zoo = Zoo(out)
    assert zoo.catalogue.runs() == [] and zoo.catalogue.meta() == {}  # rolled back
    zoo.catalogue.close()
    assert len(import_published(src, "small-cnn-zoo", out=out, progress=False).catalogue.runs()) == 3

# --- SIREN sets ------------------------------------------------------------------------------------


class DWSSiren(nn.Module):
    """DWSNets nn/inr.py's INR (2 -> 32 -> 32 -> 1): Siren layers sin(30 (W x + b)) in ``seq.0``,
    ``seq.1``, a Linear ``seq.2``, output + 0.5."""

    class Layer(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.randn(b, a) * 0.3), nn.Parameter(torch.randn(b) * 0.1)

        def forward(self, x):
            return torch.sin(30.0 * nn.functional.linear(x, self.weight, self.bias))

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(self.Layer(2, 32), self.Layer(32, 32), nn.Linear(32, 1))

    def forward(self, x):
        return self.seq(x) + 0.5


class NFNSiren(nn.Module):
    """NFN siren_utils.py's SIREN (hidden_layers=1, outermost_linear=True): ``net.0.linear``,
    ``net.1.linear`` with omega 30, ``net.2`` linear, no offset."""

    class Sine(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.linear = nn.Linear(a, b)

        def forward(self, x):
            return torch.sin(30 * self.linear(x))

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(self.Sine(2, 32), self.Sine(32, 32), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


def _coords():
    return torch.rand(50, 2) * 2 - 1


def test_dwsnets_sirens_with_their_split_file(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "mnist-inrs"
    made = {}
    for part, label, image in [("training", 3, 11), ("training", 7, 12), ("training", 1, 13), ("testing", 2, 14)]:
        folder = src / f"mnist_png_{part}_{label}_{image}" / "checkpoints"
        folder.mkdir(parents=True)
        model = DWSSiren()
        torch.save(model.state_dict(), folder / "model_final.pth")
        made[image] = (model, label)
    zoo = import_published(src, "siren-inr", out=tmp_path / "zoo", progress=False)
    coords = _coords()
    for m in zoo.members():
        theirs, label = made[m["extra"]["image"]]
        assert m["extra"]["label"] == label and m["arch"]["offset"] == 0.5 and m["arch"]["w0"] == 30.0
        model, example = zoo.model(m)
        model.load_state_dict(zoo.weights(m))
        with torch.no_grad():
            torch.testing.assert_close(model(coords), theirs(coords))
    from gmn.data import ZooDataset

    data = ZooDataset(zoo, targets=("label",), progress=False)  # the w0 = 30 sine layers and the + 0.5 convert
    assert data[0].num_edges >= 1185 and sorted(data.y[:, 0].tolist()) == [1.0, 2.0, 3.0, 7.0]
    spec = json.loads((tmp_path / "zoo" / "splits" / "dwsnets.json").read_text())
    assert len(spec["test"]) == 1 and len(spec["train"]) == 3 and spec["val"] == []  # fewer than 5,000: no val

    # their mnist_splits.json (paths relative to where they ran, labels as strings) is the split
    listed = {"train": {"path": ["dataset/mnist-inrs/mnist_png_training_3_11/checkpoints/model_final.pth",
                                 "dataset/mnist-inrs/mnist_png_training_1_13/checkpoints/model_final.pth"],
                        "label": ["3", "1"]},
              "val": {"path": ["dataset/mnist-inrs/mnist_png_training_7_12/checkpoints/model_final.pth"],
                      "label": ["7"]},
              "test": {"path": ["dataset/mnist-inrs/mnist_png_testing_2_14/checkpoints/model_final.pth"],
                       "label": ["2"]}}
    (tmp_path / "mnist_splits.json").write_text(json.dumps(listed))
    zoo = import_published(src, "siren-inr", out=tmp_path / "zoo2", split_file=tmp_path / "mnist_splits.json",
                           progress=False)
    data = type("D", (), {"members": zoo.members(), "zoo": zoo})()
    split = split_by_index_file(data, "dwsnets")
    parts = {"train": split.train, "val": split.val, "test": split.test}
    images = {p: [data.members[i]["extra"]["image"] for i in idx.tolist()] for p, idx in parts.items()}
    assert images == {"train": [11, 13], "val": [12], "test": [14]}


def test_nfn_sirens_split_by_index_with_augmentations(tmp_path):
    torch.manual_seed(1)
    src = tmp_path / "siren_mnist_wts"
    labels = {0: 4, 1: 9, 2: 4, 3: 0}
    made = {}
    for index, label in labels.items():
        for prefix in ("randinit_smaller", "randinit_smaller_aug0"):
            folder = src / f"{prefix}_{label}s"
            folder.mkdir(parents=True, exist_ok=True)
            model = NFNSiren()
            torch.save(model.state_dict(), folder / f"net{index}.pth")
            made[index, prefix.endswith("aug0")] = model
    from gmn.zoo.formats.siren_inr import import_siren_inr

    zoo = import_siren_inr(src, out=tmp_path / "zoo", split_points=(2, 3), progress=False)
    members = zoo.members()
    assert len(members) == 8 and len({m["run_id"] for m in members}) == 4  # a copy shares its image's run
    coords = _coords()
    for m in members:
        assert m["extra"]["label"] == labels[m["extra"]["image"]] and m["arch"]["offset"] == 0.0
        model, _ = zoo.model(m)
        model.load_state_dict(zoo.weights(m))
        with torch.no_grad():
            torch.testing.assert_close(model(coords), made[m["extra"]["image"], m["epoch"] == 1](coords))
    data = type("D", (), {"members": members, "zoo": zoo})()
    split = split_by_index_file(data, "nfn")
    got = {p: sorted((members[i]["extra"]["image"], members[i]["epoch"]) for i in idx.tolist())
           for p, idx in zip(("train", "val", "test"), (split.train, split.val, split.test))}
    # SirenDataset: index < 45000 (here 2) train, < 50000 (here 3) val, else test; augmentations train only
    assert got == {"train": [(0, 0), (0, 1), (1, 0), (1, 1)], "val": [(2, 0)], "test": [(3, 0)]}


# --- HSG model zoo -------------------------------------------------------------------------------


class HSGCNN(nn.Module):
    """HSG-AIML def_net.py's CNN, module list as theirs (indices shift with dropout)."""

    def __init__(self, channels_in, nlin, dropout):
        super().__init__()
        act = {"tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU}[nlin]
        layers = [nn.Conv2d(channels_in, 8, 5), nn.MaxPool2d(2, 2), act()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), act()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Conv2d(6, 4, 2), act(), nn.Flatten(), nn.Linear(36, 20), act()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Linear(20, 10)]
        self.module_list = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


def test_hsg_zoo_runs_metrics_and_split(tmp_path):
    torch.manual_seed(2)
    src = tmp_path / "mnist_zoo"
    made = {}
    names = [f"NN_tune_trainable_{i:05d}_seed={i}" for i in range(7)]
    for i, name in enumerate(names):
        run = src / name
        run.mkdir(parents=True)
        nlin, dropout = ("tanh", 0.0) if i % 2 else ("leakyrelu", 0.2)
        (run / "params.json").write_text(json.dumps({"model::type": "CNN", "model::channels_in": 1,
                                                     "model::nlin": nlin, "model::dropout": dropout,
                                                     "optim::lr": 1e-3, "seed": i}))
        lines = []
        for epoch in range(3):  # checkpoint_000000 is the initialisation: training_iteration 0
            model = HSGCNN(1, nlin, dropout)
            (run / f"checkpoint_{epoch:06d}").mkdir()
            torch.save(model.state_dict(), run / f"checkpoint_{epoch:06d}" / "checkpoints")
            made[name, epoch] = model
            lines.append(json.dumps({"train_acc": 0.1 * epoch + i / 100, "test_acc": 0.09 * epoch, "train_loss": 2.0,
                                     "test_loss": 2.1, "training_iteration": epoch, "done": False}))
        (run / "result.json").write_text("\n".join(lines) + "\n")
    zoo = import_published(src, "hsg-zoo", out=tmp_path / "zoo", progress=False)
    members = zoo.members()
    assert len(members) == 21 and {m["family"] for m in members} == {"hsg-cnn"}
    x = torch.randn(3, 1, 28, 28)
    for m in members:
        assert m["train_acc"] == pytest.approx(0.1 * m["epoch"] + int(m["run_id"][-1]) / 100)
        model, example = zoo.model(m)
        model.load_state_dict(zoo.weights(m))
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), made[m["run_id"], m["epoch"]].eval()(x))
    # dataset_epochs.py: the run folders shuffled by random.seed(42), cut 70/15/15 (we sort the names first)
    order = sorted(names)
    random.seed(42)
    random.shuffle(order)
    cut1, cut2 = int(0.7 * 7), int(0.7 * 7) + int(0.15 * 7)
    data = type("D", (), {"members": members, "zoo": zoo})()
    split = split_by_index_file(data, tmp_path / "zoo" / "splits" / "hsg.json")
    runs = [sorted({members[i]["run_id"] for i in idx.tolist()}) for idx in (split.train, split.val, split.test)]
    assert runs == [sorted(order[:cut1]), sorted(order[cut1:cut2]), sorted(order[cut2:])]


# --- the recipe as a preset ---------------------------------------------------------------------


def test_small_cnn_zoo_preset_space_and_schedule():
    assert checkpoint_epochs(86) == CHECKPOINT_EPOCHS
    assert checkpoint_epochs(8) == (0, 1, 2, 3, 4, 6, 7, 8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        arch, hp = sample_run(rng)
        assert (arch["depth"], arch["width"], arch["kernel"], arch["stride"], arch["padding"]) == (3, 16, 3, 2, "auto")
        assert arch["act"] in SPACE["act"] and 0 <= arch["dropout"] <= 0.7
        assert 5e-4 <= hp["lr"] <= 5e-2 and 1e-8 <= hp["l2"] <= 1e-2 and 1e-3 <= hp["init_std"] <= 0.5
        assert hp["train_fraction"] in (0.1, 0.25, 0.5, 1.0) and hp["b_init"] == "zeros"


def test_small_cnn_zoo_preset_trains_with_an_initial_checkpoint():
    pytest.importorskip("sklearn")
    from gmn.zoo.generate import plan
    from gmn.zoo.train import train_run

    run = plan("small-cnn-zoo", 1, "digits", 2, checkpoint_epochs(2), seed=0)[0]
    result = train_run(run)
    assert [c["epoch"] for c in result["checkpoints"]] == [0, 1, 2]
    assert set(result["checkpoints"][0]["state"]) == {"convs.0.weight", "convs.0.bias", "convs.1.weight",
                                                      "convs.1.bias", "convs.2.weight", "convs.2.bias",
                                                      "head.weight", "head.bias"}


# --- training and benchmarking on a published split (--split) ------------------------------------


@pytest.fixture(scope="module")
def nfn_zoo(tmp_path_factory):
    """A Small CNN Zoo of 10 runs imported with NFN's split: splits/nfn.json (4 train, 1 val, 5 test)."""
    base = tmp_path_factory.mktemp("nfn")
    src = base / "mnist"
    src.mkdir()
    weights, _, _ = _write_small_cnn_zoo(src, runs=10, seed=2)
    _nfn_order_file(base / "order.csv", len(weights))
    zoo = import_published(src, "small-cnn-zoo", out=base / "zoo", split_file=base / "order.csv", progress=False)
    zoo.catalogue.close()
    return base / "zoo"


_SMALL = ["--targets", "test_acc", "--train-epochs", "1", "--hidden", "8", "--layers", "1", "--device", "cpu"]


def _split_paths(data, split) -> dict[str, list[str]]:
    return {p: [data.members[i]["path"] for i in getattr(split, p).tolist()] for p in ("train", "val", "test")}


def test_train_and_bench_use_the_published_split(nfn_zoo, tmp_path, capsys, monkeypatch):
    from gmn.tasks import benchmark, property

    spec = json.loads((nfn_zoo / "splits" / "nfn.json").read_text())
    assert [len(spec[p]) for p in ("train", "val", "test")] == [4, 1, 5]
    seen, original = [], property.fit_metanetwork

    def spy(data, split, *args, **kwargs):
        seen.append(_split_paths(data, split))
        return original(data, split, *args, **kwargs)

    monkeypatch.setattr(property, "fit_metanetwork", spy)
    for given in ("nfn", str(nfn_zoo / "splits" / "nfn.json")):  # the name, or the file
        assert main(["train", str(nfn_zoo), "--split", given, "--out", str(tmp_path / given[-3:]), *_SMALL]) == 0
        assert seen.pop() == {p: spec[p] for p in ("train", "val", "test")}
    monkeypatch.setattr(benchmark, "fit_metanetwork", spy)
    out = tmp_path / "bench"
    assert main(["bench", "property", "--zoo", str(nfn_zoo), "--split", str(nfn_zoo / "splits" / "nfn.json"),
                 "--methods", "statnn,gmn", "--seeds", "2", "--out", str(out), *_SMALL]) == 0
    assert seen == [{p: spec[p] for p in ("train", "val", "test")}] * 2  # every seed on the same split
    report = json.loads((out / "property.json").read_text())
    assert report["split"].endswith("nfn.json")
    assert all(len(r["true"]) == len(spec["test"]) for r in report["results"])  # statnn too
    capsys.readouterr()


def test_bad_splits_are_one_line_before_any_work(nfn_zoo, tmp_path, capsys, monkeypatch):
    import gmn.data
    from gmn.tasks import benchmark

    def no_work(*args, **kwargs):
        raise AssertionError("the zoo was converted before the split was checked")

    monkeypatch.setattr(gmn.data, "ZooDataset", no_work)
    monkeypatch.setattr(benchmark, "ZooDataset", no_work)
    spec = json.loads((nfn_zoo / "splits" / "nfn.json").read_text())
    files = {"notjson.json": "{", "shape.json": json.dumps({"train": []}),
             "numbers.json": json.dumps({"train": [1], "val": [], "test": []}),
             "foreign.json": json.dumps({**spec, "test": ["checkpoints/999999/step_086.safetensors"]}),
             "noval.json": json.dumps({**spec, "val": []})}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    t, z = str(tmp_path), str(nfn_zoo)
    cases = [
        (["train", z, "--split", f"{t}/missing.json"], "argument --split: " + f"{t}/missing.json does not exist"),
        (["train", z, "--split", t], "is a folder"),
        (["train", z, "--split", f"{t}/notjson.json"], "not a readable split file"),
        (["train", z, "--split", f"{t}/shape.json"], "not a split file"),
        (["train", z, "--split", f"{t}/numbers.json"], "lists 1, not a checkpoint path"),
        (["train", z, "--split", f"{t}/foreign.json"], "foreign.json: 1 checkpoints of 'test' are not members"),
        (["train", z, "--split", "hsg"], "splits/hsg.json: not a readable split file"),
        (["train", z, "--split", f"{t}/noval.json"], "'val' part is empty"),
        (["train", z, "--split", "nfn", "--test-families", "small-cnn-zoo"], "--split and --test-families"),
        (["bench", "property", "--split", f"{t}/noval.json"], "give the zoo folder with --zoo"),
    ]
    for argv, needle in cases:
        out = tmp_path / "out"
        assert main([*argv, "--out", str(out)]) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("gmn: error: ") and needle in err[0], (argv, err)
        assert not out.exists()
