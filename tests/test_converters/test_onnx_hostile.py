"""ONNX input that must be refused cleanly: each case a ``ConversionError`` naming the problem,
found by fuzzing the reader; and a property-based fuzz test over several seed models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import converters
from converters import ConversionError

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def _gemm(names=("W", "B"), extra_nodes=(), outputs=("y",)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), names[0]),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), names[1])]
    nodes = [helper.make_node("Gemm", ["x", names[0], names[1]], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["y"]), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(tmp_path: Path, **entries) -> Path:
    """The Gemm model with W in external data, its entries replaced by ``entries``."""
    proto = _gemm()
    w = proto.graph.initializer[0]
    (tmp_path / "w.bin").write_bytes(numpy_helper.to_array(w).tobytes())
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "length": "48", **entries}.items():
        if value is None:
            continue
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_empty_file_and_prefixes_before_the_graph(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ConversionError, match="no graph nodes"):
        converters.from_onnx(path)
    data = _gemm().SerializeToString()
    graph_at = data.index(_gemm().graph.SerializeToString()[:8]) - 3  # the graph field's tag and length
    for cut in range(0, max(graph_at, 1)):
        path.write_bytes(data[:cut])
        with pytest.raises(ConversionError):
            converters.from_onnx(path)


def test_models_without_outputs_or_with_names_defined_twice():
    proto = _gemm()
    del proto.graph.output[:]
    with pytest.raises(ConversionError, match="no graph outputs"):
        converters.from_onnx(proto)
    proto = _gemm()
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "B"))
    with pytest.raises(ConversionError, match="initializer 'B' is defined twice"):
        converters.from_onnx(proto)
    proto = _gemm(extra_nodes=[helper.make_node("Sigmoid", ["h"], ["y"])])
    with pytest.raises(ConversionError, match="tensor 'y' is produced twice"):
        converters.from_onnx(proto)


def test_names_that_are_not_utf8_are_refused(tmp_path):
    raw = _gemm().SerializeToString()
    at = raw.index(b"W")  # the weight's name, where an initializer or node refers to it
    path = tmp_path / "m.onnx"
    path.write_bytes(raw[:at] + b"\x80" + raw[at + 1:])
    with pytest.raises(ConversionError, match="not valid UTF-8"):
        converters.from_onnx(path)


def test_external_data_with_missing_length_is_read_and_checked(tmp_path):
    path = _external(tmp_path, length=None)
    g = converters.from_onnx(path)
    w = numpy_helper.to_array(_gemm().graph.initializer[0]).copy()
    assert torch.equal(converters.to_state_dict(g)["W"], torch.from_numpy(w))


@pytest.mark.parametrize("entries, words", [
    ({"length": "-4"}, "do not hold"), ({"length": "8"}, "do not hold"), ({"length": "4000"}, "do not hold"),
    ({"length": "abc"}, "not integers"), ({"offset": "-1"}, "do not hold"),
    ({"location": "w\x00.bin"}, "valid location"),
    ({"location": "model.onnx"}, "model file itself"), ({"location": ""}, "valid location"),
    ({"offset": "100"}, "shorter than"),
])
def test_malformed_external_data_is_refused(tmp_path, entries, words):
    path = _external(tmp_path, **entries)
    with pytest.raises(ConversionError, match=words):
        converters.from_onnx(path)
    with pytest.raises(ConversionError, match=words):
        converters.load_onnx(path)


def test_memory_is_estimated_before_anything_is_allocated(tmp_path, monkeypatch):
    path = _external(tmp_path, length=None)  # no length: the size still counts, from the dims
    monkeypatch.setattr("converters.onnx_frontend.memory_limit", lambda: path.stat().st_size + 60)
    with pytest.raises(ConversionError, match="needs about"):  # the file fits, the conversion's peak does not
        converters.from_onnx(path)


def test_huge_declared_inputs_and_fills_are_refused_before_allocation():
    proto = _gemm()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = 3 * 40000, 40000
    with pytest.raises(ConversionError, match="too large to trace"):
        converters.from_onnx(proto)
    shape = numpy_helper.from_array(np.array([100000, 100000], np.int64), "s")
    fill = helper.make_node("ConstantOfShape", ["s"], ["W"], value=numpy_helper.from_array(np.ones(1, np.float32)))
    proto = _gemm()
    del proto.graph.initializer[0]
    proto.graph.initializer.append(shape)
    proto.graph.node.insert(0, fill)
    with pytest.raises(ConversionError, match="ConstantOfShape 'W': 10,000,000,000 elements"):
        converters.from_onnx(proto)
    runtime = _gemm(extra_nodes=[helper.make_node("Shape", ["y"], ["sy"]),
                                 helper.make_node("Mul", ["sy", "big"], ["sz"]),
                                 helper.make_node("ConstantOfShape", ["sz"], ["z"])], outputs=("y", "z"))
    runtime.graph.initializer.append(numpy_helper.from_array(np.array([100000, 100000], np.int64), "big"))
    with pytest.raises(ConversionError, match=r"\(ConstantOfShape\): 60,000,000,000 elements"):
        converters.from_onnx(runtime)


def test_constants_without_a_dense_value_are_refused():
    for attrs, words in (({}, "has no value"), ({"sparse_value": helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(2, np.float32)), numpy_helper.from_array(np.array([0, 2], np.int64)),
            [3])}, "sparse")):
        proto = _gemm(names=("C", "B"))
        del proto.graph.initializer[0]
        proto.graph.node.insert(0, helper.make_node("Constant", [], ["C"], **attrs))
        with pytest.raises(ConversionError, match=words):
            converters.from_onnx(proto)


@pytest.mark.parametrize("name", ["training", "forward", "nodes", "a.training", "x..y"])
def test_tensors_named_like_module_attributes_convert(name):
    proto = _gemm(names=(name, "B"))
    g = converters.from_onnx(proto)
    x = torch.randn(2, 4)
    w = torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[0]))
    b = torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[1]))
    torch.testing.assert_close(g.model(x), torch.relu(x @ w.t() + b))
    written = converters.to_onnx(g, converters.parameter_values(g) * 2)
    assert np.allclose(numpy_helper.to_array(written.graph.initializer[0]), 2 * w.numpy())


# --- fuzzing ------------------------------------------------------------------------------
def _seeds() -> list[onnx.ModelProto]:
    seeds = [_gemm(), onnx.load(str(DATA / "pytorch-converted" / "test_Conv2d_groups" / "model.onnx")),
             onnx.load(str(DATA / "pytorch-converted" / "test_BatchNorm2d_eval" / "model.onnx")),
             onnx.load(str(DATA / "pytorch-operator" / "test_operator_maxpool" / "model.onnx"))]
    light = onnx.load(str(DATA / "light" / "light_squeezenet.onnx"))  # weights in ConstantOfShape fills
    del light.graph.node[40:]
    light.graph.output[0].name = light.graph.node[-1].output[0]
    return seeds + [light]


_SEEDS = _seeds()
OUTCOMES: Counter = Counter()


def _mutate(data, proto: onnx.ModelProto) -> onnx.ModelProto | bytes:
    kind = data.draw(st.sampled_from(["bytes", "truncate", "drop", "rename", "op", "dims", "init", "attr"]))
    OUTCOMES[f"mutation {kind}"] += 1
    nodes = proto.graph.node
    if kind in ("bytes", "truncate"):
        raw = bytearray(proto.SerializeToString())
        if kind == "truncate":
            return bytes(raw[: data.draw(st.integers(0, len(raw)))])
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        return bytes(raw)
    node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
    if kind == "drop":
        nodes.remove(node)
    elif kind == "rename" and node.input:
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(
            st.sampled_from(["", "x", "0", "W", node.output[0]]))
    elif kind == "op":
        node.op_type = data.draw(st.sampled_from(["Relu", "Conv", "Gemm", "Softmax", "Reshape", "Concat", "Foo"]))
    elif kind == "dims" and proto.graph.input:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[data.draw(st.integers(0, len(dims) - 1))].dim_value = data.draw(st.integers(0, 9))
    elif kind == "init" and proto.graph.initializer:
        t = proto.graph.initializer[data.draw(st.integers(0, len(proto.graph.initializer) - 1))]
        if t.dims:
            t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(st.integers(0, 5))
        else:
            t.data_type = data.draw(st.integers(0, 20))
    elif kind == "attr" and node.attribute:
        attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        if attr.ints:
            attr.ints[:] = data.draw(st.lists(st.integers(-3, 4), max_size=4))
        else:
            attr.i = data.draw(st.integers(-3, 4))
    return proto


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_files_are_converted_and_checked_or_refused(tmp_path_factory, data):
    proto = onnx.ModelProto()
    proto.CopyFrom(_SEEDS[data.draw(st.integers(0, len(_SEEDS) - 1))])
    mutated = _mutate(data, proto)
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(mutated if isinstance(mutated, bytes) else mutated.SerializeToString())
    try:
        g = converters.from_onnx(path)
    except ConversionError:
        OUTCOMES["refused"] += 1
        return
    OUTCOMES["converted"] += 1
    # a success is a consistent graph: conservation and an exact round trip
    assert int(g.num_param_edges) == sum(p.numel() for p in g.model.parameters())
    state = converters.to_state_dict(g)
    for key, value in g.model.state_dict().items():
        assert torch.equal(state[key], value), key
    converters.to_onnx(g)


def test_fuzz_counts():
    """Shows what the fuzz test did (run with -s); it must have exercised both outcomes."""
    print(dict(OUTCOMES))
    if OUTCOMES:
        assert OUTCOMES["refused"] > 0
