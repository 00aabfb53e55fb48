"""Model files are hostile: property-based probes over every surface a file controls.

Each family draws mutated inputs (Hugging Face folders, ONNX graphs with size-controlling ops,
``.pt`` zip archives, saved graphs) and classifies every outcome: ``refused`` (a ``ValueError``
whose message is one line naming the file or node) or ``correct`` (the result checked against
the file). Any other outcome fails the test; the counts of both are asserted. Nothing from a
model folder may run: every folder holds code that would write a marker file if it ran.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import shutil
import sys
import time
import zipfile
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
from converters import limits, onnx_ops
from converters.vocab import NodeType


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)


def _one_line(err: BaseException, *names: str) -> None:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    assert "weights_only=False" not in message
    assert any(n in message for n in names), (names, message)


class _Peak:
    """Peak resident memory of this process while the block runs (Linux ``clear_refs``), so a
    refusal can be shown to come before the allocation it refuses."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.ok = True
        except OSError:
            self.ok = False
        return self

    def __exit__(self, *exc):
        self.kib = 0
        if self.ok:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.kib = int(line.split()[1])
        return False

    def rise(self, before_kib: int) -> int:
        return max(self.kib - before_kib, 0) * 1024


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- Hugging Face folders ---------------------------------------------------------------------
MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('code from the model folder ran')\n"


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _hf_mutation(data, folder: Path, marker: Path) -> str:
    """Mutate a copy of a GPT-2 folder in place; returns what was done."""
    from safetensors.torch import load_file, save_file

    for name in ("configuration_x.py", "modeling_x.py", "__init__.py"):  # code that must never run
        (folder / name).write_text(MARKER_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    kind = data.draw(st.sampled_from(["none", "none", "none", "auto_map", "auto_map_known", "architectures",
                                      "model_type", "huge", "drop", "extra", "rename", "shape", "dtype", "not_object",
                                      "sparse", "shard_escape"]))
    if kind == "auto_map":
        config.update(model_type="x-custom", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                       "AutoModel": "modeling_x.XModel"})
    elif kind == "auto_map_known":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XModel"}
    elif kind == "architectures":
        config["architectures"] = data.draw(st.sampled_from([
            "GPT2LMHeadModel", ["BertModel"], ["FooModel"], [], None, 5, ["AutoModel"], ["__class__"],
            ["GPT2LMHeadModel", "GPT2Model"], ["GPT2Model"], ["GPT2LMHeadModel"], ["PreTrainedModel"]]))
    elif kind == "model_type":
        config["model_type"] = data.draw(st.sampled_from(["bert", "x-unknown", 3, None]))
    elif kind == "huge":  # trillions of parameters: refused from the config, before anything is built
        config.update(n_layer=data.draw(st.integers(48, 96)), n_embd=65536, n_head=64)
    elif kind in ("drop", "rename") and tensors:
        keys = data.draw(st.lists(st.sampled_from(sorted(tensors)), min_size=1, unique=True))
        for k in keys:
            value = tensors.pop(k)
            if kind == "rename":
                tensors[k + ".renamed"] = value
    elif kind == "extra":
        tensors["transformer.extra.weight"] = torch.zeros(3)
    elif kind == "shape":
        k = data.draw(st.sampled_from(sorted(tensors)))
        tensors[k] = torch.zeros(tensors[k].numel() + 1)
    elif kind == "dtype":
        k = data.draw(st.sampled_from(sorted(tensors)))
        tensors[k] = tensors[k].to(data.draw(st.sampled_from([torch.int8, torch.int64, torch.float16])))
    if kind == "not_object":
        (folder / "config.json").write_text(json.dumps(data.draw(st.sampled_from([[], "x", 3]))))
    else:
        (folder / "config.json").write_text(json.dumps(config))
    if kind == "sparse":  # an 8 GiB config.json that takes no disk
        with open(folder / "config.json", "r+b") as f:
            f.truncate(8 << 30)
    if kind == "shard_escape":
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: "../outside.safetensors" for k in tensors}}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return kind


def _hf_correct(model, folder: Path) -> None:
    """Every parameter and persistent buffer of the built model is the file's tensor."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    assert type(model).__name__ == config["architectures"][0]
    files = load_file(folder / "model.safetensors")
    prefix = model.base_model_prefix
    for key, value in model.state_dict().items():
        source = files.get(key, files.get(f"{prefix}.{key}"))
        if source is None:  # a tied head: the same storage as a loaded parameter
            assert any(value.data_ptr() == p.data_ptr() for n, p in model.state_dict().items() if n != key), key
            continue
        assert value.dtype == source.dtype or (value.is_floating_point() and source.is_floating_point()), key
        assert torch.equal(value, source.to(value.dtype)), key


def test_hugging_face_folders_never_run_code_and_never_invent_weights(gpt2_folder, tmp_path_factory, monkeypatch):
    from gmn.checkpoints import hf_model

    base = tmp_path_factory.mktemp("hf-probes")
    marker = base / "MARKER"
    counts: Counter = Counter()
    serial = itertools.count()
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 100))  # as under `yes | gmn convert DIR`

    @_settings(40)
    @given(st.data())
    def probe(data):
        folder = base / f"m{next(serial)}"
        shutil.copytree(gpt2_folder, folder)
        kind = _hf_mutation(data, folder, marker)
        start = time.perf_counter()
        try:
            model, _ = hf_model(folder)
        except ValueError as err:
            _one_line(err, str(folder))
            counts["refused"] += 1
        else:
            _hf_correct(model, folder)
            counts["correct"] += 1
        finally:
            shutil.rmtree(folder)
        assert not marker.exists(), f"code from the model folder ran ({kind})"
        assert time.perf_counter() - start < 20, kind  # nothing builds a huge random model first

    probe()
    assert sys.stdin.read(2) == "y\n"  # nothing read the answers
    print("hugging face folders:", dict(counts))
    assert set(counts) == {"refused", "correct"}, counts


# --- ONNX graphs whose sizes come from the file ----------------------------------------------
def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _size_model(data) -> tuple[onnx.ModelProto, str]:
    """x (2, 3) -> Gemm with a weight -> h (2, 3), then one op whose output size the file sets."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "W")]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1)]
    big = data.draw(st.sampled_from([1, 2, 3, 7, 10**5, 10**6, 10**9, 2**40]))
    op = data.draw(st.sampled_from(["Tile", "Range", "Pad", "Expand", "ConstantOfShape", "MatMul", "Gather",
                                    "Concat", "Sum", "ConvPads", "PoolPads", "ConvTransposeStride", "Reshape"]))

    def const(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))

    if op == "Tile":
        const("reps", [big, data.draw(st.sampled_from([1, big]))])
        nodes.append(helper.make_node("Tile", ["h", "reps"], ["y"]))
    elif op == "Range":
        const("start", 0.0, np.float32), const("limit", float(big), np.float32)
        const("delta", data.draw(st.sampled_from([1.0, 0.5, -1.0, 0.0])), np.float32)
        nodes += [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
                  helper.make_node("ReduceSum", ["r"], ["rs"], keepdims=0),
                  helper.make_node("Add", ["h", "rs"], ["y"])]
    elif op == "Pad":
        const("pads", [0, 0, big, data.draw(st.sampled_from([0, big, -1]))])
        nodes.append(helper.make_node("Pad", ["h", "pads"], ["y"]))
    elif op == "Expand":
        const("shape", [big, 1, 3])
        nodes += [helper.make_node("Expand", ["h", "shape"], ["e"]), helper.make_node("Add", ["e", "h"], ["y"])]
    elif op == "ConstantOfShape":  # a runtime shape: Shape(h) * big
        const("k", [big, 1])
        nodes += [helper.make_node("Shape", ["h"], ["s"]), helper.make_node("Mul", ["s", "k"], ["sk"]),
                  helper.make_node("ConstantOfShape", ["sk"], ["c"]),
                  helper.make_node("ReduceSum", ["c"], ["cs"], keepdims=0), helper.make_node("Add", ["h", "cs"], ["y"])]
    elif op == "MatMul":  # an outer product of two expanded vectors
        const("n", [min(big, 2**40), 1]), const("m", [1, min(big, 2**40)])
        nodes += [helper.make_node("ReduceSum", ["h"], ["hs"], keepdims=1),
                  helper.make_node("Expand", ["hs", "n"], ["a"]), helper.make_node("Expand", ["hs", "m"], ["b"]),
                  helper.make_node("MatMul", ["a", "b"], ["ab"]),
                  helper.make_node("ReduceMax", ["ab"], ["y"], keepdims=0)]
    elif op == "Gather":  # rows of h gathered by an index expanded to big entries
        const("idx", [0]), const("n", [min(big, 2**40)])
        nodes += [helper.make_node("Expand", ["idx", "n"], ["i"]),
                  helper.make_node("Gather", ["h", "i"], ["g"], axis=0),
                  helper.make_node("ReduceMean", ["g"], ["y"], keepdims=0)]
    elif op == "Concat":  # one input listed many times
        nodes.append(helper.make_node("Concat", ["h"] * min(big, 5000), ["y"], axis=0))
    elif op == "Sum":
        nodes.append(helper.make_node("Sum", ["h"] * min(big, 5000), ["y"]))
    elif op == "ConvPads":
        inits.append(numpy_helper.from_array(rng.standard_normal((2, 1, 1)).astype(np.float32), "K"))
        nodes += [helper.make_node("Unsqueeze", ["h", "ax"], ["h3"]),
                  helper.make_node("Conv", ["h3", "K"], ["y"], pads=[min(big, 2**40), 0])]
        const("ax", [1])
    elif op == "PoolPads":
        nodes += [helper.make_node("Unsqueeze", ["h", "ax"], ["h3"]),
                  helper.make_node("MaxPool", ["h3"], ["y"], kernel_shape=[1], pads=[min(big, 2**40), 0])]
        const("ax", [1])
    elif op == "ConvTransposeStride":
        inits.append(numpy_helper.from_array(rng.standard_normal((1, 2, 1)).astype(np.float32), "K"))
        nodes += [helper.make_node("Unsqueeze", ["h", "ax"], ["h3"]),
                  helper.make_node("ConvTranspose", ["h3", "K"], ["y"], strides=[min(big, 2**40)])]
        const("ax", [1])
    else:  # Reshape keeps the element count whatever the shape says
        const("shape", [big, -1])
        nodes.append(helper.make_node("Reshape", ["h", "shape"], ["y"]))
    graph = helper.make_graph(nodes, "g", [_f("x", [2, 3])], [_f("y", None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), op


def _onnx_correct(g, proto: onnx.ModelProto) -> None:
    """The converted module computes what onnxruntime computes on the same input."""
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    got = g.model(torch.from_numpy(x))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert int(g.num_param_edges) == sum(p.numel() for p in g.model.parameters())


def test_onnx_sizes_are_bounded_before_allocation(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(limits, "free_memory", lambda: 256 << 20)  # one budget on every machine
    base = tmp_path_factory.mktemp("onnx-sizes")
    counts: Counter = Counter()
    rss = _rss_kib()

    @_settings(60)
    @given(st.data())
    def probe(data):
        proto, op = _size_model(data)
        path = base / "m.onnx"
        path.write_bytes(proto.SerializeToString())
        with _Peak() as peak:
            try:
                g = converters.from_onnx(path)
            except converters.ConversionError as err:
                _one_line(err, str(path))
                outcome = "refused"
            else:
                outcome = "correct"
        assert peak.rise(rss) < 600 << 20, (op, peak.kib)  # never near what the file asked for
        if outcome == "correct":
            try:
                _onnx_correct(g, proto)
            except Exception as err:  # onnxruntime refuses some valid-looking files: no comparison then
                if "ort" in type(err).__module__ or "onnxruntime" in type(err).__module__:
                    outcome = "correct (onnxruntime refused)"
                else:
                    raise
        counts[outcome] += 1
        per_op[f"{op}: {outcome}"] += 1

    per_op: Counter = Counter()
    probe()
    print("onnx sizes:", dict(counts), dict(per_op))
    assert counts["refused"] > 0 and counts["correct"] > 0
    assert set(counts) <= {"refused", "correct", "correct (onnxruntime refused)"}, counts


def test_every_onnx_op_declares_its_size():
    """An op added without saying how much it allocates would run unbounded."""
    assert set(onnx_ops.ONNX_OPS) == set(onnx_ops.SIZES) | onnx_ops.NO_LARGER
    assert not set(onnx_ops.SIZES) & onnx_ops.NO_LARGER


def test_prelu_size_reads_the_slope_as_the_op_does():
    """Opsets 1-6 apply a 1-D slope along the channel axis ((C,) against (N, C, L) with C != L):
    the size check must broadcast it as the op does, not numpy-style."""
    slope = torch.rand(3)
    for shape, opset in (((2, 3, 4), 6), ((2, 3, 4, 5), 6), ((2, 3), 6), ((2, 3), 13)):
        x = torch.randn(shape)
        attrs = {"_opset": opset, "_outputs": 1, "_op": "PRelu"}
        out = onnx_ops.ONNX_OPS["PRelu"]([x, slope], attrs)
        assert onnx_ops.allocation("PRelu", [x, slope], attrs) == out.numel() == x.numel()
        assert torch.equal(out, torch.nn.functional.prelu(x, slope))
    x, slope = torch.randn(2, 3, 4), torch.rand(4)  # opset 7+: numpy-style, along the last axis
    attrs = {"_opset": 13, "_outputs": 1, "_op": "PRelu"}
    out = onnx_ops.ONNX_OPS["PRelu"]([x, slope], attrs)
    assert onnx_ops.allocation("PRelu", [x, slope], attrs) == out.numel()
    assert torch.equal(out, torch.where(x >= 0, x, x * slope))


# --- .pt archives that inflate ----------------------------------------------------------------
def _rezip(src: Path, dst: Path, inflate_entry: int, method: int) -> None:
    """``src`` (a torch.save archive) rewritten with ``method``; its data entry replaced by
    ``inflate_entry`` bytes of zeros when that is non-zero (the storage then declares more than
    the tensor holds: torch must never read it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if inflate_entry and "/data/" in info.filename and info.filename.endswith("/0"):
                payload = bytes(inflate_entry)
            zout.writestr(zipfile.ZipInfo(info.filename, info.date_time), payload, compress_type=method)


def _forge_size(path: Path, size: int) -> None:
    """Declare ``size`` uncompressed bytes for every entry in the central directory (the header
    a reader trusts), data untouched."""
    raw = bytearray(path.read_bytes())
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:
        raw[at + 24: at + 28] = min(size, 0xFFFFFFFE).to_bytes(4, "little")
        at += 4
    path.write_bytes(bytes(raw))


def test_inflating_archives_are_refused_before_torch_load(tmp_path_factory):
    from gmn.checkpoints import load_weights

    base = tmp_path_factory.mktemp("zip")
    weights = {"0.weight": torch.randn(8, 4), "0.bias": torch.randn(8)}
    torch.save(weights, base / "plain.pt")
    g = converters.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 8)), (torch.randn(1, 4),))
    converters.save_graph(g, base / "graph.pt")
    counts: Counter = Counter()
    rss = _rss_kib()

    @_settings(30)
    @given(st.sampled_from(["plain.pt", "graph.pt"]), st.sampled_from([0, 1 << 10, 64 << 20]),
           st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), st.sampled_from([0, 1 << 31, 0xFFFFFFFE]),
           st.booleans())
    def probe(name, inflate, method, forged, legacy):
        path = base / f"probe-{name}"
        if legacy:
            torch.save(weights, path, _use_new_zipfile_serialization=False)
        else:
            _rezip(base / name, path, inflate, method)
            if forged:
                _forge_size(path, forged)
        load = load_weights if name == "plain.pt" else converters.load_graph
        with _Peak() as peak:
            try:
                result = load(path)
            except ValueError as err:
                _one_line(err, str(path))
                outcome = "refused"
            else:
                outcome = "correct"
        assert peak.rise(rss) < 200 << 20, peak.kib
        if outcome == "correct":
            assert not legacy and not forged and not inflate
            if name == "plain.pt":
                assert set(result) == set(weights) and all(torch.equal(result[k], weights[k]) for k in weights)
            else:
                assert torch.equal(result.edge_value, g.edge_value) and torch.equal(result.edge_index, g.edge_index)
        counts[outcome] += 1

    probe()
    print("archives:", dict(counts))
    assert set(counts) == {"refused", "correct"}, counts


# --- saved graphs, tampered -------------------------------------------------------------------
def _graph_mutation(data, payload: dict) -> tuple[dict, str, bool]:
    """A mutated payload, what was done, and whether the checksum was recomputed (a consistent
    file: only the structure check stands between it and a wrong result)."""
    bad = dict(payload)
    index = json.loads(json.dumps(payload["param_index"]))
    kind = data.draw(st.sampled_from(["none", "drop_checksum", "node_type", "edge_type", "node_act", "offset",
                                      "shape_grow", "shape_negative", "duplicate_name", "edge_index", "float_index",
                                      "tied_slot", "value", "index_type"]))
    if kind == "drop_checksum":
        del bad["checksum"]
    elif kind in ("node_type", "edge_type", "node_act"):
        key = kind
        values = payload[key].clone()
        values[data.draw(st.integers(0, len(values) - 1))] = data.draw(st.sampled_from([-1, 99, 2**15 - 1]))
        bad[key] = values
    elif kind == "offset":
        entry = index["params"][data.draw(st.integers(0, len(index["params"]) - 1))]
        entry[2] += data.draw(st.sampled_from([-1, 1, 10**6]))
    elif kind == "shape_grow":
        entry = index["params"][data.draw(st.integers(0, len(index["params"]) - 1))]
        entry[1][0] += 1
    elif kind == "shape_negative":
        index["params"][0][1] = [-(index["params"][0][1][0]), *index["params"][0][1][1:]]
    elif kind == "duplicate_name":
        index["params"][-1][0] = index["params"][0][0]
    elif kind == "edge_index":
        ei = payload["edge_index"].clone()
        ei[0, data.draw(st.integers(0, ei.shape[1] - 1))] = data.draw(st.sampled_from([-1, int(payload["num_nodes"]),
                                                                                        10**9]))
        bad["edge_index"] = ei
    elif kind == "float_index":
        bad["node_type"] = payload["node_type"].float()
    elif kind == "tied_slot":
        bad["tied_slot"] = torch.tensor([10**6])
    elif kind == "value":
        v = payload["edge_value"].clone()
        v[0] += 1
        bad["edge_value"] = v
    elif kind == "index_type":
        index["buffers"] = []
    bad["param_index"] = index
    recompute = kind not in ("none", "drop_checksum", "value") and data.draw(st.booleans())
    if recompute:
        bad["checksum"] = converters.io._checksum({k: v for k, v in bad.items() if k != "checksum"})
    return bad, kind, recompute


def test_tampered_graphs_are_refused(tmp_path_factory):
    base = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    g = converters.from_torch(model, (torch.randn(2, 4),))
    converters.save_graph(g, base / "g.pt")
    payload = torch.load(base / "g.pt", weights_only=True)
    counts: Counter = Counter()

    @_settings(60)
    @given(st.data())
    def probe(data):
        bad, kind, recompute = _graph_mutation(data, payload)
        path = base / "bad.pt"
        torch.save(bad, path)
        try:
            loaded = converters.load_graph(path)
        except converters.ConversionError as err:
            _one_line(err, str(path))
            counts["refused"] += 1
            return
        assert kind == "none", (kind, recompute)  # every change was noticed
        state = converters.to_state_dict(loaded)
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), key
        assert int(loaded.node_type.max()) <= max(NodeType)
        counts["correct"] += 1

    probe()
    print("saved graphs:", dict(counts))
    assert set(counts) == {"refused", "correct"}, counts


def test_oversized_specs_and_example_inputs_are_refused_before_building():
    from gmn.cli import main
    from gmn.zoo.families import build

    start = time.perf_counter()
    with pytest.raises(limits.ResourceLimitError, match="parameters need about"):
        build({"family": "mlp", "depth": 3, "width": 200_000, "act": "relu", "dropout": 0.0}, (1, 28, 28), 10)
    with pytest.raises(limits.ResourceLimitError, match="elements"):
        limits.check_example((1, 3, 30_000, 30_000), "--input-shape 1,3,30000,30000")
    assert main(["inspect", "mlp", "--input-shape", "1,3,30000,30000"]) == 2
    assert time.perf_counter() - start < 10
    assert math.prod((1, 3, 30_000, 30_000)) > limits.MAX_ELEMENTS
