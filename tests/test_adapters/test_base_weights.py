"""Base weights as edge features of an adapter graph: exact, oriented, outside the parameters."""

from __future__ import annotations

import pytest
import torch

import converters
from adapters import AdapterError, from_peft
from adapters.base import layers
from converters import EdgeType
from gmn import symmetry

from .cases import make, outputs


@pytest.fixture(scope="module", params=["gpt2", "cnn", "llama", "embedding"])
def case(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    factory, inputs, model = make(request.param, folder, seed=7)
    return folder, factory, inputs, model


def _adapted_paths(g, base) -> list[str]:
    found = layers(base)
    names = {name.rsplit(".lora_", 1)[0] for name, _, _ in g.param_index.params if ".lora_" in name}
    return [path for path in found if any(n.endswith(path) for n in names)]


def test_base_edges_are_the_base_weights_and_leave_the_parameters_alone(case):
    folder, factory, *_ = case
    base = factory()
    plain, g = from_peft(folder, base=base), from_peft(folder, base=base, base_weights=True)
    p = int(g.num_param_edges)
    assert torch.equal(g.edge_index[:, :p], plain.edge_index[:, :p])
    assert torch.equal(converters.parameter_values(g), converters.parameter_values(plain))
    # after the adapter's own structural edges come the base's, layer by layer in the base's order
    start = plain.num_edges
    found = layers(base)
    for path in _adapted_paths(g, base):
        layer, module = found[path]
        weight = module.weight.detach()
        count = weight.numel()
        src, dst = g.edge_index[:, start : start + count]
        etype, pos = g.edge_type[start : start + count], g.edge_pos[start : start + count]
        assert bool((etype == int({"linear": EdgeType.LINEAR, "conv": EdgeType.CONV,
                                   "embedding": EdgeType.EMBEDDING}[layer.kind])).all())
        i = g.node_index[src].long() - int(g.node_index[src].min())
        o = g.node_index[dst].long() - int(g.node_index[dst].min())
        rebuilt = torch.zeros(layer.in_features, layer.out_features, int(pos.max()) + 1, dtype=g.edge_value.dtype)
        rebuilt[i, o, pos.long()] = g.edge_value[start : start + count]
        if layer.kind == "embedding" or type(module).__name__ == "Conv1D":
            expected = weight.unsqueeze(-1)  # (in, out) as stored
        else:
            expected = weight.reshape(layer.out_features, layer.in_features, -1).transpose(0, 1)
        assert torch.equal(rebuilt, expected.to(rebuilt.dtype)), path
        start += count
    assert start == g.num_edges


def test_rank_permutations_keep_the_base_edges_and_the_function(case, tmp_path):
    folder, factory, inputs, model = case
    g = from_peft(folder, base=factory(), base_weights=True)
    moved, pi, _ = symmetry.random_symmetry(g, seed=1, return_maps=True)
    base_part = slice(from_peft(folder, base=factory()).num_edges, g.num_edges)
    assert torch.equal(pi[moved.edge_index[:, base_part]], g.edge_index[:, base_part])  # pinned: nothing moves
    from adapters import to_peft

    from .cases import load

    to_peft(moved, converters.parameter_values(moved), tmp_path / "moved")
    torch.testing.assert_close(outputs(load(factory, tmp_path / "moved"), inputs), outputs(model, inputs),
                               rtol=1e-12, atol=1e-12)


def test_base_weights_are_refused_without_values_or_beyond_the_bound(case, monkeypatch):
    folder, factory, *_ = case
    with torch.device("meta"):
        meta = factory().to("meta")
    with pytest.raises(AdapterError, match="meta device"):
        from_peft(folder, base=meta, base_weights=True)
    with pytest.raises(AdapterError, match="need the base"):
        from_peft(folder, base_weights=True)
    monkeypatch.setattr("adapters.graph.BASE_WEIGHT_EDGES", 10)
    with pytest.raises(AdapterError, match="at most 10"):
        from_peft(folder, base=factory(), base_weights=True)
