"""Writing values back: batches, errors, saved graphs."""

import pytest
import torch
from models import build
from torch_geometric.data import Batch

import converters
from converters import ConversionError


def test_batch_of_mixed_architectures_splits_back():
    graphs, models = [], []
    for name in ("mlp", "small_cnn", "vit"):
        model, x = build(name)
        models.append(model)
        graphs.append(converters.from_torch(model, x))
    batch = Batch.from_data_list(graphs)
    values = converters.parameter_values(batch)
    assert values.numel() == sum(int(g.num_param_edges) for g in graphs)
    dicts = converters.to_state_dict(batch, values * 2)
    assert len(dicts) == 3
    for model, sd in zip(models, dicts):
        for k, v in model.state_dict().items():
            expected = v * 2 if k in dict(model.named_parameters()) else v
            assert torch.equal(sd[k], expected), k


def test_batch_keeps_tied_slots_per_graph():
    model, x = build("gpt2")
    g = converters.from_torch(model, x)
    mlp, xm = build("mlp")
    batch = Batch.from_data_list([converters.from_torch(mlp, xm), g])
    second = batch.get_example(1)
    assert torch.equal(second.tied_slot, g.tied_slot)
    assert torch.equal(second.node_index, g.node_index)  # channel numbers are not shifted


def test_wrong_number_of_values_is_refused():
    model, x = build("mlp")
    g = converters.from_torch(model, x)
    with pytest.raises(ConversionError, match="parameter scalars"):
        converters.to_state_dict(g, torch.zeros(3))


def test_values_keep_gradients_through_state_dict():
    model, x = build("mlp")
    g = converters.from_torch(model, x)
    values = converters.parameter_values(g).clone().requires_grad_(True)
    sd = converters.to_state_dict(g, values)
    sd["0.weight"].sum().backward()
    assert int((values.grad != 0).sum()) == model[0].weight.numel()


def test_with_values_updates_tied_edges():
    model, x = build("gpt2")
    g = converters.from_torch(model, x)
    values = torch.randn(int(g.num_param_edges))
    g2 = converters.with_values(g, values)
    p, t = int(g.num_param_edges), int(g.num_tied_edges)
    assert torch.equal(g2.edge_value[:p], values)
    assert torch.equal(g2.edge_value[p : p + t], values[g.tied_slot])
    assert torch.equal(g.edge_value[:p], converters.parameter_values(g))  # original untouched


def test_save_and_load_round_trip(tmp_path):
    model, x = build("resnet18")
    g = converters.from_torch(model, x)
    path = tmp_path / "graph.pt"
    converters.save_graph(g, path)
    assert [p.name for p in tmp_path.iterdir()] == ["graph.pt"]  # no temporary left
    loaded = converters.load_graph(path)
    for key in ("edge_index", "edge_type", "edge_pos", "edge_value", "node_type", "node_act"):
        assert torch.equal(getattr(loaded, key), getattr(g, key))
    sd = converters.to_state_dict(loaded)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v)
    with pytest.raises(ConversionError, match="no model attached"):
        converters.functional_call(loaded, None, x)


def test_loading_something_else_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a gmn parameter graph"):
        converters.load_graph(bad)
    weights = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, weights)
    with pytest.raises(ConversionError, match="not a gmn parameter graph"):
        converters.load_graph(weights)
