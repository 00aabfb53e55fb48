"""A trained metanetwork is a file that ``gmn predict`` applies to checkpoints of any format
(the same numbers as training's own test predictions); ``--allow-module`` architectures train
and bench from the current folder; small test sets are reported as such."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gmn.cli import main
from gmn.data import ZooDataset
from gmn.tasks.property import Predictor, load_predictor, save_predictor

TARGETS = ("test_acc", "gap")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress bars may come first
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1].startswith("gmn: error: "), lines[-5:]
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tiny_zoo, tmp_path_factory):
    """``gmn train`` on the tiny zoo: probe features, value scales and target scaling all on."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", str(tiny_zoo), "--out", str(out), "--train-epochs", "2", "--hidden", "8", "--layers", "1",
                 "--probes", "4", "--device", "cpu"]) == 0
    return out


def test_predict_reproduces_training_test_predictions(trained, tiny_zoo, tmp_path, capsys):
    rows = _rows(trained / "test_predictions.csv")
    assert rows and list(rows[0]) == ["path", "test_acc_true", "test_acc_pred", "gap_true", "gap_pred"]
    data = ZooDataset(tiny_zoo, TARGETS, progress=False)
    truth = {str(tiny_zoo / m["path"]): data.y[i] for i, m in enumerate(data.members)}
    for row in rows:  # the true columns are the catalogue's targets of that checkpoint
        assert [float(row[f"{t}_true"]) for t in TARGETS] == pytest.approx(truth[row["path"]].tolist(), rel=1e-6)
    capsys.readouterr()
    paths = [row["path"] for row in rows]
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(trained), *paths, "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(Path(p).name in table for p in paths) and "test_acc" in table
    assert f"trained on {len(data)} checkpoints" in table and f"on {len(rows)} test checkpoints" in table
    predicted = _rows(out)
    assert [p["path"] for p in predicted] == paths
    for row, p in zip(rows, predicted):
        for t in TARGETS:
            assert float(p[f"{t}_pred"]) == pytest.approx(float(row[f"{t}_pred"]), rel=1e-5, abs=1e-6)
    values = [float(p["test_acc_pred"]) for p in predicted]
    assert max(values) > min(values)  # one prediction per checkpoint, not a constant


def test_every_format_gets_the_same_prediction(trained, tiny_zoo, tmp_path, capsys):
    """The first test checkpoint as ONNX, as a saved graph, and copied out of the zoo with its
    --arch: each predicted as the checkpoint itself is."""
    row = _rows(trained / "test_predictions.csv")[0]
    data = ZooDataset(tiny_zoo, TARGETS, progress=False)
    idx = next(i for i, m in enumerate(data.members) if str(tiny_zoo / m["path"]) == row["path"])
    model, example = data.model(idx)
    spec = {**data.members[idx]["arch"], "dropout": 0.0}  # identity in eval, as a user would write it
    onnx = tmp_path / "ckpt.onnx"
    torch.onnx.export(model, (example,), str(onnx), dynamo=True, optimize=False, verbose=False)
    copy = tmp_path / "copy.safetensors"
    save_file(model.state_dict(), str(copy))
    graph = tmp_path / "graph.pt"
    assert main(["convert", str(copy), "--arch", json.dumps(spec), "--input-shape", "2,1,8,8", "-o", str(graph)]) == 0
    out = tmp_path / "formats.csv"
    assert main(["predict", str(trained / "model.safetensors"), str(onnx), str(graph), "-o", str(out)]) == 0
    assert main(["predict", str(trained), str(copy), "--arch", json.dumps(spec), "-o", str(tmp_path / "arch.csv")]) == 0
    for p in _rows(out) + _rows(tmp_path / "arch.csv"):
        for t in TARGETS:
            assert float(p[f"{t}_pred"]) == pytest.approx(float(row[f"{t}_pred"]), rel=1e-5, abs=1e-6)
    # out of the zoo and without --arch: the tensors fit both activations of the zoo's CNN
    assert "name its architecture with --arch" in _error(capsys, ["predict", str(trained), str(copy)])


def test_the_library_predictor_is_self_describing(trained, tiny_zoo, tmp_path):
    predictor = load_predictor(trained / "model.safetensors")
    result = json.loads((trained / "result.json").read_text())
    config = predictor.config
    assert (predictor.kind, config.hidden, config.layers, config.probes, config.aggr, config.pool) == (
        "gmn", 8, 1, 4, "mean", "mean+attn")
    assert config.normalise and config.value_scale == 4.0 and predictor.targets == TARGETS
    assert predictor.scores == result["scores"] and predictor.input_shape == (1, 8, 8)
    data = ZooDataset(tiny_zoo, TARGETS, progress=False)
    assert predictor.zoo["members"] == len(data) and predictor.zoo["content_sha256"] == data.content_hash
    assert predictor.zoo["families"] == sorted(set(data.family)) and predictor.zoo["split"]["test"] == len(
        _rows(trained / "test_predictions.csv"))
    assert predictor.std.gt(0).all() and all(a.scales is not None and a.scales.gt(0).all()
                                             for a in predictor.architectures if a.trained)
    # predict() on the zoo's own graphs, then the same after a save/load round trip
    paths = [row["path"] for row in _rows(trained / "test_predictions.csv")]
    index = {str(tiny_zoo / m["path"]): i for i, m in enumerate(data.members)}
    graphs = [data[index[p]] for p in paths]
    expected = torch.tensor([[float(r[f"{t}_pred"]) for t in TARGETS] for r in _rows(trained / "test_predictions.csv")])
    first = torch.from_numpy(predictor.predict(graphs))
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    save_predictor(predictor, tmp_path / "again.safetensors")
    again = load_predictor(tmp_path / "again.safetensors")
    assert isinstance(again, Predictor)
    torch.testing.assert_close(torch.from_numpy(again.predict(graphs)), first, rtol=0, atol=0)


def test_what_the_model_cannot_read_is_one_line(trained, tmp_path, capsys):
    ckpt = tmp_path / "plain.safetensors"
    save_file({"w": torch.randn(3)}, str(ckpt))
    assert "not a gmn metanetwork" in _error(capsys, ["predict", str(ckpt), "cnn"])
    torch.save({"w": torch.randn(3)}, tmp_path / "pickle.pt")
    assert "not a gmn metanetwork" in _error(capsys, ["predict", str(tmp_path / "pickle.pt"), "cnn"])
    from safetensors import safe_open

    with safe_open(str(trained / "model.safetensors"), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["gmn"]), {k: f.get_tensor(k) for k in f.keys()}
    edited = tmp_path / "edited.safetensors"
    for change, message in (({"config": {**meta["config"], "width": 3}}, "malformed gmn predictor"),
                            ({"format_version": 99}, "this gmn reads format 1"),
                            ({"format": "other"}, "not a gmn metanetwork")):
        save_file(tensors, str(edited), metadata={"gmn": json.dumps({**meta, **change})})
        assert message in _error(capsys, ["predict", str(edited), "cnn"])
    del tensors["target.std"]
    save_file(tensors, str(edited), metadata={"gmn": json.dumps(meta)})
    assert "malformed gmn predictor (KeyError: 'target.std')" in _error(capsys, ["predict", str(edited), "cnn"])
    # an architecture it never saw that cannot take the zoo's inputs (probe features need them)
    assert "probe inputs of shape (1, 8, 8)" in _error(capsys, ["predict", str(trained), "resnet18"])
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    torch.onnx.export(mlp, (torch.randn(1, 5),), str(tmp_path / "mlp.onnx"), dynamo=True, optimize=False,
                      verbose=False)
    assert "never saw" in _error(capsys, ["predict", str(trained), str(tmp_path / "mlp.onnx")])


def test_an_unseen_architecture_that_runs_is_predicted_with_a_note(trained, capsys):
    spec = {"family": "cnn", "depth": 2, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}
    assert main(["predict", str(trained), json.dumps(spec)]) == 0
    captured = capsys.readouterr()
    assert "never trained on" in captured.err and "test_acc" in captured.out


NETS = ("import torch\n\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), "
        "torch.nn.ReLU(), torch.nn.Linear(12, 10))\n")


def _as_the_entry_point(monkeypatch, folder: Path) -> None:
    """sys.path as the installed ``gmn`` script has it: neither the current folder nor ''."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(folder), os.getcwd())])
    sys.modules.pop("ownnets_gmn", None)


def test_own_architecture_trains_and_benches_from_the_current_folder(tmp_path, monkeypatch, capsys):
    """20 checkpoints of a module:attr architecture: train and bench with --allow-module from
    the folder holding the module; the table shows 3 test checkpoints per seed and says what
    that is worth; the plot shows every seed of every target."""
    from gmn.zoo import import_folder

    (tmp_path / "ownnets_gmn.py").write_text(NETS)
    (tmp_path / "ckpts").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from ownnets_gmn import make

    rows, gen = ["path,test_acc,gap"], torch.Generator().manual_seed(0)
    for i in range(20):
        torch.manual_seed(i)
        save_file(make().state_dict(), str(tmp_path / "ckpts" / f"m{i}.safetensors"))
        acc, gap = torch.rand(2, generator=gen).tolist()
        rows.append(f"m{i}.safetensors,{acc:.4f},{gap:.4f}")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    import_folder("ckpts", "targets.csv", "ownnets_gmn:make", (1, 8, 8)).catalogue.close()
    _as_the_entry_point(monkeypatch, tmp_path)
    small = ["--train-epochs", "2", "--hidden", "8", "--layers", "1", "--device", "cpu"]
    assert main(["train", "ckpts", "--allow-module", "ownnets_gmn:make", "--out", "run", *small]) == 0
    assert len(_rows(tmp_path / "run" / "test_predictions.csv")) == 3
    assert "3 test checkpoints" in capsys.readouterr().err

    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    _as_the_entry_point(monkeypatch, tmp_path)
    assert main(["bench", "property", "--zoo", "ckpts", "--allow-module", "ownnets_gmn:make", "--out", "bench",
                 "--methods", "statnn,gmn", "--seeds", "2", *small]) == 0
    table = capsys.readouterr().out
    head = next(line for line in table.splitlines() if line.startswith("method"))
    assert "n test" in head
    for method in ("statnn", "gmn"):
        row = next(line for line in table.splitlines() if line.startswith(f"{method} "))
        assert row.split()[-2] == "3"  # test checkpoints per seed
    warning = next(line for line in table.splitlines() if line.startswith("warning:"))
    assert "3 test checkpoints" in warning and "below 30" in warning and "0.64" in warning
    (figure,) = figures
    assert len(figure.axes) == len(TARGETS) * 2  # a row per target, a panel per method
    for ax in figure.axes:
        assert len(ax.collections) == 2  # one scatter per seed
        assert [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1"]
    report = json.loads((tmp_path / "bench" / "property.json").read_text())
    assert {r["test_checkpoints"] for r in report["results"]} == {3}
