"""ZooDataset and splits: exact weights, cache, grouping by run and by family."""

import pytest
import torch
from torch_geometric.loader import DataLoader

import converters
from gmn.data import ZooDataset, split_by_run
from gmn.zoo import Zoo, build_zoo


def test_graphs_carry_exactly_the_checkpoint_weights(tiny_zoo):
    ds = ZooDataset(tiny_zoo, targets=("test_acc", "gap"), progress=False)
    assert len(ds) == len(Zoo(tiny_zoo).members())
    for i in range(len(ds)):
        g = ds[i]
        weights = ds.zoo.weights(ds.members[i])
        state = converters.to_state_dict(g)
        assert all(torch.equal(state[k], weights[k]) for k in weights)
        assert g.y.shape == (1, 2) and g.y[0, 0] == ds.members[i]["test_acc"]


def test_cache_is_reused_and_equal(tiny_zoo):
    first = ZooDataset(tiny_zoo, progress=False)
    cached = list((tiny_zoo / "processed").glob("graphs-*.pt"))
    assert cached
    second = ZooDataset(tiny_zoo, progress=False)
    for a, b in zip(first, second):
        assert torch.equal(a.edge_value, b.edge_value) and torch.equal(a.edge_index, b.edge_index)


def test_a_cache_of_another_converter_is_never_read(tiny_zoo, monkeypatch):
    ZooDataset(tiny_zoo, progress=False)
    before = set((tiny_zoo / "processed").glob("graphs-*.pt"))
    # another version of the rules (a changed structure) must convert again, not read old graphs
    monkeypatch.setattr(converters, "code_fingerprint", lambda: "another converter")
    ZooDataset(tiny_zoo, progress=False)
    after = set((tiny_zoo / "processed").glob("graphs-*.pt"))
    assert before < after


def test_batches_of_zoo_graphs_run_through_a_metanetwork(tiny_zoo):
    from gmn import GraphMetanetwork

    ds = ZooDataset(tiny_zoo, progress=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert GraphMetanetwork(hidden=8, layers=1)(batch).shape == (4, 1)


def test_batchnorm_buffers_come_back(tmp_path):
    root = tmp_path / "mixed"
    build_zoo(root, "mixed", runs=12, epochs=1, workers=1, progress=False).close()
    ds = ZooDataset(root, progress=False)
    with_bn = [i for i, m in enumerate(ds.members) if m["family"] == "rescnn"]
    assert with_bn, "the mixed preset should draw a residual CNN in 12 runs"
    i = with_bn[0]
    state, weights = converters.to_state_dict(ds[i]), ds.zoo.weights(ds.members[i])
    assert any("running_mean" in k for k in weights)
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    model, x = ds.model(i)
    g = ds[i]
    g.model = model
    assert torch.allclose(converters.functional_call(g, None, x), model(x))


def test_a_checkpoint_of_the_wrong_shape_is_named(tmp_path, tiny_zoo):
    import shutil

    from safetensors.torch import load_file, save_file

    root = tmp_path / "z"
    shutil.copytree(tiny_zoo, root, ignore=shutil.ignore_patterns("processed"))
    member = Zoo(root).members()[0]
    state = load_file(root / member["path"])
    state["head.weight"] = state["head.weight"][:5]
    save_file(state, root / member["path"])
    with pytest.raises(converters.ConversionError, match="'head.weight' has shape"):
        ZooDataset(root, progress=False)


def test_split_by_run_never_separates_a_run():
    run = torch.arange(40).repeat_interleave(3)
    family = ["a"] * 60 + ["b"] * 60
    s = split_by_run(run, family, seed=1)
    parts = [set(run[p].tolist()) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 120


def test_held_out_families_are_only_tested():
    run = torch.arange(40).repeat_interleave(3)
    family = ["a"] * 60 + ["b"] * 30 + ["c"] * 30
    s = split_by_run(run, family, test_families=("c",))
    assert {family[i] for i in s.test.tolist()} == {"c"} and len(s.test) == 30
    assert {family[i] for i in torch.cat([s.train, s.val]).tolist()} == {"a", "b"}
    with pytest.raises(ValueError, match="no member"):
        split_by_run(run, family, test_families=("z",))


def test_onnx_members_of_one_architecture_are_traced_once(tmp_path, monkeypatch):
    """An imported folder of ONNX files: one trace per architecture, every member's own values."""
    import csv

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from converters import onnx_frontend
    from gmn.zoo import import_folder

    folder = tmp_path / "files"
    folder.mkdir()
    rows = []
    for i in range(4):
        gen = torch.Generator().manual_seed(i)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                                  [numpy_helper.from_array(torch.randn(3, 2, generator=gen).numpy(), "w")])
        onnx.save(helper.make_model(graph), folder / f"m{i}.onnx")
        rows.append({"path": f"m{i}.onnx", "test_acc": 0.5 + i / 10})
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "test_acc"])
        writer.writeheader()
        writer.writerows(rows)
    import_folder(folder, tmp_path / "t.csv").catalogue.close()
    traces = []
    convert = onnx_frontend.convert_proto
    monkeypatch.setattr(onnx_frontend, "convert_proto", lambda *a, **k: traces.append(1) or convert(*a, **k))
    ds = ZooDataset(folder, cache=False, progress=False)
    assert len(traces) == 1
    for i in range(4):
        expected = converters.from_onnx(folder / f"m{i}.onnx")
        assert torch.equal(ds[i].edge_value, expected.edge_value)
        assert torch.equal(ds[i].edge_index, expected.edge_index)
