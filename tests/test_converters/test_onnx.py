"""ONNX in and out: parity with PyTorch, round trips through onnxruntime, bad files."""

import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import build
from onnx import TensorProto, helper, numpy_helper

import converters
from converters import ConversionError
from gmn import symmetry, to_networkx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
logging.getLogger("torch.onnx").setLevel(logging.ERROR)

PARITY = ["mlp", "flatten_cnn", "small_cnn", "resnet18", "vit"]


def _export(name):
    model, x = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False).model_proto
    return model, x, proto


def _run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.fixture(scope="module", params=PARITY)
def exported(request):
    model, x, proto = _export(request.param)
    return request.param, model, x, proto, converters.from_onnx(proto)


def test_parity_with_pytorch(exported):
    name, model, x, _, g = exported
    gt = converters.from_torch(model, x)
    assert int(g.num_param_edges) == int(gt.num_param_edges)
    sd = converters.to_state_dict(g)
    for k, v in dict(model.named_parameters()).items():
        assert torch.equal(sd[k], v), k  # same names, same values: nothing folded
    for key in ("node_type", "node_act"):
        assert torch.equal(torch.bincount(getattr(g, key).long()), torch.bincount(getattr(gt, key).long()))
    assert torch.equal(torch.bincount(g.edge_type.long()), torch.bincount(gt.edge_type.long()))
    # isomorphic, values included: equal colour-refinement histograms (and networkx when small)
    def histogram(h):
        node = symmetry._exact_dense(h.node_type, h.node_depth, h.node_index, h.node_act)
        label = symmetry._exact_dense(h.edge_type, h.edge_pos, (h.edge_value * 1e6).round().long())
        colors = symmetry.refine(node, h.edge_index[0], h.edge_index[1], label)
        return sorted(torch.bincount(colors).tolist())
    assert histogram(g) == histogram(gt)
    if g.edge_index.size(1) < 2000:
        import networkx as nx

        same = lambda a, b: a == b  # noqa: E731
        assert nx.is_isomorphic(to_networkx(g), to_networkx(gt), node_match=same,
                                edge_match=lambda a, b: sorted(map(str, a.values())) == sorted(map(str, b.values())))


def test_round_trip_through_onnxruntime(exported):
    _, model, x, proto, g = exported
    again = converters.to_onnx(g)
    onnx.checker.check_model(again)
    assert torch.equal(_run(again, x), _run(proto, x))


def test_edited_values_match_pytorch(exported):
    _, model, x, _, g = exported
    values = converters.parameter_values(g) * torch.linspace(0.5, 1.5, int(g.num_param_edges))
    edited = converters.to_onnx(g, values)
    onnx.checker.check_model(edited)
    rebuilt = __import__("copy").deepcopy(model)
    sd = converters.to_state_dict(g, values)
    rebuilt.load_state_dict({k: sd.get(k, v) for k, v in model.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(_run(edited, x), rebuilt.eval()(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(converters.functional_call(g, values, x), _run(edited, x), rtol=1e-4, atol=1e-5)


def test_symmetry_of_onnx_graph_is_a_symmetry_of_the_file(exported):
    _, _, x, proto, g = exported
    g2 = symmetry.random_symmetry(g, seed=0)
    torch.testing.assert_close(_run(converters.to_onnx(g2), x), _run(proto, x), rtol=1e-4, atol=1e-5)


# --- hand-written files -------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset=17, ir=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        model.ir_version = ir
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights_in_constants():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(b)),
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "Wt"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["y0"]),
        helper.make_node("Relu", ["y0"], ["y"]),
    ]
    return _model(nodes, [_f("x", [2, 4])], [_f("y", [2, 3])]), w, b


def test_weights_in_constant_nodes_and_transposed_matmul():
    proto, w, b = _weights_in_constants()
    g = converters.from_onnx(proto)
    assert int(g.num_param_edges) == 15
    sd = converters.to_state_dict(g)
    assert np.array_equal(sd["W"].numpy(), w) and np.array_equal(sd["B"].numpy(), b)
    assert int((g.edge_type == converters.EdgeType.BIAS).sum()) == 3  # matmul + add is one biased layer
    x = torch.randn(2, 4)
    edited = converters.to_onnx(g, converters.parameter_values(g) * 2)
    onnx.checker.check_model(edited)
    expected = torch.relu(x @ torch.from_numpy(w).t() * 2 + torch.from_numpy(b) * 2)
    torch.testing.assert_close(_run(edited, x), expected, rtol=1e-5, atol=1e-5)


def test_opset9_with_initializers_listed_as_inputs():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.ones(4, np.float32) * 1.5, "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32) + 0.1, "bias")
    mean = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean")
    var = numpy_helper.from_array(np.ones(4, np.float32) * 2, "var")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"], epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Squeeze", ["p"], ["y"], axes=[2, 3]),
    ]
    inits = [w, scale, bias, mean, var]
    inputs = [_f("x", [1, 2, 5, 5])] + [_f(t.name, list(t.dims)) for t in inits]
    proto = _model(nodes, inputs, [_f("y", [1, 4])], inits, opset=9, ir=3)
    g = converters.from_onnx(proto)
    assert int(g.num_param_edges) == 4 * 2 * 9 + 4 + 4
    assert set(g.param_index.buffers) == {"mean", "var"}
    x = torch.randn(1, 2, 5, 5)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(converters.functional_call(g, None, x), y, rtol=1e-5, atol=1e-5)


def test_norm_and_pool_ops_run_like_onnxruntime():
    rng = np.random.default_rng(2)
    t = lambda a, n: numpy_helper.from_array(a.astype(np.float32), n)  # noqa: E731
    inits = [t(rng.standard_normal((6, 3, 1, 1)), "w"), t(rng.standard_normal(6), "s"),
             t(rng.standard_normal(6), "b"), t(rng.standard_normal(4), "ls"), t(rng.standard_normal(4), "lb")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["i"]),
        helper.make_node("LRN", ["i"], ["l"], size=3),
        helper.make_node("MaxPool", ["l"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("LayerNormalization", ["m", "ls", "lb"], ["n"], axis=-1),
        helper.make_node("Sigmoid", ["n"], ["y"]),
    ]
    proto = _model(nodes, [_f("x", [1, 3, 8, 8])], [_f("y", [1, 6, 4, 4])], inits)
    g = converters.from_onnx(proto)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(converters.functional_call(g, None, x), _run(proto, x), rtol=1e-4, atol=1e-5)
    g2 = symmetry.random_symmetry(g, seed=0)
    torch.testing.assert_close(_run(converters.to_onnx(g2), x), _run(proto, x), rtol=1e-4, atol=1e-5)


# --- files on disk -------------------------------------------------------------------
def test_external_data_inside_the_folder(tmp_path):
    _, x, proto = _export("flatten_cnn")
    expected = _run(proto, x)
    path = tmp_path / "model.onnx"
    onnx.save(onnx.ModelProto.FromString(proto.SerializeToString()), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").stat().st_size > 0
    g = converters.from_onnx(path)
    assert torch.equal(_run(converters.to_onnx(g), x), expected)
    loaded = converters.load_onnx(path)  # a self-contained proto
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in loaded.graph.initializer)
    assert torch.equal(_run(loaded, x), expected)


def test_external_data_escaping_the_folder_is_refused(tmp_path):
    proto, _, _ = _weights_in_constants()
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W2")
    proto.graph.initializer.append(w)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.ones(12, np.float32).tobytes())
    inner = tmp_path / "model"
    inner.mkdir()
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("length", "48")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path = inner / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ConversionError, match="escapes the model's folder"):
        converters.from_onnx(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_files_are_refused(tmp_path, damage):
    _, _, proto = _export("mlp")
    data = proto.SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x08\xff\xff\xff" + data[::7])
    with pytest.raises(ConversionError):
        converters.from_onnx(path)


def test_missing_initializer_dangling_input_and_cycle():
    proto, _, _ = _weights_in_constants()
    missing = onnx.ModelProto()
    missing.CopyFrom(proto)
    del missing.graph.node[0]  # W is now produced by nothing
    with pytest.raises(ConversionError, match="'W'.*produced by nothing"):
        converters.from_onnx(missing)
    cycle = _model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                    helper.make_node("Add", ["x", "a"], ["y"])], [_f("x", [1])], [_f("y", [1])])
    with pytest.raises(ConversionError, match="cycle"):
        converters.from_onnx(cycle)


def test_unknown_op_with_parameters_is_named():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    proto = _model([helper.make_node("Einsum", ["x", "w"], ["y"], equation="ij,jk->ik")],
                   [_f("x", [2, 2])], [_f("y", [2, 2])], [w])
    with pytest.raises(ConversionError, match="Einsum.*using parameter 'w'"):
        converters.from_onnx(proto)


def test_file_larger_than_memory_is_refused(tmp_path, monkeypatch):
    _, _, proto = _export("mlp")
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    monkeypatch.setattr("converters.onnx_frontend.memory_limit", lambda: 100)
    with pytest.raises(ConversionError, match="GiB of memory is free"):
        converters.from_onnx(path)


def test_cli_converts_onnx_and_writes_nothing_on_failure(tmp_path, capsys):
    from gmn.cli import main

    proto, _, _ = _weights_in_constants()
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(proto, str(good))
    bad.write_bytes(b"not onnx")
    assert main(["convert", str(good), "-o", str(tmp_path / "g.pt")]) == 0
    assert converters.load_graph(tmp_path / "g.pt").num_parameters == 15
    assert main(["convert", str(bad), "-o", str(tmp_path / "b.pt")]) == 2
    assert not (tmp_path / "b.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "g.pt", "good.onnx"]


# --- fuzzing ---------------------------------------------------------------------------
_BASE, _, _ = _weights_in_constants()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_models_raise_only_gmn_errors(data):
    proto = onnx.ModelProto()
    proto.CopyFrom(_BASE)
    kind = data.draw(st.sampled_from(["bytes", "drop", "rename", "op", "attr", "shape"]))
    nodes = proto.graph.node
    if kind == "bytes":
        raw = bytearray(proto.SerializeToString())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            proto = onnx.load_from_string(bytes(raw))
        except Exception:
            return  # not even a protobuf: load_onnx's file path covers that case
    elif kind == "drop":
        del nodes[data.draw(st.integers(0, len(nodes) - 1))]
    elif kind == "rename":
        node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
        if node.input:
            slot = data.draw(st.integers(0, len(node.input) - 1))
            node.input[slot] = data.draw(st.sampled_from(["x", "y", "zz", ""]))
    elif kind == "op":
        nodes[data.draw(st.integers(0, len(nodes) - 1))].op_type = data.draw(
            st.sampled_from(["Relu", "Conv", "Gemm", "Softmax", "Foo", "Reshape"]))
    elif kind == "attr":
        nodes[2].attribute[0].ints[:] = data.draw(st.lists(st.integers(-3, 3), max_size=3))
    else:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        dims[data.draw(st.integers(0, 1))].dim_value = data.draw(st.integers(0, 6))
    try:
        converters.from_onnx(proto)
    except ConversionError:
        pass


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "mixtral"])
def test_transformer_exports_convert_and_round_trip(name):
    from models import output

    pytest.importorskip("transformers")
    model, x, proto = _export(name)
    g = converters.from_onnx(proto, (x,))
    gt = converters.from_torch(model, x)
    if name in ("gpt2", "bert"):  # same ops on both sides: the same graph, but for the scales the
        # export writes out (attention's q * sqrt(scale), k * sqrt(scale); torch's SDPA applies its
        # scale inside): a number times neurons is one ACTIVATION node per neuron and its edge
        from converters import NodeType

        extra = torch.bincount(g.node_type.long(), minlength=16) - torch.bincount(gt.node_type.long(), minlength=16)
        assert bool((extra[torch.arange(16) != int(NodeType.ACTIVATION)] == 0).all())
        assert g.num_nodes - gt.num_nodes == g.edge_index.size(1) - gt.edge_index.size(1) == int(extra.sum())
        assert int(g.num_param_edges) == int(gt.num_param_edges)
        assert int(g.num_tied_edges) == int(gt.num_tied_edges)
    values = converters.parameter_values(g) * 1.05
    edited = converters.to_onnx(g, values)
    onnx.checker.check_model(edited)
    sess = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    y = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(output(converters.functional_call(g, values, x)), y, rtol=1e-4, atol=1e-5)
    # heads, experts and hidden neurons permuted through the graph: the file computes the same
    permuted = converters.to_onnx(symmetry.random_symmetry(g, seed=0))
    sess = ort.InferenceSession(permuted.SerializeToString(), providers=["CPUExecutionProvider"])
    y2 = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(y2, _run(proto, x), rtol=1e-4, atol=1e-5)


def test_to_onnx_refuses_values_it_cannot_write():
    proto, _, _ = _weights_in_constants()
    g = converters.from_onnx(proto)
    values = converters.parameter_values(g).double()
    with pytest.raises(converters.ConversionError, match="NaN/inf"):
        converters.to_onnx(g, values.index_fill(0, torch.tensor([0]), float("nan")))
    with pytest.raises(converters.ConversionError, match="overflow float32"):
        converters.to_onnx(g, values.index_fill(0, torch.tensor([0]), 1e300))


@pytest.mark.parametrize("bad", [torch.ones(15, dtype=torch.long), torch.ones(15, dtype=torch.bool),
                                 torch.ones(15, dtype=torch.complex64), [0.0] * 15, np.zeros(15)])
def test_values_that_are_no_weights_are_refused(bad):
    proto, _, _ = _weights_in_constants()
    g = converters.from_onnx(proto)
    with pytest.raises(converters.ConversionError, match="values must be"):
        converters.to_state_dict(g, bad)


def _optimizer_warnings(proto) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converters.from_onnx(proto)
    return [str(w.message) for w in caught if issubclass(w.category, converters.OptimizedOnnxWarning)]


def test_optimising_exports_are_noticed():
    from gmn.architectures import ResNet18

    model = ResNet18(width=8, classes=10).eval()
    with torch.no_grad():  # trained-looking BatchNorm: folding changes every convolution
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.normal_()
    x = torch.randn(1, 3, 32, 32)
    signs = {}
    for optimize in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = torch.onnx.export(model, (x,), dynamo=True, optimize=optimize, verbose=False).model_proto
        signs[optimize] = _optimizer_warnings(proto)
    assert signs[False] == []
    assert any("BatchNorm was folded into 20 convolution(s)" in s and "optimize=False" in s for s in signs[True])


def test_generated_names_and_mask_constants_are_noticed():
    rng = np.random.default_rng(0)
    mask = np.tril(np.ones((4, 4), np.float32))  # 0/1: a mask, not trained weights
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "val_12"),
             numpy_helper.from_array(mask, "causal")]
    nodes = [helper.make_node("MatMul", ["x", "val_12"], ["h"]), helper.make_node("MatMul", ["h", "causal"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    signs = _optimizer_warnings(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert any("names an ONNX optimizer made up (val_12)" in s for s in signs)
    assert any("mask values" in s and "causal" in s for s in signs)


@pytest.mark.parametrize("values, mask", [
    ([0.0, 1.0, 1.0, 0.0], True), ([1.0, 1.0, 1.0, 1.0], False), ([0.0, 0.0, 0.0, 0.0], False),
    ([0.0, 1.0, 0.5, 1.0], False), ([-1e9, 0.0, 0.0, 0.0], True), ([-0.3, 1.0, 0.0, 1.0], False),
    ([float("nan"), 0.0, 1.0, 1.0], False),
])
def test_mask_like_values(values, mask):
    from converters.onnx_frontend import _mask_like

    assert _mask_like(torch.tensor(values)) is mask
