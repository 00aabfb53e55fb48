"""Templates: one trace per architecture, then each checkpoint is a checked read of its values."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from models import build
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import converters
from converters import TemplateMismatch
from converters.onnx_frontend import structure_key
from converters.templates import STRUCTURE

OTHER_SEED = 7


def _perturbed(model: nn.Module, seed: int = OTHER_SEED) -> nn.Module:
    """The model with every parameter and float buffer moved (variances kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
                if name.endswith("running_var"):
                    t.abs_()
    return model


def _assert_same_graph(a, b):
    for key in STRUCTURE:
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.edge_value.dtype == b.edge_value.dtype
    assert torch.equal(a.edge_value, b.edge_value)
    assert a.param_index.state_keys == b.param_index.state_keys
    for k, v in a.param_index.buffers.items():
        assert torch.equal(v, b.param_index.buffers[k]), k


@pytest.mark.parametrize("name", ["resnet18", "vit", "moe"])
def test_from_state_dict_equals_a_fresh_conversion_and_shares_structure(name):
    model, x = build(name)
    template = converters.from_torch(model, x)
    other, _ = build(name)
    _perturbed(other)
    g = converters.from_state_dict(template, other.state_dict())
    _assert_same_graph(g, converters.from_torch(other, x))
    for key in STRUCTURE:  # the same arrays, not copies
        assert getattr(g, key).data_ptr() == getattr(template, key).data_ptr(), key
    assert g.edge_value.data_ptr() != template.edge_value.data_ptr()
    assert not torch.equal(g.edge_value, template.edge_value)
    out = converters.functional_call(g, converters.parameter_values(g), x)
    torch.testing.assert_close(out, other(x))


def test_float64_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x = torch.randn(3, 4, dtype=torch.float64)
    template = converters.from_torch(Tied().double().eval(), x)
    other = _perturbed(Tied().double().eval())
    g = converters.from_state_dict(template, other.state_dict())
    assert g.edge_value.dtype == torch.float64 and int(g.num_tied_edges) == 16
    _assert_same_graph(g, converters.from_torch(other, x))
    untied = other.state_dict()
    untied["b.weight"] = untied["b.weight"] + 1
    with pytest.raises(TemplateMismatch, match="'b.weight' and 'a.weight' hold different values"):
        converters.from_state_dict(template, untied)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("fc.bias"), "no parameter 'fc.bias'"),
    (lambda sd: sd.update(extra=torch.zeros(2)), "'extra' is not in the template's architecture"),
    (lambda sd: sd.update({"fc.weight": torch.zeros(5, 9)}), r"'fc.weight' has shape \(5, 9\); the template's is"),
    (lambda sd: sd.update({"fc.weight": sd["fc.weight"].double()}), "'fc.weight' is float64; the template's is"),
    (lambda sd: sd.update({"fc.weight": [1.0]}), "'fc.weight' is a list, not a tensor"),
    (lambda sd: sd.pop("stem.1.running_var"), "no buffer 'stem.1.running_var'"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(change, message):
    model, x = build("resnet18")
    template = converters.from_torch(model, x)
    sd = dict(model.state_dict())
    change(sd)
    with pytest.raises(TemplateMismatch, match=message) as err:
        converters.from_state_dict(template, sd, where="ckpt.pt")
    assert str(err.value).startswith("ckpt.pt: ") and "\n" not in str(err.value)


class _Permuted(nn.Module):
    """Reads a persistent buffer's values as an index: the buffer is structure."""

    def __init__(self, order):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("order", torch.tensor(order))

    def forward(self, x):
        return self.lin(x)[:, self.order] + self.lin(x)


def test_buffers_read_as_constants_are_structure():
    x = torch.randn(2, 4)
    a, b = _Permuted([1, 0, 2, 3]).eval(), _Permuted([3, 2, 1, 0]).eval()
    template = converters.from_torch(a, x)
    assert template.param_index.constant_buffers == ("order",)
    b.load_state_dict({**b.state_dict(), "lin.weight": a.lin.weight * 2, "lin.bias": a.lin.bias})
    with pytest.raises(TemplateMismatch, match="buffer 'order' holds other values"):
        converters.from_state_dict(template, b.state_dict())
    templates = converters.Templates()
    ga, gb = templates.from_torch(a, x), templates.from_torch(b, x)
    assert len(templates) == 2  # one key, two traces: the buffer's values differ
    _assert_same_graph(gb, converters.from_torch(b, x))
    _assert_same_graph(ga, converters.from_torch(a, x))
    # BatchNorm statistics are values, not structure
    assert converters.from_torch(*build("resnet18")).param_index.constant_buffers == ()


class _LinReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class _ReLULin(_LinReLU):  # identical state dict, other wiring
    def forward(self, x):
        return self.b(self.a(torch.relu(x)))


class _Act(_LinReLU):  # one class, wiring chosen by an attribute
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.b(getattr(torch, self.act)(self.a(x)))


def test_same_state_dict_layout_other_wiring_never_shares_a_template():
    x = torch.randn(2, 4)
    models = [_LinReLU(), _ReLULin(), _Act("relu"), _Act("tanh")]
    assert len({tuple((k, v.shape) for k, v in m.state_dict().items()) for m in models}) == 1
    hooked = _LinReLU()
    hooked.a.register_forward_hook(lambda mod, inp, out: out * 2)
    models.append(hooked)
    templates = converters.Templates()
    graphs = [templates.from_torch(m.eval(), x) for m in models]
    assert len({converters.module_key(m, x) for m in models}) == len(models)
    for m, g in zip(models, graphs):
        _assert_same_graph(g, converters.from_torch(m, x))
        assert g.model is m
    signatures = {converters.signature(g) for g in graphs}
    assert len(signatures) == len(models) - 1  # _Act("relu") is wired as _LinReLU: one structure
    assert len(templates) == len(models) - 1 and graphs[0].edge_index is graphs[2].edge_index


def test_templates_trace_once_per_architecture(monkeypatch):
    import converters.templates as T

    calls = []
    monkeypatch.setattr(T, "from_torch", lambda *a, **k: calls.append(1) or converters.from_torch(*a, **k))
    templates = converters.Templates()
    x = torch.randn(2, 3, 8, 8)
    graphs = []
    for seed in range(4):
        torch.manual_seed(seed)
        model, _ = build("vit")  # a new instance each time, as a script loading checkpoints would make
        _perturbed(model, seed)
        graphs.append((model, templates.from_torch(model, x)))
    assert len(calls) == 1 and len(templates) == 1
    for model, g in graphs:
        _assert_same_graph(g, converters.from_torch(model, x))
        assert g.edge_index is graphs[0][1].edge_index
    assert converters.signature(graphs[0][1]) == converters.signature(graphs[3][1])


# --- ONNX ---------------------------------------------------------------------------------------

def _export(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False).model_proto


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """One export, the same file with every weight moved (external data), another architecture."""
    folder = tmp_path_factory.mktemp("onnx")
    model, x = build("small_cnn")
    proto = _export(model, x)
    onnx.save(proto, str(folder / "a.onnx"))
    weights = converters.from_onnx(proto).model.onnx_names
    gen = np.random.default_rng(0)
    for t in proto.graph.initializer:
        if t.name in weights:
            value = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(value + gen.standard_normal(value.shape).astype(value.dtype), t.name))
    onnx.save(proto, str(folder / "b.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="b.data", size_threshold=0)
    onnx.save(_scaled(2.0), str(folder / "c.onnx"))
    return folder, x


def test_onnx_files_of_one_architecture_share_a_template(onnx_files):
    folder, x = onnx_files
    template = converters.from_onnx(folder / "a.onnx")
    g = converters.from_onnx(folder / "b.onnx", template=template)
    _assert_same_graph(g, converters.from_onnx(folder / "b.onnx"))
    for key in STRUCTURE:
        assert getattr(g, key).data_ptr() == getattr(template, key).data_ptr(), key
    expected = converters.from_onnx(folder / "b.onnx")
    written = converters.to_onnx(g)  # values written back from the graph: the file's own
    assert structure_key(written) == structure_key(expected.onnx)
    _assert_same_graph(converters.from_onnx(written), expected)
    with pytest.raises(TemplateMismatch, match="c.onnx: the opset list differs from the template's file"):
        converters.from_onnx(folder / "c.onnx", template=template)
    templates = converters.Templates()
    graphs = [templates.from_onnx(folder / n) for n in ("a.onnx", "b.onnx", "c.onnx", "b.onnx")]
    assert len(templates) == 2 and graphs[1].edge_index is graphs[3].edge_index
    _assert_same_graph(graphs[3], expected)


def _scaled(factor, op="Mul"):
    """``x @ W * factor``: the factor is a constant (one repeated value), W a parameter."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 * factor
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.full(3, factor, np.float32))),
             helper.make_node(op, ["h", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_constants_are_structure():
    template = converters.from_onnx(_scaled(2.0))
    assert [n for n, _, _ in template.param_index.params] == ["W"]
    same = converters.from_onnx(_scaled(2.0), template=template)
    assert torch.equal(same.edge_value, template.edge_value)
    with pytest.raises(TemplateMismatch, match="constant 's' holds other values"):
        converters.from_onnx(_scaled(3.0), template=template)
    with pytest.raises(TemplateMismatch, match=r"the model: node 2 \(Add 'y'\) differs from the template's file"):
        converters.from_onnx(_scaled(2.0, "Add"), template=template)
    with pytest.raises(converters.ConversionError, match="not converted from ONNX"):
        converters.from_onnx(_scaled(2.0), template=converters.from_torch(*build("mlp")))
    proto = _scaled(2.0)
    converters.from_onnx(proto)  # a caller's proto keeps its data
    assert len(proto.graph.initializer[0].raw_data) == 48


def test_a_template_loaded_from_disk_serves_as_well(tmp_path):
    a, b = _Permuted([1, 0, 2, 3]).eval(), _perturbed(_Permuted([1, 0, 2, 3]).eval())
    x = torch.randn(2, 4)
    template = converters.from_torch(a, x)
    converters.save_graph(template, tmp_path / "t.pt")
    loaded = converters.load_graph(tmp_path / "t.pt")
    assert loaded.param_index.constant_buffers == ("order",)
    assert converters.signature(loaded) == converters.signature(template)
    assert converters.signature(loaded) != converters.signature(converters.from_torch(_Permuted([3, 2, 1, 0]), x))
    g = converters.from_state_dict(loaded, b.state_dict())
    _assert_same_graph(g, converters.from_torch(b, x))
    assert converters.state_values(loaded, b.state_dict()).equal(converters.parameter_values(g))


def test_the_memory_estimate_follows_the_measured_peak(monkeypatch):
    """VGG-19 from ONNX (143.7 M float32 scalars, 0.54 GiB) was refused with 7.4 GiB free (16 bytes
    per weight byte estimated); the measured peak is under 12 (benchmarks/convert_speed.py)."""
    from converters import limits, onnx_frontend

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[143_667_240])  # declared: no values
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
    proto = helper.make_model(graph)
    onnx_frontend._check_memory(proto, 143_667_240 * 4, int(7.4 * 2**30), "vgg19.onnx")
    assert limits.conversion_bytes(143_667_240) < 7.4 * 2**30
    with pytest.raises(converters.ConversionError, match="vgg19.onnx: converting 143,667,240 tensor values"):
        onnx_frontend._check_memory(proto, 143_667_240 * 4, int(6 * 2**30), "vgg19.onnx")
