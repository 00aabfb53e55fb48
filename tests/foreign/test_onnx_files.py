"""ONNX files nobody here wrote: the model zoo networks and the operator test models shipped in
the ``onnx`` package (``onnx/backend/test/data``), with the reference outputs stored beside them.

Every file is run by gmn's ONNX executor against its stored outputs, converted, perturbed
(the zoo's "light" files hold one repeated number per tensor, which would hide a wrong
permutation), checked for conservation, written back and run by onnxruntime, and moved by
random symmetries with the outputs compared in float64. The large zoo networks run when
``GMN_EXTENDED=1``.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import converters
from converters.onnx_frontend import OnnxModule, from_onnx, load_onnx, to_onnx
from converters.vocab import NodeType
from gmn import symmetry

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
ZOO = sorted(p.stem.removeprefix("light_") for p in (DATA / "light").glob("light_*.onnx"))
FAST_ZOO = {"squeezenet", "shufflenet", "inception_v1"}
EXTENDED = os.environ.get("GMN_EXTENDED") == "1"
OPERATOR_MODELS = sorted(p.parent for folder in ("pytorch-converted", "pytorch-operator", "simple")
                         for p in (DATA / folder).glob("*/model.onnx"))
#: operator models gmn refuses, with the words of the refusal
REFUSED = {"test_gradient_of_add": "Gradient", "test_gradient_of_add_and_mul": "Gradient", "test_shrink": "Shrink",
           **{f"test_sequence_model{i}": "Sequence" for i in (1, 2, 3, 4, 5, 6, 8)}}


def _tensor(path: Path) -> torch.Tensor | None:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(t)
    return None if array.dtype == object else torch.from_numpy(array.copy())


def _ort(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _noisy(g, seed: int = 0):
    """Every parameter drawn at a scale that keeps a deep network's activations finite, every
    normalisation statistic moved; the graph with those values."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for _, shape, _ in g.param_index.params:
        n = math.prod(shape)
        if len(shape) >= 2:
            parts.append(torch.randn(n, generator=gen) / math.sqrt(n / shape[0]))
        else:
            parts.append(0.5 + 0.5 * torch.rand(n, generator=gen))
    values = torch.cat(parts).to(g.edge_value.dtype)
    variances = {n.input[4] for n in g.onnx.graph.node if n.op_type == "BatchNormalization" and len(n.input) > 4}
    key = {v: k for k, v in g.model.onnx_names.items()}
    buffers = {k: (0.5 + torch.rand(b.shape, generator=gen) if key.get(k, k) in variances
                   else 0.1 * torch.randn(b.shape, generator=gen)).to(b.dtype)
               for k, b in g.param_index.buffers.items() if b.is_floating_point()}
    return converters.with_values(g, values, buffers)


def _float64(g, x: torch.Tensor) -> torch.Tensor:
    """The graph's model in float64 with the graph's values, on ``x``; log-probabilities are
    compared where the output is a softmax (differences in the tail stay visible)."""
    model = copy.deepcopy(g.model).double()
    model.load_state_dict(converters.to_state_dict(g))
    with torch.no_grad():
        y = model(x.double())
    return y.reshape(-1)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).double().reshape(-1), torch.as_tensor(b).double().reshape(-1)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _weight_inputs(proto: onnx.ModelProto) -> set[str]:
    """Names feeding the weight inputs of the file's layers (what must be parameters)."""
    slots = {"Conv": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2)}
    origin = {}
    for n in proto.graph.node:  # a weight reshaped or cast on its way into the layer is still that weight
        if n.op_type in ("Reshape", "Identity", "Cast", "Transpose", "Unsqueeze", "Squeeze", "Flatten"):
            origin[n.output[0]] = origin.get(n.input[0], n.input[0])
    return {origin.get(n.input[i], n.input[i]) for n in proto.graph.node for i in slots.get(n.op_type, ())
            if len(n.input) > i}


@pytest.fixture(scope="module", params=ZOO)
def zoo_file(request):
    name = request.param
    if name not in FAST_ZOO and not EXTENDED:
        pytest.skip("large zoo network: GMN_EXTENDED=1")
    path = DATA / "light" / f"light_{name}.onnx"
    g = from_onnx(path)
    return name, path, g, _noisy(g)


def test_zoo_file_conserves_its_weights(zoo_file):
    name, path, g, _ = zoo_file
    proto = onnx.load(str(path))
    names = {n for n, _, _ in g.param_index.params}
    assert _weight_inputs(proto) <= names, f"{name}: weights that are no parameters"
    assert int(g.num_param_edges) == sum(p.numel() for p in g.model.parameters())
    state = converters.to_state_dict(g)
    for key, value in g.model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_zoo_file_writes_back_what_onnxruntime_runs(zoo_file):
    name, path, g, noisy = zoo_file
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    written = to_onnx(noisy)
    onnx.checker.check_model(written)
    y = _ort(written, x)
    assert _rel(y, _float64(noisy, x)) < 1e-4, f"{name}: onnxruntime disagrees with the graph's values"
    assert _rel(y, _ort(to_onnx(g), x)) > 1e-3, f"{name}: new values did not change the outputs"
    assert _rel(_ort(to_onnx(g), x), _ort(onnx.load(str(path)), x)) < 1e-5  # unchanged values: the file's outputs


def test_zoo_file_symmetries_are_sound(zoo_file):
    name, _, _, noisy = zoo_file
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    y = _float64(noisy, x).clamp(min=1e-300).log()
    hidden = noisy.node_type == int(NodeType.HIDDEN)
    g2, pi, _ = symmetry.random_symmetry(noisy, seed=0, return_maps=True)
    assert _rel(_float64(g2, x).clamp(min=1e-300).log(), y) < 1e-9, f"{name}: a symmetry changed the outputs"
    assert bool(((pi != torch.arange(noisy.num_nodes)) & hidden).any()), f"{name}: no hidden neuron moved"


def test_zoo_file_free_groups_are_symmetries(zoo_file):
    """The groups alignment matches by coordinate descent (free: every permutation of their units
    a symmetry) are: three of them, each permuted alone, are automorphisms, and all of them
    permuted at once leave the float64 outputs unchanged."""
    from gmn.weightspace.alignment import _template

    name, _, _, noisy = zoo_file
    fg = _template(noisy).free
    assert fg.units, f"{name}: no free group (a plain CNN's layers should be)"
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    together = torch.arange(noisy.num_nodes)
    alone = set(torch.randperm(len(fg.units), generator=gen)[:3].tolist())
    for group in range(len(fg.units)):
        nodes = fg.nodes(group)
        image = nodes[torch.randperm(fg.units[group], generator=gen)].reshape(-1)
        if group in alone:
            single = torch.arange(noisy.num_nodes)
            single[nodes.reshape(-1)] = image
            symmetry.permute_values(noisy, single)  # raises unless an automorphism
        together[nodes.reshape(-1)] = image
    values, buffers, _ = symmetry.permute_values(noisy, together)
    moved = converters.with_values(noisy, values, buffers)
    y = _float64(noisy, x).clamp(min=1e-300).log()
    assert _rel(_float64(moved, x).clamp(min=1e-300).log(), y) < 1e-9, f"{name}: free groups changed the outputs"


@pytest.mark.parametrize("folder", OPERATOR_MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_operator_model_matches_reference_and_converts(folder):
    data = folder / "test_data_set_0"
    inputs = [_tensor(p) for p in sorted(data.glob("input_*.pb"))]
    outputs = [_tensor(p) for p in sorted(data.glob("output_*.pb"))]
    if any(t is None for t in inputs + outputs):
        pytest.skip("sequence-typed test data")
    if folder.name in REFUSED:
        with pytest.raises(converters.ConversionError, match=REFUSED[folder.name]):
            from_onnx(folder / "model.onnx", tuple(inputs))
        return
    module = OnnxModule(load_onnx(folder / "model.onnx"))
    with torch.no_grad():
        got = module(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, outputs):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5, equal_nan=True,
                                   msg=f"{folder.name}: differs from the stored output")
    g = from_onnx(folder / "model.onnx", tuple(inputs))
    assert int(g.num_param_edges) == sum(p.numel() for p in g.model.parameters())
    if not g.param_index.params or not all(t.is_floating_point() for t in inputs):
        return
    noisy = _noisy(g)
    x = tuple(t.double() for t in inputs)
    model = copy.deepcopy(g.model).double()
    model.load_state_dict(converters.to_state_dict(noisy))
    with torch.no_grad():
        y = torch.cat([t.reshape(-1) for t in (model(*x) if isinstance(model(*x), tuple) else (model(*x),))])
    for seed in range(2):
        model.load_state_dict(converters.to_state_dict(symmetry.random_symmetry(noisy, seed=seed)))
        with torch.no_grad():
            out = model(*x)
        out = torch.cat([t.reshape(-1) for t in (out if isinstance(out, tuple) else (out,))])
        assert _rel(out, y) < 1e-9, f"{folder.name}: seed {seed} changed the outputs"
