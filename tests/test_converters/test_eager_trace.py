"""The fallback tracer (one recorded run) gives graphs with the same guarantees."""

import copy

import pytest
import torch
from models import ALL_CASES, build, output

import converters
from gmn import symmetry


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_eager_graph_round_trips_and_keeps_symmetries(name):
    model, x = build(name)
    g = converters.from_torch(model, x, tracer="eager")
    unique = {id(p): p for p in model.parameters()}
    assert int(g.num_param_edges) == sum(p.numel() for p in unique.values())
    sd = converters.to_state_dict(g)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    g2 = symmetry.random_symmetry(g, seed=0)
    twin = copy.deepcopy(model)
    twin.load_state_dict(converters.to_state_dict(g2))
    with torch.no_grad():
        torch.testing.assert_close(output(twin.eval()(x)), output(model(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "resnet18", "vit", "llama"])
def test_eager_and_export_graphs_agree(name):
    model, x = build(name)
    a = converters.from_torch(model, x, tracer="eager")
    b = converters.from_torch(model, x, tracer="export")
    assert a.num_nodes == b.num_nodes
    for key in ("edge_type", "edge_value"):
        assert torch.equal(torch.sort(getattr(a, key)).values, torch.sort(getattr(b, key)).values)
    assert torch.equal(torch.bincount(a.node_type.long()), torch.bincount(b.node_type.long()))
