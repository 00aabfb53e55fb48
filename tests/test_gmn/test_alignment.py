"""Weight matching on parameter graphs: undoes symmetries exactly, never changes the function."""

import pytest
import torch

import converters
from gmn.alignment import align, aligned_distance, weight_matching
from gmn.symmetry import random_symmetry
from gmn.zoo.families import build

CNN = {"family": "cnn", "depth": 3, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}
MLP = {"family": "mlp", "depth": 2, "width": 16, "act": "tanh", "dropout": 0.0}


def _graph(arch: dict, seed: int):
    torch.manual_seed(seed)
    model = build(arch, (1, 8, 8), 10).eval()
    return converters.from_torch(model, (torch.randn(2, 1, 8, 8),)), model


@pytest.mark.parametrize("arch", [CNN, MLP])
def test_alignment_undoes_a_random_permutation(arch):
    g, _ = _graph(arch, 0)
    moved = random_symmetry(g, seed=5)
    n = int(g.num_param_edges)
    assert not torch.equal(moved.edge_value[:n], g.edge_value[:n])
    assert aligned_distance(g, moved) == 0.0


@pytest.mark.parametrize("arch", [CNN, MLP])
def test_alignment_keeps_the_function_and_brings_models_closer(arch):
    g1, _ = _graph(arch, 0)
    g2, model2 = _graph(arch, 1)
    n = int(g1.num_param_edges)
    aligned = align(g1, g2)
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(converters.functional_call(aligned, None, x), model2(x), rtol=1e-5, atol=1e-5)
    plain = float((g2.edge_value[:n] - g1.edge_value[:n]).norm() / g1.edge_value[:n].norm())
    assert aligned_distance(g1, g2) < plain - 0.05
    # the permutation is a relabelling: the same multiset of values
    torch.testing.assert_close(aligned.edge_value[:n].sort().values, g2.edge_value[:n].sort().values)


def test_alignment_needs_one_architecture():
    g1, _ = _graph(CNN, 0)
    g2, _ = _graph({**CNN, "width": 12}, 0)
    with pytest.raises(ValueError, match="same architecture"):
        weight_matching(g1, g2)
