"""``gmn align``, ``gmn merge`` and ``gmn barrier`` end to end, and their one-line errors."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import converters
from gmn.cli import main
from gmn.weightspace.symmetry import random_symmetry
from gmn.zoo import datasets
from gmn.zoo.families import build

ARCH = {"family": "mlp", "depth": 2, "width": 12, "act": "relu", "dropout": 0.0}
RES = {"family": "rescnn", "blocks": 1, "width": 6, "act": "relu"}


def _model(arch: dict, seed: int):
    data = datasets.load("digits")
    torch.manual_seed(seed)
    return build(arch, data.input_shape, data.classes).eval(), data


def _pair(tmp_path, arch=ARCH):
    paths = []
    for seed in (0, 1):
        model, _ = _model(arch, seed)
        path = tmp_path / f"m{seed}.safetensors"
        save_file(model.state_dict(), str(path))
        paths.append(str(path))
    return paths


def test_align_writes_the_same_function_in_the_reference_frame(tmp_path, capsys):
    a, b = _pair(tmp_path, RES)
    out = tmp_path / "b_aligned.safetensors"
    assert main(["align", a, b, "--arch", json.dumps(RES), "-o", str(out)]) == 0
    assert "before" in capsys.readouterr().out
    model_b, data = _model(RES, 1)
    aligned, _ = _model(RES, 2)
    aligned.load_state_dict(load_file(str(out)))
    with torch.no_grad():
        torch.testing.assert_close(aligned(data.x_test[:64]), model_b(data.x_test[:64]), rtol=1e-5, atol=1e-5)
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's private 0600


def test_merge_a_model_with_its_permuted_copy_gives_the_model(tmp_path, capsys):
    model, data = _model(ARCH, 0)
    g = converters.from_torch(model, (data.x_train[:2],))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(model.state_dict(), str(a))
    save_file(converters.to_state_dict(random_symmetry(g, seed=1)), str(b))
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(a), str(b), "--arch", json.dumps(ARCH), "-o", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    merged = load_file(str(out))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-6)


def test_merge_onnx_files_writes_onnx_that_runs(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    paths = []
    for seed in (0, 1):
        model, data = _model(ARCH, seed)
        path = tmp_path / f"m{seed}.onnx"
        torch.onnx.export(model, (data.x_train[:2],), str(path), dynamo=True, optimize=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        paths.append(str(path))
    out = tmp_path / "merged.onnx"
    assert main(["merge", *paths, "-o", str(out)]) == 0
    g = converters.from_onnx(out)
    x = data.x_test[:16]
    session = ort.InferenceSession(str(out))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = converters.functional_call(g, None, x)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    # the merged file is neither endpoint
    g0 = converters.from_onnx(paths[0])
    assert not torch.allclose(converters.parameter_values(g), converters.parameter_values(g0))


def test_barrier_writes_table_json_and_plot(tmp_path, capsys):
    a, b = _pair(tmp_path, RES)
    out = tmp_path / "bar"
    assert main(["barrier", a, b, "--arch", json.dumps(RES), "--out", str(out), "--points", "3",
                 "--samples", "128"]) == 0
    text = capsys.readouterr().out
    assert "naive" in text and "aligned" in text
    result = json.loads((out / "barrier.json").read_text())
    assert set(result["curves"]) == {"naive", "aligned"} and len(result["curves"]["naive"]) == 3
    assert (out / "barrier.png").stat().st_size > 0 and (out / "barrier.txt").exists()


@pytest.mark.parametrize("argv, message", [
    (["align", "nope.safetensors", "nope2.safetensors", "-o", "x.safetensors"], "no such file"),
    (["merge", "{a}", "{b}", "--arch", '{"family": "mlp"', "-o", "{out}"], "not valid JSON"),
    (["merge", "{a}", "{b}", "--arch", json.dumps({**ARCH, "width": 13}), "-o", "{out}"], "does not fit --arch"),
    (["merge", "{a}", "{b}", "--arch", json.dumps(ARCH), "--method", "ties", "-o", "{out}"], "give --base"),
    (["merge", "{a}", "{b}", "--arch", json.dumps(ARCH), "-o", "{tmp}/missing/m.safetensors"], "no such folder"),
    (["merge", "{a}", "{b}", "-o", "{out}"], "--arch"),
])
def test_mistakes_are_one_line_exit_2(tmp_path, capsys, argv, message):
    a, b = _pair(tmp_path)
    places = {"{a}": a, "{b}": b, "{out}": str(tmp_path / "m.safetensors"), "{tmp}": str(tmp_path)}
    for key, value in places.items():
        argv = [s.replace(key, value) for s in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gmn: error:") and "\n" not in err and message in err, err


# --- BatchNorm, REPAIR and ONNX files (issue 37) --------------------------------------------

def _trained(arch: dict, seed: int, epochs: int = 2):
    """A briefly trained model (BatchNorm statistics that are no fresh init)."""
    model, data = _model(arch, seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data


@pytest.fixture(scope="module")
def bn_pair(tmp_path_factory):
    """Two trained residual CNNs with BatchNorm as safetensors and as ONNX (dynamo, unoptimised)."""
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("bn")
    for seed in (0, 1):
        model, data = _trained(RES, seed)
        save_file(model.state_dict(), str(root / f"m{seed}.safetensors"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (data.x_train[:2],), str(root / f"m{seed}.onnx"), dynamo=True, optimize=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return root


def _accuracy(text: str, what: str = "merged model") -> float:
    line = next(s for s in text.splitlines() if s.startswith(what))
    return float(line.rsplit("accuracy", 1)[1])


def test_onnx_merge_recomputes_batchnorm_as_the_checkpoint_merge_does(bn_pair, tmp_path, capsys):
    st = [str(bn_pair / f"m{s}.safetensors") for s in (0, 1)]
    ox = [str(bn_pair / f"m{s}.onnx") for s in (0, 1)]
    assert main(["merge", *st, "--arch", json.dumps(RES), "-o", str(tmp_path / "m.safetensors")]) == 0
    out_st = capsys.readouterr().out
    assert main(["merge", *ox, "-o", str(tmp_path / "m.onnx")]) == 0
    out_ox = capsys.readouterr().out
    assert "recomputed BatchNorm statistics" in out_ox
    assert abs(_accuracy(out_ox) - _accuracy(out_st)) < 0.005, (out_st, out_ox)
    for name in ox:  # the endpoints' accuracies are printed, as the checkpoints' are
        assert abs(_accuracy(out_ox, f"input {name}") - _accuracy(out_st, f"input {name[:-5]}.safetensors")) < 1e-6
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    _, data = _model(RES, 0)
    logits = session.run(None, {session.get_inputs()[0].name: data.x_test.numpy()})[0]
    assert abs(float((logits.argmax(-1) == data.y_test.numpy()).mean()) - _accuracy(out_ox)) < 0.005


def test_onnx_barrier_agrees_with_the_checkpoint_barrier(bn_pair, tmp_path):
    st = [str(bn_pair / f"m{s}.safetensors") for s in (0, 1)]
    ox = [str(bn_pair / f"m{s}.onnx") for s in (0, 1)]
    assert main(["barrier", *st, "--arch", json.dumps(RES), "--out", str(tmp_path / "st"), "--points", "3"]) == 0
    assert main(["barrier", *ox, "--out", str(tmp_path / "ox"), "--points", "3"]) == 0
    curves = [json.loads((tmp_path / f / "barrier.json").read_text())["curves"] for f in ("st", "ox")]
    assert set(curves[0]) == set(curves[1]) == {"naive", "aligned"}
    for name in curves[0]:
        for r0, r1 in zip(curves[0][name], curves[1][name]):
            assert abs(r0["loss"] - r1["loss"]) < 1e-3 and abs(r0["accuracy"] - r1["accuracy"]) < 0.005


def test_legacy_onnx_export_is_named_in_one_warning_line(tmp_path, recwarn):
    paths = []
    for seed in (0, 1):
        model, data = _model(RES, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (data.x_train[:2],), str(tmp_path / f"l{seed}.onnx"), dynamo=False)
        paths.append(str(tmp_path / f"l{seed}.onnx"))
    recwarn.clear()
    assert main(["merge", *paths, "-o", str(tmp_path / "m.onnx")]) == 0
    lines = [str(w.message) for w in recwarn if issubclass(w.category, converters.OptimizedOnnxWarning)]
    assert len(lines) == 2 and all("legacy exporter" in s and "BatchNorm" in s and "\n" not in s for s in lines)
    assert {s.split(":", 1)[0] for s in lines} == set(paths)  # each names its file


def test_repair_after_batchnorm_gives_the_heads_the_endpoints_statistics(bn_pair, tmp_path, capsys):
    """REPAIR measures the model as it will run: after its BatchNorm statistics are recomputed
    (before, the recomputation changed what it had corrected: 0.594 -> 0.457 accuracy)."""
    from gmn.activations import neuron_activations

    st = [str(bn_pair / f"m{s}.safetensors") for s in (0, 1)]
    out = tmp_path / "m.safetensors"
    assert main(["merge", *st, "--arch", json.dumps(RES), "--repair", "--samples", "256", "-o", str(out)]) == 0
    assert "REPAIR corrected" in capsys.readouterr().out
    _, data = _model(RES, 0)
    inputs = (data.x_train[:256],)
    graphs = []
    for state in (*(load_file(p) for p in st), load_file(str(out))):
        model, _ = _model(RES, 0)
        model.load_state_dict(state)
        graphs.append(converters.from_torch(model, (data.x_train[:2],)))
    head = [neuron_activations(g, None, inputs) for g in graphs]
    nodes = [u for u in head[2] if u in head[0] and graphs[2].node_depth[u] == graphs[2].node_depth.max()]
    assert nodes  # the class logits (unpermuted by alignment: comparable across the models)
    for u in nodes:
        assert abs(float(head[2][u].mean()) - (float(head[0][u].mean()) + float(head[1][u].mean())) / 2) < 1e-4
        assert abs(float(head[2][u].std()) - (float(head[0][u].std()) + float(head[1][u].std())) / 2) < 1e-4


def test_repair_on_one_input_is_refused_not_nan(tmp_path, capsys):
    a, b = _pair(tmp_path)
    assert main(["merge", a, b, "--arch", json.dumps(ARCH), "--repair", "--samples", "1",
                 "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "at least 2 inputs" in err and "\n" not in err.strip()


def test_onnx_layers_give_no_activations(tmp_path):
    """An ONNX module path is no layer: what ran first in it is not its output (width 8 on 8x8
    digits made the image's last axis look like the channels)."""
    pytest.importorskip("onnxscript")
    from gmn.activations import neuron_activations

    arch = {"family": "cnn", "depth": 2, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}
    model, data = _model(arch, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (data.x_train[:2],), str(tmp_path / "c.onnx"), dynamo=True, optimize=False,
                          verbose=False)
    assert neuron_activations(converters.from_onnx(tmp_path / "c.onnx"), None, (data.x_train[:2],)) == {}
    assert neuron_activations(converters.from_torch(model, (data.x_train[:2],)), None, (data.x_train[:2],))


def test_batchnorm_without_a_runnable_model_is_refused(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        model, data = _model(RES, seed)
        paths.append(str(tmp_path / f"g{seed}.pt"))
        converters.save_graph(converters.from_torch(model, (data.x_train[:2],)), paths[-1])
    assert main(["merge", *paths, "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "BatchNorm" in err and "saved graph" in err and not (tmp_path / "m.pt").exists()


# --- every format in every command (issue 37) ------------------------------------------------

def _gpt2_folders(tmp_path) -> list:
    transformers = pytest.importorskip("transformers")
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
        model = transformers.GPT2LMHeadModel(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)  # every weight perturbed, LayerNorms included
        model.save_pretrained(tmp_path / f"gpt{seed}")
        folders.append(str(tmp_path / f"gpt{seed}"))
    return folders


def test_hugging_face_folders_align_and_merge_into_folders_transformers_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from gmn.checkpoints import load_graph, read_provenance
    from gmn.weightspace.alignment import align
    from gmn.weightspace.merging import interpolate

    a, b = _gpt2_folders(tmp_path)
    x = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(5))
    assert main(["align", a, b, "-o", str(tmp_path / "aligned")]) == 0
    assert main(["merge", a, b, "-o", str(tmp_path / "merged")]) == 0
    assert "not evaluated on digits" in capsys.readouterr().out
    load = transformers.AutoModelForCausalLM.from_pretrained
    with torch.no_grad():  # aligned: B's function in A's frame; merged: the in-memory merge, exactly
        torch.testing.assert_close(load(tmp_path / "aligned").eval()(x).logits, load(b).eval()(x).logits,
                                   rtol=1e-5, atol=1e-5)
        ga, gb = load_graph(a), load_graph(b)
        expected = converters.functional_call(interpolate([ga, align(ga, gb)]), None, x).logits
        torch.testing.assert_close(load(tmp_path / "merged").eval()(x).logits, expected, rtol=0, atol=1e-6)
    record = read_provenance(tmp_path / "merged")
    assert record["arch"]["config"]["model_type"] == "gpt2" and set(record["sources"]) == {a, b}
    assert record["command"][:2] == ["gmn", "merge"]
    assert main(["merge", a, b, "-o", str(tmp_path / "merged")]) == 2  # an output folder is never replaced
    assert "--force" in capsys.readouterr().err


def test_a_folder_output_of_no_hugging_face_model_is_refused(tmp_path, capsys):
    a, b = _pair(tmp_path)
    assert main(["merge", a, b, "--arch", json.dumps(ARCH), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face model" in err and not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no half-written folder left behind


def test_written_checkpoints_carry_their_provenance(tmp_path):
    import hashlib

    from gmn.checkpoints import read_provenance

    a, b = _pair(tmp_path)
    out = tmp_path / "aligned.safetensors"
    assert main(["align", a, b, "--arch", json.dumps(ARCH), "-o", str(out)]) == 0
    record = read_provenance(out)
    assert record["arch"] == ARCH
    assert record["sources"] == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (a, b)}
    assert record["command"] == ["gmn", "align", a, b, "--arch", json.dumps(ARCH), "-o", str(out)]
