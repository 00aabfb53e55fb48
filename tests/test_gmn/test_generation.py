"""Weight generation: scales, equivariant velocity, learning, sampling any architecture."""

import pytest
import torch

import converters
from gmn.data import ZooDataset
from gmn.tasks import TrainConfig
from gmn.tasks.generation import (
    WeightGenerator,
    _sorted_by_tensor,
    accuracies,
    fit_generator,
    nearest_aligned,
    parameter_scale,
    prediction_similarity,
    steps_to_accuracy,
    with_noise,
)
from gmn.weightspace.symmetry import random_symmetry
from gmn.zoo import datasets
from gmn.zoo.families import build


def _cnn_graph(width: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    arch = {"family": "cnn", "depth": 2, "width": width, "kernel": 3, "act": "relu", "dropout": 0.0}
    model = build(arch, (1, 8, 8), 10).eval()
    return converters.from_torch(model, (torch.randn(2, 1, 8, 8),)), model


def test_parameter_scale_is_inverse_sqrt_fan_in():
    model = torch.nn.Sequential(torch.nn.Linear(9, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    g = converters.from_torch(model, (torch.randn(2, 9),))
    state = converters.to_state_dict(g, parameter_scale(g))
    torch.testing.assert_close(state["0.weight"], torch.full((4, 9), 10 ** -0.5))
    torch.testing.assert_close(state["0.bias"], torch.full((4,), 10 ** -0.5))
    torch.testing.assert_close(state["2.weight"], torch.full((2, 4), 5 ** -0.5))


def test_velocity_is_equivariant_to_neuron_permutations():
    g, _ = _cnn_graph()
    torch.manual_seed(0)
    net = WeightGenerator(hidden=16, layers=2, conditioned=True).eval()
    z = torch.randn(int(g.num_param_edges))
    moved, _, edge_map = random_symmetry(converters.with_values(g, z), seed=2, return_maps=True)
    t, c = torch.tensor([0.3]), torch.tensor([0.5])
    with torch.no_grad():
        v = net(g, z, t, c)
        v_moved = net(moved, converters.parameter_values(moved), t, c)
    n = z.numel()
    torch.testing.assert_close(v_moved, v[edge_map[:n]], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v_moved, v, atol=1e-4)


def test_clean_prediction_samples_land_on_the_predicted_weights_and_learn(tiny_zoo):
    g, _ = _cnn_graph()
    target = torch.randn(int(g.num_param_edges))

    class Oracle(WeightGenerator):  # always predicts the same end point z_1
        def forward(self, g, z, t, c=None):
            return target.repeat(int(g.num_param_edges.numel()))

    out = Oracle(hidden=8, layers=1, prediction="clean").sample(g, 2, steps=5)
    torch.testing.assert_close(out, (target * parameter_scale(g)).expand(2, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        WeightGenerator(prediction="noise")
    ds = ZooDataset(tiny_zoo, progress=False)
    idx = torch.arange(len(ds))
    config = TrainConfig(epochs=10, lr=3e-3, batch_size=2, hidden=16, layers=2, patience=20)
    gen = fit_generator(ds, idx[4:], idx[4:], config, progress=False, prediction="clean")
    assert gen.history[-1]["val_loss"] < 0.9 * gen.history[0]["val_loss"]
    assert torch.isfinite(gen.sample(ds.templates[ds.arch_keys[0]], 2, steps=4)).all()


def test_generator_learns_and_samples_seen_and_unseen_architectures(tiny_zoo):
    ds = ZooDataset(tiny_zoo, progress=False)
    idx = torch.arange(len(ds))
    config = TrainConfig(epochs=10, lr=3e-3, batch_size=2, hidden=16, layers=2, patience=20)
    # the flow loss at fixed noise on the training graphs themselves: it must fall as the model fits them
    gen = fit_generator(ds, idx[4:], idx[4:], config, conditioned=True, progress=False)
    assert gen.history[-1]["val_loss"] < 0.97 * gen.history[0]["val_loss"]
    template = ds.templates[ds.arch_keys[0]]
    values = gen.sample(template, 3, steps=4, target=0.9, seed=1)
    assert values.shape == (3, template.num_parameters) and torch.isfinite(values).all()
    assert not torch.allclose(values[0], values[1])
    unseen, model = _cnn_graph(width=12)
    values = gen.sample(unseen, 2, steps=4)
    model.load_state_dict(converters.to_state_dict(unseen, values[0]))
    assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


def test_evaluation_tools_measure_copies_and_noise():
    data = datasets.load("digits")
    g, model = _cnn_graph()
    base = converters.parameter_values(g)
    reference = torch.stack([base, converters.parameter_values(_cnn_graph(seed=1)[0])])
    copy = converters.parameter_values(random_symmetry(g, seed=4)).unsqueeze(0)
    distance, index, proven = nearest_aligned(g, copy, reference)
    assert distance.item() < 1e-6 and index.item() == 0 and proven.item()
    assert prediction_similarity(model, g, copy, reference, data.x_test).item() == 1.0
    # leave-one-out: the copy may not match its own original
    distance, index, _ = nearest_aligned(g, copy, reference, exclude=torch.tensor([0]))
    assert distance.item() > 0.1 and index.item() == 1
    assert prediction_similarity(model, g, copy, reference, data.x_test, exclude=torch.tensor([0])).item() < 1.0
    noisy = with_noise(g, base.unsqueeze(0), 0.5)
    assert nearest_aligned(g, noisy, reference)[0].item() > 0.1
    acc = accuracies(model, g, reference, data.x_test, data.y_test)
    assert acc.shape == (2,) and (acc < 0.5).all()  # untrained
    assert steps_to_accuracy(model, g, base, data, target=0.0) == 0
    assert 0 < steps_to_accuracy(model, g, base, data, target=0.6, max_steps=400) <= 400


def test_random_initialisation_baseline_is_seeded_and_trains():
    data = datasets.load("digits")
    g, model = _cnn_graph()
    a = steps_to_accuracy(model, g, None, data, target=0.6, max_steps=400, seed=3)
    assert a == steps_to_accuracy(model, g, None, data, target=0.6, max_steps=400, seed=3)
    assert 0 < a <= 400


def test_paired_generator_flows_from_initialisations(tiny_zoo):
    from gmn.tasks.generation import fresh_initialisations, initial_values

    ds = ZooDataset(tiny_zoo, progress=False)
    sources = initial_values(ds)
    assert len(sources) == len(ds) and all(s.shape == v.shape for s, v in zip(sources, ds.values))
    assert not torch.equal(sources[0], ds.values[0])
    idx = torch.arange(len(ds))
    config = TrainConfig(epochs=8, lr=3e-3, batch_size=8, hidden=16, layers=2, patience=10)
    gen = fit_generator(ds, idx[4:], idx[:4], config, sources=sources, progress=False)
    assert min(h["train_loss"] for h in gen.history[1:]) < 0.95 * gen.history[0]["train_loss"]
    template = ds.templates[ds.arch_keys[0]]
    module = ds.model(0)[0]
    start = fresh_initialisations(module, template, 2, seed=5)
    assert not torch.equal(start[0], start[1])
    values = gen.sample(template, 2, steps=3, source=start)
    assert values.shape == start.shape and torch.isfinite(values).all() and not torch.allclose(values, start)


def test_nearest_aligned_finds_near_copies_the_common_frame_misses():
    # weight matching can put a model and its near-copy into different frames of reference[0]
    # (seen with trained CNNs); a frame of zeros, to which every alignment is a tie, always does
    g, _ = _cnn_graph()
    models = torch.stack([converters.parameter_values(_cnn_graph(seed=s)[0]) for s in range(1, 6)])
    reference = torch.cat([torch.zeros_like(models[:1]), models])
    noisy = with_noise(g, models, 0.1, seed=0)
    raw = (noisy - models).norm(dim=1) / models.norm(dim=1)
    copies = torch.stack([converters.parameter_values(random_symmetry(converters.with_values(g, v), seed=i))
                          for i, v in enumerate(noisy)])
    distance, index, proven = nearest_aligned(g, copies, reference, candidates=1)
    assert index.tolist() == [1, 2, 3, 4, 5] and proven.all()
    assert (distance <= raw + 1e-5).all()
    # rows already in one frame (a canonical generator's samples): no alignment to a frame first
    framed = nearest_aligned(g, noisy, reference, candidates=1, in_frame=True)
    assert framed.index.tolist() == [1, 2, 3, 4, 5] and (framed.distance <= raw + 1e-5).all()
    # a budget of one alignment: a far row's answer is an upper bound, and not claimed proven
    far = converters.parameter_values(_cnn_graph(seed=9)[0]).unsqueeze(0)
    capped, full = nearest_aligned(g, far, reference, 1, budget=1), nearest_aligned(g, far, reference)
    assert full.proven.item() and not capped.proven.item()
    assert capped.distance.item() >= full.distance.item() - 1e-6


def test_sorted_tensor_values_bound_every_alignment():
    g, _ = _cnn_graph()
    other = converters.parameter_values(_cnn_graph(seed=1)[0]).unsqueeze(0)
    moved = converters.parameter_values(random_symmetry(g, seed=3)).unsqueeze(0)
    base = converters.parameter_values(g).unsqueeze(0)
    torch.testing.assert_close(_sorted_by_tensor(g, moved), _sorted_by_tensor(g, base))
    bound = (_sorted_by_tensor(g, other) - _sorted_by_tensor(g, base)).norm() / base.norm()
    assert 0 < bound <= nearest_aligned(g, other, base)[0].item() + 1e-6
