"""Conservation, exact round trip and gradients for every architecture family."""

import copy

import pytest
import torch
from models import ALL_CASES, build, output

import converters


@pytest.fixture(scope="module", params=sorted(ALL_CASES))
def converted(request):
    model, x = build(request.param)
    return request.param, model, x, converters.from_torch(model, x)


def test_parameter_slots_conserved(converted):
    _, model, _, g = converted
    unique = {id(p): p for p in model.parameters()}
    assert int(g.num_param_edges) == sum(p.numel() for p in unique.values())
    assert g.param_index.num_parameters == int(g.num_param_edges)
    # every parameter slot is an edge between real nodes
    assert int(g.edge_index.max()) < g.num_nodes


def test_round_trip_exact(converted):
    _, model, x, g = converted
    sd = converters.to_state_dict(g)
    ref = model.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k
    rebuilt = copy.deepcopy(model)
    for p in rebuilt.parameters():
        torch.nn.init.zeros_(p)
    rebuilt.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(output(rebuilt.eval()(x)), output(model(x)))


def test_new_values_are_written(converted):
    _, model, x, g = converted
    values = converters.parameter_values(g)
    new = values + torch.linspace(-1, 1, values.numel())
    sd = converters.to_state_dict(g, new)
    for name, shape, offset in g.param_index.params:
        n = torch.Size(shape).numel()
        assert torch.equal(sd[name].reshape(-1).float(), new[offset : offset + n])


def test_functional_call_gradient_matches_autograd(converted):
    _, model, x, g = converted
    values = converters.parameter_values(g).clone().requires_grad_(True)
    y = output(converters.functional_call(g, values, x))
    loss = (y.float() ** 2).mean()
    (grad,) = torch.autograd.grad(loss, values)
    model.zero_grad()
    (output(model(x)).float() ** 2).mean().backward()
    params = dict(model.named_parameters())
    expected = torch.cat([params[name].grad.reshape(-1) if params[name].grad is not None
                          else torch.zeros(torch.Size(shape).numel())
                          for name, shape, _ in g.param_index.params])
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(y, output(model(x)), atol=1e-5)


def test_graph_features_are_well_formed(converted):
    _, _, _, g = converted
    e = g.edge_index.size(1)
    assert g.edge_type.shape == g.edge_pos.shape == g.edge_value.shape == (e,)
    n = g.num_nodes
    assert g.node_type.shape == g.node_depth.shape == g.node_index.shape == g.node_act.shape == (n,)
    # hidden neurons carry no identity
    hidden = g.node_type == int(converters.NodeType.HIDDEN)
    assert bool((g.node_index[hidden] == -1).all())
    # every node takes part in some edge
    assert torch.unique(g.edge_index).numel() == n
