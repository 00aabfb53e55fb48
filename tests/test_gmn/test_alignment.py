"""Alignment on parameter graphs: undoes symmetries exactly for every layout (residual streams,
heads, GQA, experts), never changes the function, and brings independently trained models closer."""

import pytest
import torch

import converters
from gmn.architectures import MLP, ResNet18, TinyTransformer, ViT
from gmn.weightspace.alignment import activation_matching, align, aligned_distance, weight_matching
from gmn.weightspace.symmetry import random_symmetry
from gmn.zoo.families import build

CNN = {"family": "cnn", "depth": 3, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}
MLP_SPEC = {"family": "mlp", "depth": 2, "width": 16, "act": "tanh", "dropout": 0.0}


def _noisy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and buffer perturbed: 1/0 initialisations would hide wrong matches."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.1 * torch.rand(b.shape, generator=gen))
    return model.eval()


MODELS = {
    "cnn": (lambda: build(CNN, (1, 8, 8), 10), lambda: torch.randn(32, 1, 8, 8)),
    "mlp": (lambda: build(MLP_SPEC, (1, 8, 8), 10), lambda: torch.randn(32, 1, 8, 8)),
    "resnet": (lambda: ResNet18(width=4, classes=5), lambda: torch.randn(8, 3, 16, 16)),
    "vit": (lambda: ViT(), lambda: torch.randn(32, 3, 8, 8)),
    "fused-attention": (lambda: ViT(kind="fused"), lambda: torch.randn(32, 3, 8, 8)),
    "gqa": (lambda: TinyTransformer(dim=16, heads=4, kv_heads=2), lambda: torch.randint(0, 32, (32, 6))),
    "moe": (lambda: TinyTransformer(dim=16, heads=2, experts=3), lambda: torch.randint(0, 32, (32, 6))),
}


def _graph(name: str, seed: int):
    factory, example = MODELS[name]
    torch.manual_seed(seed)
    model = _noisy(factory(), seed)
    torch.manual_seed(100)
    x = example()
    return converters.from_torch(model, (x[:2],)), model, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_alignment_undoes_a_random_symmetry(name):
    g, _, x = _graph(name, 0)
    moved = random_symmetry(g, seed=5)
    n = int(g.num_param_edges)
    assert not torch.equal(moved.edge_value[:n], g.edge_value[:n])
    assert aligned_distance(g, moved) == 0.0
    by_activations = activation_matching(g, moved, (x,))
    values = align(g, moved, inputs=(x,)).edge_value[:n]
    assert torch.equal(values, g.edge_value[:n]), by_activations


@pytest.mark.parametrize("name", ["resnet", "vit", "gqa", "moe"])
def test_alignment_of_independent_models_keeps_the_function_and_moves_closer(name):
    g1, _, x = _graph(name, 0)
    g2, model2, _ = _graph(name, 1)
    n = int(g1.num_param_edges)
    aligned = align(g1, g2)
    with torch.no_grad():
        torch.testing.assert_close(converters.functional_call(aligned, None, x), model2(x), rtol=1e-5, atol=1e-5)
    a = g1.edge_value[:n].double()
    assert float(aligned.edge_value[:n].double() @ a) > float(g2.edge_value[:n].double() @ a)
    # a relabelling: the same multiset of values, and hidden neurons did move
    torch.testing.assert_close(aligned.edge_value[:n].sort().values, g2.edge_value[:n].sort().values)
    assert not torch.equal(weight_matching(g1, g2), torch.arange(g1.num_nodes))


@pytest.mark.parametrize("name", ["vit", "resnet"])  # the stream is searched / a free group
def test_a_residual_stream_can_stay_where_it_is(name):
    g1, _, x = _graph(name, 0)
    g2, model2, _ = _graph(name, 1)
    free = weight_matching(g1, g2)
    kept = weight_matching(g1, g2, keep_residual_stream=True)
    residual = g1.edge_type == int(converters.EdgeType.RESIDUAL)
    sums = torch.unique(g1.edge_index[1][residual])
    assert not torch.equal(free[sums], sums)  # the stream moves when allowed ...
    assert torch.equal(kept[sums], sums)  # ... and stays when asked
    aligned = align(g1, g2, keep_residual_stream=True)
    with torch.no_grad():
        torch.testing.assert_close(converters.functional_call(aligned, None, x), model2(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_move_with_their_channels():
    g, model, x = _graph("resnet", 0)
    moved = random_symmetry(g, seed=2)
    aligned = align(g, moved)
    for key, value in g.param_index.buffers.items():
        assert torch.equal(aligned.param_index.buffers[key], value), key


def test_alignment_needs_one_architecture():
    g1 = converters.from_torch(MLP((4, 8, 3)), (torch.randn(2, 4),))
    g2 = converters.from_torch(MLP((4, 9, 3)), (torch.randn(2, 4),))
    with pytest.raises(ValueError, match="same architecture"):
        weight_matching(g1, g2)
