"""Probe features: exact activations, equivariance under neuron permutations, use as inputs."""

import pytest
import torch
from torch import nn

import converters
from converters.vocab import NodeType
from gmn import symmetry
from gmn.models import GraphMetanetwork
from gmn.probes import neuron_channels, probe_features


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)), torch.randn(7, 3)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    return model, torch.randn(5, 2, 6, 6)


def test_features_are_the_pre_activations_of_every_neuron():
    model, x = _mlp()
    g = converters.from_torch(model, x[:1])
    f = probe_features(g, model, x)
    assert f.shape == (g.num_nodes, 7)
    hidden1 = model[0](x)
    for j, node in enumerate(neuron_channels(g, model)["0"].tolist()):
        assert torch.allclose(f[node], hidden1[:, j], atol=1e-6)
    outputs = (g.node_type == int(NodeType.OUTPUT)).nonzero().squeeze(1)
    assert torch.allclose(f[outputs[g.node_index[outputs].argsort()]], model(x).detach().T, atol=1e-6)
    inputs = (g.node_type == int(NodeType.INPUT)).nonzero().squeeze(1)
    assert torch.allclose(f[inputs[g.node_index[inputs].argsort()]], x.T)
    assert f[g.node_type == int(NodeType.BIAS)].abs().sum() == 0


def test_conv_features_are_spatial_channel_means_and_values_replace_the_weights():
    model, x = _cnn()
    g = converters.from_torch(model, x[:1])
    f = probe_features(g, model, x)
    conv = model[0](x).mean((2, 3))
    for j, node in enumerate(neuron_channels(g, model)["0"].tolist()):
        assert torch.allclose(f[node], conv[:, j], atol=1e-5)
    doubled = probe_features(g, model, x, 2 * converters.parameter_values(g))
    first = neuron_channels(g, model)["0"]
    assert torch.allclose(doubled[first], 2 * f[first], atol=1e-5)  # conv is linear in (weight, bias)


@pytest.mark.parametrize("build", [_mlp, _cnn])
def test_features_move_with_permuted_neurons(build):
    model, x = build()
    g = converters.from_torch(model, x[:1])
    pi = symmetry.random_automorphism(g, torch.Generator().manual_seed(3))
    assert not torch.equal(pi, torch.arange(g.num_nodes))
    values, _, _ = symmetry.permute_values(g, pi)
    permuted = probe_features(g, model, x, values)
    original = probe_features(g, model, x)
    assert torch.allclose(permuted[pi], original, atol=1e-5)
    assert not torch.allclose(permuted, original, atol=1e-3)


def test_metanetwork_with_probe_features_is_invariant_and_needs_them():
    model, x = _cnn()
    g = converters.from_torch(model, x[:1])
    pi = symmetry.random_automorphism(g, torch.Generator().manual_seed(4))
    values, _, _ = symmetry.permute_values(g, pi)
    h = converters.with_values(g, values)
    net = GraphMetanetwork(16, 2, readout="graph", out_dim=3, node_features=len(x)).eval()
    out = net(g, node_features=probe_features(g, model, x))
    assert torch.allclose(out, net(h, node_features=probe_features(g, model, x, values)), atol=1e-5)
    with pytest.raises(ValueError, match="node_features"):
        net(g)


@pytest.mark.parametrize("case", ["mlp", "siren"])
def test_scale_gmn_with_probe_features_is_invariant_to_rescaling_and_flips(case):
    from gmn.zoo.inr import Siren

    if case == "siren":
        torch.manual_seed(2)
        model, x = Siren(hidden=6, depth=3), torch.rand(9, 2) * 2 - 1
    else:
        model, x = _mlp()  # tanh neurons flip, ReLU neurons rescale
    g = converters.from_torch(model, x[:1])
    moved = symmetry.random_symmetry(g, seed=5, scale=True, sign=True)
    a, b = (probe_features(gg, model, x) for gg in (g, moved))
    assert not torch.allclose(a.sort(0).values, b.sort(0).values, atol=1e-3)  # the features did move
    torch.manual_seed(0)
    net = GraphMetanetwork(16, 2, kind="scale_gmn", readout="graph", out_dim=3, node_features=len(x)).eval()
    torch.testing.assert_close(net(moved, node_features=b), net(g, node_features=a), rtol=1e-4, atol=1e-5)
    plain = GraphMetanetwork(16, 2, kind="gmn", readout="graph", out_dim=3, node_features=len(x)).eval()
    assert not torch.allclose(plain(moved, node_features=b), plain(g, node_features=a), atol=1e-4)
