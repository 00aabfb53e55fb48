"""Merging on parameter graphs: interpolation after alignment, task-vector merges, BatchNorm
recomputation and REPAIR, the barrier of an interpolation path."""

import pytest
import torch
from torch import nn

import converters
from gmn.activations import neuron_activations
from gmn.architectures import MLP, ResNet18, TinyTransformer
from gmn.weightspace import merging
from gmn.weightspace.symmetry import random_symmetry


def _mlp(seed: int):
    torch.manual_seed(seed)
    model = MLP((8, 16, 16, 3)).eval()
    return converters.from_torch(model, (torch.randn(2, 8),)), model


def _values(g):
    return converters.parameter_values(g).double()


def test_merging_a_model_with_a_permuted_copy_gives_the_model():
    torch.manual_seed(0)
    model = TinyTransformer(dim=16, heads=4, kv_heads=2).eval()
    x = torch.randint(0, 32, (4, 6))
    g = converters.from_torch(model, (x,))
    merged = merging.align_and_interpolate([g, random_symmetry(g, seed=3), random_symmetry(g, seed=4)])
    torch.testing.assert_close(_values(merged), _values(g), rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(converters.functional_call(merged, None, x), model(x), rtol=1e-5, atol=1e-5)


def test_interpolate_weights():
    a, _ = _mlp(0)
    b, _ = _mlp(1)
    torch.testing.assert_close(_values(merging.interpolate([a, b], [1, 0])), _values(a))
    torch.testing.assert_close(_values(merging.interpolate([a, b], [1, 3])), 0.25 * _values(a) + 0.75 * _values(b))
    with pytest.raises(ValueError, match="2 models"):
        merging.interpolate([a, b], [1.0])
    c = converters.from_torch(MLP((8, 17, 16, 3)), (torch.randn(2, 8),))
    with pytest.raises(ValueError, match="one architecture"):
        merging.interpolate([a, c])


def test_task_vector_merges():
    base, _ = _mlp(0)
    t1, t2 = _mlp(1)[0], _mlp(2)[0]
    vb, v1, v2 = _values(base), _values(t1), _values(t2)
    arithmetic = merging.task_vector_merge(base, [t1, t2], "task-arithmetic", scale=0.5)
    torch.testing.assert_close(_values(arithmetic), vb + 0.5 * ((v1 - vb) + (v2 - vb)), rtol=1e-6, atol=1e-6)
    # a single task kept whole: TIES and DARE give the fine-tune back
    for method in ("ties", "dare"):
        one = merging.task_vector_merge(base, [t1], method, density=1.0)
        torch.testing.assert_close(_values(one), v1, rtol=1e-6, atol=1e-6)
    # DARE keeps about `density` of the entries, rescaled
    dare = _values(merging.task_vector_merge(base, [t1], "dare", density=0.5, seed=1)) - vb
    kept = dare != 0
    assert 0.4 < kept.double().mean() < 0.6
    torch.testing.assert_close(dare[kept], 2 * (v1 - vb)[kept], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown merge method"):
        merging.task_vector_merge(base, [t1], "average")


def test_ties_trims_elects_signs_and_averages_agreeing_entries():
    tau = torch.tensor([[3.0, -1.0, 0.1, 2.0], [1.0, 4.0, -0.2, -3.0], [2.0, -5.0, 0.3, -1.0]], dtype=torch.float64)
    merged = merging._ties(tau, density=0.5)  # per task: the 2 largest magnitudes survive
    # column 0: 3, 2 kept (1 trimmed) -> mean 2.5; column 1: 4 and -5 kept, sign -> -5;
    # column 2: all trimmed -> 0; column 3: 2 and -3 kept, sign - -> -3
    torch.testing.assert_close(merged, torch.tensor([2.5, -5.0, 0.0, -3.0], dtype=torch.float64))


def test_batchnorm_statistics_are_recomputed_on_data():
    torch.manual_seed(0)
    model = ResNet18(width=4, classes=3).eval()
    g = converters.from_torch(model, (torch.randn(2, 3, 16, 16),))
    batches = [(torch.randn(8, 3, 16, 16),) for _ in range(3)]
    fresh = merging.recompute_batchnorm(g, batches)
    reference = ResNet18(width=4, classes=3)
    reference.load_state_dict(model.state_dict())
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    reference.train()
    with torch.no_grad():
        for (x,) in batches:
            reference(x)
    for name, value in reference.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(fresh.param_index.buffers[name], value, rtol=1e-5, atol=1e-6)
    name = next(k for k in g.param_index.buffers if k.endswith("running_mean"))
    assert not torch.equal(fresh.param_index.buffers[name], g.param_index.buffers[name])


def test_repair_restores_the_endpoints_statistics():
    a, _ = _mlp(0)
    b, _ = _mlp(1)
    x = torch.randn(256, 8)
    b = merging.align_and_interpolate([a, b], [0, 1])  # b in a's frame
    merged = merging.interpolate([a, b])
    repaired = merging.repair(merged, [a, b], (x,))
    acts = {k: neuron_activations(g, None, (x,)) for k, g in (("a", a), ("b", b), ("r", repaired))}
    hidden = (repaired.node_type == int(converters.NodeType.HIDDEN)).nonzero().squeeze(1).tolist()
    checked = 0
    for u in hidden:
        if u in acts["r"]:
            target_sd = 0.5 * (acts["a"][u].std() + acts["b"][u].std())
            target_mu = 0.5 * (acts["a"][u].mean() + acts["b"][u].mean())
            torch.testing.assert_close(acts["r"][u].std(), target_sd, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(acts["r"][u].mean(), target_mu, rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked == 32  # both hidden layers


def test_barrier_of_a_path():
    a, _ = _mlp(0)
    b, _ = _mlp(1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    path = merging.interpolation_path(a, b, x, y, points=5)
    assert [r["alpha"] for r in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path[0]["loss"] == pytest.approx(merging.evaluate(a, x, y)[0])
    flat = merging.interpolation_path(a, a, x, y, points=3)
    assert merging.barrier(flat)["loss"] == pytest.approx(0.0, abs=1e-9)
    bar = merging.barrier(path)
    mid = path[2]["loss"] - 0.5 * (path[0]["loss"] + path[-1]["loss"])
    assert bar["loss"] >= mid
