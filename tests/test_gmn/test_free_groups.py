"""Free groups: every permutation of their units is a symmetry (checked exactly and on the
model's float64 outputs), the classes that are not (attention's query neurons across heads)
are left out, and coordinate descent over the free groups undoes a symmetry."""

import pytest
import torch
from models import SharedTwice

import converters
from converters import with_values
from gmn.architectures import ResNet18, TinyTransformer, ViT
from gmn.weightspace.alignment import _template, weight_matching
from gmn.weightspace.symmetry import permute_values, random_symmetry
from gmn.zoo.families import build

CNN = {"family": "cnn", "depth": 3, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}
MLP = {"family": "mlp", "depth": 2, "width": 16, "act": "tanh", "dropout": 0.0}

MODELS = {
    "cnn": (lambda: build(CNN, (1, 8, 8), 10), lambda: torch.randn(16, 1, 8, 8)),
    "mlp": (lambda: build(MLP, (1, 8, 8), 10), lambda: torch.randn(16, 1, 8, 8)),
    "resnet": (lambda: ResNet18(width=4, classes=5), lambda: torch.randn(4, 3, 16, 16)),
    "vit": (lambda: ViT(), lambda: torch.randn(16, 3, 8, 8)),
    "gqa": (lambda: TinyTransformer(dim=16, heads=4, kv_heads=2), lambda: torch.randint(0, 32, (16, 6))),
    "moe": (lambda: TinyTransformer(dim=16, heads=2, experts=3), lambda: torch.randint(0, 32, (16, 6))),
}


def _converted(name: str):
    factory, example = MODELS[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter and statistic perturbed: 1/0 would hide a wrong group
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(0.1 * torch.rand(t.shape, generator=gen, dtype=t.dtype))
    x = example()
    x = x.double() if x.is_floating_point() else x
    return model, x, converters.from_torch(model, (x[:2],))


def _outputs(g, x):
    with torch.no_grad():
        return converters.functional_call(g, None, x).double()


def _moved(g, nodes: torch.Tensor, perm: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    p = torch.arange(g.num_nodes) if p is None else p
    p[nodes.reshape(-1)] = nodes[perm].reshape(-1)
    return p


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_permutation_of_free_groups_keeps_the_function(name):
    model, x, g = _converted(name)
    fg = _template(g).free
    y = _outputs(g, x)
    gen = torch.Generator().manual_seed(0)
    together = torch.arange(g.num_nodes)
    for group in range(len(fg.units)):
        nodes = fg.nodes(group)
        perm = torch.randperm(fg.units[group], generator=gen)
        alone = _moved(g, nodes, perm)
        values, buffers, _ = permute_values(g, alone)  # raises unless an automorphism
        moved = _outputs(with_values(g, values, buffers), x)
        assert float((moved - y).abs().max() / y.abs().max()) < 1e-10, f"{name}: group {group}"
        _moved(g, nodes, perm, together)
    values, buffers, _ = permute_values(g, together)
    assert float((_outputs(with_values(g, values, buffers), x) - y).abs().max() / y.abs().max()) < 1e-10


def test_plain_networks_are_all_free_groups():
    for name, groups in (("mlp", 2), ("cnn", 3), ("resnet", 12)):
        fg = _template(_converted(name)[2]).free
        assert fg.complete and len(fg.units) == groups, name


def test_free_groups_follow_the_model():
    """Groups are numbered in the order the model first uses them, so a seeded order of
    descent means the same on every graph of a layout: the MLP's groups are its hidden layers."""
    _, _, g = _converted("mlp")
    fg = _template(g).free
    for layer in range(2):
        out = torch.unique(g.edge_index[1][g.param_index.edge_ids(f"layers.{layer}.weight")])
        assert set(fg.nodes(layer).reshape(-1).tolist()) == set(out.tolist())
    fg = _template(_converted("resnet")[2]).free
    leads = [int(fg.nodes(group).min()) for group in range(len(fg.units))]
    assert leads == sorted(leads)


def test_query_neurons_across_heads_are_not_free():
    """The queries of all heads are one colour class, but permuting them across heads changes
    the model: the class must not be a free group."""
    model, x, g = _converted("vit")
    fg = _template(g).free
    nodes = torch.unique(g.edge_index[1][g.param_index.edge_ids("blocks.0.attn.q.weight")])
    assert nodes.numel() == 16  # 4 heads of 4
    cls = fg.colors[nodes]
    assert bool((cls == cls[0]).all()), "the queries should be one colour class"
    assert int(fg.group_of_class[cls[0]]) == -1
    swap = torch.arange(g.num_nodes)
    swap[nodes[0]], swap[nodes[-1]] = nodes[-1], nodes[0]  # one query from the first head, one from the last
    with pytest.raises(ValueError, match="automorphism"):
        permute_values(g, swap)


@pytest.mark.parametrize("name", ["cnn", "resnet", "vit"])
def test_coordinate_descent_undoes_a_symmetry(name):
    _, _, g = _converted(name)
    moved = random_symmetry(g, seed=3)
    p = weight_matching(g, moved)
    values, _, _ = permute_values(moved, torch.argsort(p))
    assert torch.equal(values, g.edge_value[: int(g.num_param_edges)])


def test_shared_weights_are_aligned_without_free_groups_through_them():
    torch.manual_seed(0)
    model = SharedTwice().double()
    g = converters.from_torch(model, (torch.randn(2, 3, dtype=torch.float64),))
    fg = _template(g).free
    e = g.param_index.edge_ids("shared.weight")
    shared = torch.unique(torch.cat([g.edge_index[0][e], g.edge_index[1][e]]))
    assert int(g.num_tied_edges) > 0
    assert bool((fg.group_of_class[fg.colors[shared]] == -1).all())  # nodes a shared scalar touches are never free
    moved = random_symmetry(g, seed=1)
    values, _, _ = permute_values(moved, torch.argsort(weight_matching(g, moved)))
    assert torch.equal(values, g.edge_value[: int(g.num_param_edges)])
