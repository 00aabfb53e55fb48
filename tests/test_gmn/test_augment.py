"""Coordinate augmentation: the augmented weights are the model of the moved input, exactly."""

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import converters
from gmn.tasks.augment import CoordinateAffine, apply_coordinate_affine
from gmn.zoo.inr import Siren, coordinates


def _sirens(count: int) -> list[nn.Module]:
    torch.manual_seed(0)
    models = [Siren().double() for _ in range(count)]
    for m in models:  # every weight and bias moved off its initialisation (zero biases hide mistakes)
        for p in m.parameters():
            p.data += 0.05 * torch.randn_like(p)
    return models


def test_augmented_weights_compute_the_model_of_the_moved_coordinates():
    models = _sirens(3)
    x = coordinates().double()
    graphs = [converters.from_torch(m, x[:4]) for m in models]
    batch = Batch.from_data_list(graphs)
    a, t = CoordinateAffine().maps(3, torch.Generator().manual_seed(1))
    a, t = a.double(), t.double()
    moved = apply_coordinate_affine(batch, batch.edge_value, a, t)
    start = 0
    for i, (model, g) in enumerate(zip(models, graphs)):
        values = moved[start : start + g.num_edges]
        start += g.num_edges
        fresh = torch.rand(500, 2, dtype=torch.float64) * 2 - 1  # not the traced inputs
        expected = model(fresh @ a[i].T + t[i])
        torch.testing.assert_close(converters.functional_call(g, values[: int(g.num_param_edges)], fresh), expected,
                                   rtol=1e-10, atol=1e-10)
        assert (expected - model(fresh)).abs().max() > 0.1  # the map did move the input
    # only the first layer's weights and biases change
    changed = (moved != batch.edge_value).nonzero().flatten()
    first = {name for name in ("0.weight", "0.bias")}
    ids = torch.cat([g.param_index.edge_ids(n) + sum(h.num_edges for h in graphs[:k])
                     for k, g in enumerate(graphs) for n in first])
    assert set(changed.tolist()) <= set(ids.tolist()) and len(changed) > 0.9 * len(ids)


def test_a_draw_is_a_rotation_scaling_and_shift_within_its_bounds():
    aug = CoordinateAffine(rotation=30.0, translation=0.1, scale=0.2)
    a, t = aug.maps(1000, torch.Generator().manual_seed(0))
    det = torch.linalg.det(a)
    assert bool((det > 0.8**2 - 1e-6).all() & (det < 1.2**2 + 1e-6).all())
    angle = torch.atan2(a[:, 1, 0], a[:, 0, 0]).rad2deg()
    assert angle.abs().max() <= 30.0 + 1e-4 and angle.abs().max() > 28
    assert t.abs().max() <= 0.1


def test_models_that_do_not_read_two_coordinates_are_refused():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    g = converters.from_torch(mlp, torch.randn(1, 3))
    with pytest.raises(ValueError, match="2-D coordinates"):
        CoordinateAffine()(Batch.from_data_list([g]), g.edge_value, torch.Generator())
    unbiased = nn.Sequential(nn.Linear(2, 4, bias=False), nn.Tanh(), nn.Linear(4, 1))
    g = converters.from_torch(unbiased, torch.randn(1, 2))
    with pytest.raises(ValueError, match="bias"):
        CoordinateAffine()(Batch.from_data_list([g]), g.edge_value, torch.Generator())
