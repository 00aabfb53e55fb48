"""The field's baselines on gmn's split: NFN-NP / NFN-HNP (the nfn package's layers) and
learned input probes. Each learns, each is invariant to hidden-neuron permutations, and
NFN names why it cannot read a zoo without one MLP/CNN layout."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import converters
from gmn.data import ZooDataset, split_by_run
from gmn.tasks import TrainConfig
from gmn.tasks.benchmark import run_methods
from gmn.tasks.nfn_baseline import InvariantNFN, fit_nfn, nfn_layout
from gmn.tasks.probe_baseline import ProbeNet, fit_probe
from gmn.weightspace.symmetry import random_symmetry


@pytest.fixture(scope="module")
def data(tiny_zoo):
    ds = ZooDataset(tiny_zoo, targets=("test_acc", "gap"), progress=False)
    return ds, split_by_run(ds.run, ds.family, fractions=(0.2, 0.2), seed=0)


@pytest.fixture(scope="module")
def permuted(data):
    """Member 0's values and those of a random hidden-neuron permutation of it."""
    ds, _ = data
    g = ds.get(0)
    moved = converters.parameter_values(random_symmetry(g, seed=3))
    values = converters.parameter_values(g)
    assert not torch.equal(moved, values)
    return values, moved


def _falls(result) -> bool:
    losses = [h["train_loss"] for h in result.history]
    return losses[-1] < 0.7 * losses[0]


def test_nfn_layout_is_the_models_own_tensors(data):
    pytest.importorskip("nfn")
    ds, _ = data
    layout = nfn_layout(ds)
    model, _ = ds.model(0)
    state = model.state_dict()
    feats = layout.features(torch.stack(ds.values[:1]))
    assert [n for n, _, _ in layout.weights] == [k for k in state if k.endswith("weight")]
    for (name, _, _), (bias, _, _), (w, b) in zip(layout.weights, layout.biases, feats):
        assert w.shape[:2] == (1, 1) and torch.equal(w[0, 0], state[name]) and torch.equal(b[0, 0], state[bias])


@pytest.mark.parametrize("method", ["nfn_np", "nfn_hnp"])
def test_nfn_learns(data, method):
    pytest.importorskip("nfn")
    ds, split = data
    result = fit_nfn(ds, split, method, TrainConfig(epochs=16, patience=100), progress=False)
    assert result.method == method and result.pred.shape == (len(split.test), 2) and np.isfinite(result.pred).all()
    assert _falls(result)


@pytest.mark.parametrize("mode", ["NP", "HNP"])
def test_nfn_is_invariant_to_hidden_permutations(data, permuted, mode):
    pytest.importorskip("nfn")
    ds, _ = data
    layout = nfn_layout(ds)
    torch.manual_seed(0)
    net = InvariantNFN(layout.spec(), mode, 2, [(0.0, 0.1)] * 8).eval()
    with torch.no_grad():
        a, b = (net(layout.features(v[None])) for v in permuted)
    assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_probe_learns_and_is_invariant(data, permuted):
    ds, split = data
    result = fit_probe(ds, split, TrainConfig(epochs=12, lr=3e-3, hidden=16, batch_size=4, patience=100),
                       progress=False)
    assert result.method == "probe" and result.pred.shape == (len(split.test), 2)
    assert _falls(result)
    torch.manual_seed(0)
    net = ProbeNet(ds.templates, ds.arch_modules(), 2).eval()
    key = ds.arch_keys[0]
    with torch.no_grad():
        a, b = (net([v], [key]) for v in permuted)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a, b)


def test_mixed_zoo_skips_nfn_with_a_reason_and_probes_it(tmp_path):
    from gmn.zoo import build_zoo

    build_zoo(tmp_path / "mixed", "mixed", runs=3, epochs=2, workers=1, progress=False).close()
    ds = ZooDataset(tmp_path / "mixed", targets=("test_acc",), progress=False)
    assert len({tuple(g.param_index.params) for g in ds.templates.values()}) > 1
    results, skipped = run_methods(ds, ("nfn_hnp", "probe"), TrainConfig(epochs=2, hidden=8, patience=100),
                                   progress=False)
    assert "layout" in skipped["nfn_hnp"] and "\n" not in skipped["nfn_hnp"]
    assert [r.method for r in results] == ["probe"] and np.isfinite(results[0].pred).all()


class _Residual(nn.Module):
    """Two Linear layers of one width with a skip connection: NFN's shapes, not its layout."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(x + torch.relu(self.a(x)))


def test_nfn_refuses_what_is_not_a_chain_of_layers(monkeypatch):
    g = converters.from_torch(_Residual(), torch.randn(2, 8))
    with pytest.raises(ValueError, match="chain"):
        nfn_layout(SimpleNamespace(templates={"a": g}))
    chain = converters.from_torch(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), torch.randn(2, 8))
    assert len(nfn_layout(SimpleNamespace(templates={"a": chain})).weights) == 2
    monkeypatch.setitem(sys.modules, "nfn", None)  # the optional extra not installed
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[nfn\]\""):
        fit_nfn(SimpleNamespace(templates={"a": chain}), None)
