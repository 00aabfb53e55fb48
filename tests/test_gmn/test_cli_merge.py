"""``gmn align``, ``gmn merge`` and ``gmn barrier`` end to end, and their one-line errors."""

import json
import os

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
