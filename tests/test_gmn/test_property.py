"""Property prediction: metrics, baselines, metanetwork training that learns and resumes."""

import numpy as np
import pytest
import torch

from converters.vocab import NodeType
from gmn.data import ZooDataset, split_by_run
from gmn.tasks import TrainConfig, fit_flat_mlp, fit_metanetwork, fit_statnn, metrics
from gmn.tasks.property import statnn_features


def test_metrics():
    true = np.array([0.1, 0.5, 0.3, 0.9])
    assert metrics(true, true) == {"tau": 1.0, "r2": 1.0, "mae": 0.0}
    assert metrics(-true, true)["tau"] == -1.0
    assert metrics(np.full(4, true.mean()), true)["r2"] == pytest.approx(0.0)


def test_an_undefined_tau_is_said_so_never_zero():
    import json

    from gmn.tasks.benchmark import format_table
    from gmn.tasks.property import MethodResult, json_safe

    true = np.array([0.1, 0.5, 0.3, 0.9])
    result = MethodResult("gmn", np.full((4, 1), 0.4), true[:, None], ("acc",), 1.0)  # a collapsed model
    assert np.isnan(result.scores["acc"]["tau"])
    row = next(line for line in format_table([[result]]).splitlines() if line.startswith("gmn"))
    assert row.split()[1] == "n/a"
    assert json.loads(json.dumps(json_safe({"scores": result.scores})))["scores"]["acc"]["tau"] is None


@pytest.fixture(scope="module")
def data(tiny_zoo):
    ds = ZooDataset(tiny_zoo, targets=("test_acc", "gap"), progress=False)
    return ds, split_by_run(ds.run, ds.family, fractions=(0.2, 0.2), seed=0)


def test_statnn_features_are_per_tensor_statistics(data):
    ds, _ = data
    x = statnn_features(ds, torch.tensor([0]))
    values = ds.values[0].numpy()
    assert x.shape == (1, 7 * (1 + 8))  # all weights + 8 tensors, 7 statistics each
    assert x[0, 0] == pytest.approx(values.mean(), rel=1e-5) and x[0, 6] == pytest.approx(values.max())


def test_baselines_predict_every_test_member(data):
    ds, split = data
    for result in (fit_statnn(ds, split), fit_flat_mlp(ds, split, TrainConfig(epochs=3), progress=False)):
        assert result.pred.shape == (len(split.test), 2) and np.isfinite(result.pred).all()
        assert set(result.scores) == {"test_acc", "gap"}


@pytest.mark.parametrize("kind", ["gmn", "pna"])
def test_metanetwork_training_reduces_the_loss(data, kind):
    ds, split = data
    config = TrainConfig(epochs=30, hidden=16, layers=2, lr=3e-3, batch_size=2, patience=100)
    result = fit_metanetwork(ds, split, kind, config, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.pred.shape == (len(split.test), 2)


def test_interrupted_training_resumes(data, tmp_path):
    ds, split = data
    config = TrainConfig(epochs=4, hidden=8, layers=1, patience=100)
    full = fit_metanetwork(ds, split, "gmn", config, tmp_path / "a", progress=False)
    fit_metanetwork(ds, split, "gmn", TrainConfig(**{**config.__dict__, "epochs": 2}), tmp_path / "b", progress=False)
    resumed = fit_metanetwork(ds, split, "gmn", config, tmp_path / "b", progress=False)
    assert len(resumed.history) == 4
    assert [h["train_loss"] for h in resumed.history[:2]] == [h["train_loss"] for h in full.history[:2]]
    assert (tmp_path / "b" / "gmn.jsonl").read_text().count("\n") == 4


def test_the_recipe_learns_and_probe_features_follow_the_members(data):
    """Normalised values, attention pooling, a standardised readout and probe features: the
    loss falls, and each member's probe features are its own model's pre-activations."""
    from gmn.probes import member_probe_features
    from gmn.tasks.property import probe_inputs

    ds, split = data
    config = TrainConfig(epochs=30, hidden=16, layers=2, lr=3e-3, batch_size=4, patience=100, normalise=True,
                         pool="mean+attn", probes=4, readout_norm=True)
    result = fit_metanetwork(ds, split, "gmn", config, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0] and np.isfinite(result.pred).all()
    inputs = probe_inputs(ds, 4)
    assert inputs.shape[0] == 4 and torch.equal(inputs, probe_inputs(ds, 4))  # fixed by the seed
    features = member_probe_features(ds, inputs, torch.tensor([0, 1]))
    model, _ = ds.model(0)
    logits = model(inputs)
    template = ds.templates[ds.arch_keys[0]]
    output = (template.node_type == int(NodeType.OUTPUT)).nonzero().squeeze(1)
    output = output[template.node_index[output].argsort()]  # in the order of the logits
    torch.testing.assert_close(features[0][output].T, torch.asinh(logits), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(features[0], features[1])


def test_table_gives_each_methods_paired_difference_to_statnn():
    from gmn.tasks.benchmark import format_table
    from gmn.tasks.property import MethodResult

    true = np.arange(40, dtype=float).reshape(-1, 1)
    rng = np.random.default_rng(0)

    def result(method: str, noise: float) -> MethodResult:
        return MethodResult(method, true + rng.normal(0, noise, true.shape), true, ("test_acc",), 1.0)

    runs = [[result("statnn", 8.0), result("gmn", 2.0)] for _ in range(2)]
    lines = format_table(runs).splitlines()
    assert "- statnn" in lines[0]
    diffs = [seed[1].scores["test_acc"]["tau"] - seed[0].scores["test_acc"]["tau"] for seed in runs]
    expected = f"{np.mean(diffs):+.3f}±{np.std(diffs, ddof=1):.3f}"
    gmn_row = next(line for line in lines if line.startswith("gmn"))
    assert expected in gmn_row and np.mean(diffs) > 0
    assert "+0.000±0.000" in next(line for line in lines if line.startswith("statnn"))
