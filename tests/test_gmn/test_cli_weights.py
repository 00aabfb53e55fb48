"""``gmn generate`` and ``gmn edit`` write runnable checkpoints (safetensors and ONNX)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gmn.cli import main
from gmn.zoo import datasets
from gmn.zoo.families import build
from gmn.zoo.zoo import Zoo

SMALL = ["--train-epochs", "1", "--hidden", "8", "--layers", "1", "--batch-size", "4"]
UNSEEN = {"family": "cnn", "depth": 2, "width": 12, "kernel": 3, "act": "relu", "dropout": 0.0}


def test_generate_writes_runnable_checkpoints_for_an_unseen_architecture(tiny_zoo, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "gen"
    assert main(["generate", str(tiny_zoo), "--out", str(out), "--count", "2", "--steps", "2", "--onnx",
                 "--generator", "gmn", "--arch", json.dumps(UNSEEN), "--target", "0.5", *SMALL]) == 0
    report = json.loads((out / "generated.json").read_text())
    assert len(report) == 2 and all(0.0 <= r["test_acc"] <= 1.0 for r in report)
    data = datasets.load("digits")
    model = build(UNSEEN, data.input_shape, data.classes).eval()
    model.load_state_dict(load_file(out / "generated-001.safetensors"))
    x = data.x_test[:5]
    session = ort.InferenceSession(str(out / "generated-001.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert "mean test accuracy" in capsys.readouterr().out


def test_canonical_generation_writes_runnable_batchnorm_checkpoints(resnet_zoo, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", str(resnet_zoo), "--out", str(out), "--count", "3", "--steps", "2",
                 "--recompute-batchnorm", "--target", "0.9", "--train-epochs", "1", "--hidden", "16"]) == 0
    report = json.loads((out / "generated.json").read_text())
    assert len(report) == 3 and all(0.0 <= r["test_acc"] <= 1.0 for r in report)
    zoo = Zoo(resnet_zoo)
    member = next(iter(zoo.members()))
    model, _ = zoo.model(member)
    state = load_file(out / "generated-002.safetensors")
    assert state.keys() == zoo.weights(member).keys()
    model.load_state_dict(state)
    data = datasets.load("digits")
    with torch.no_grad():
        acc = float((model.eval()(data.x_test).argmax(-1) == data.y_test).float().mean())
    assert acc == pytest.approx(report[2]["test_acc"], abs=1e-6)
    # statistics recomputed on the training inputs: the first BatchNorm's input mean, averaged over batches of 128
    with torch.no_grad():
        means = torch.stack([model.stem[0](x).mean((0, 2, 3)) for x in data.x_train.split(128)])
    torch.testing.assert_close(state["stem.1.running_mean"], means.mean(0), rtol=1e-4, atol=1e-5)


def test_generate_says_how_far_samples_land_from_the_requested_accuracy(resnet_zoo, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", str(resnet_zoo), "--out", str(out), "--count", "3", "--steps", "2",
                 "--target", "1.5", "--train-epochs", "1", "--hidden", "16"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    reached = sorted(r["test_acc"] for r in json.loads((out / "generated.json").read_text()))
    accs = [m["test_acc"] for m in Zoo(resnet_zoo).members()]
    assert line == (f"requested test accuracy 1.5000: samples' median {reached[1]:.4f} (gap {reached[1] - 1.5:+.4f}); "
                    f"OUTSIDE the training checkpoints' range {min(accs):.4f}-{max(accs):.4f}")


def test_canonical_generation_refuses_architectures_the_zoo_lacks(tiny_zoo, tmp_path, capsys):
    assert main(["generate", str(tiny_zoo), "--out", str(tmp_path), "--arch", json.dumps(UNSEEN), *SMALL]) == 2
    assert "use --generator gmn for other shapes" in capsys.readouterr().err


def test_the_hypernetwork_is_refused_on_a_zoo_of_models(tiny_zoo, tmp_path, capsys):
    assert main(["generate", str(tiny_zoo), "--out", str(tmp_path), "--generator", "hypernetwork", "--target", "30",
                 *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "writes adapters for the tasks of a LoRA zoo gmn built" in err and "\n" not in err


def test_edit_writes_edited_checkpoints_of_the_test_members(tiny_zoo, tmp_path):
    out = tmp_path / "edit"
    assert main(["edit", str(tiny_zoo), "--out", str(out), "--objective", "forget:3", "--probes", "8", *SMALL]) == 0
    report = json.loads((out / "edited.json").read_text())
    assert report and all("test_acc_after" in r for r in report)
    zoo = Zoo(tiny_zoo)
    member = next(m for m in zoo.members() if m["path"] == report[0]["source"])
    edited, source = load_file(out / report[0]["file"]), zoo.weights(member)
    assert edited.keys() == source.keys() and all(edited[k].shape == source[k].shape for k in source)
    assert any(not torch.equal(edited[k], source[k]) for k in source)


def test_edit_refuses_unknown_objectives(tiny_zoo, tmp_path, capsys):
    assert main(["edit", str(tiny_zoo), "--out", str(tmp_path), "--objective", "sharpen", *SMALL]) == 2
    assert "unknown objective" in capsys.readouterr().err


def test_edited_batchnorm_members_keep_their_own_statistics(tmp_path):
    from gmn.zoo import build_zoo

    zoo = tmp_path / "zoo"
    build_zoo(zoo, "mixed", runs=4, epochs=1, workers=1, progress=False).close()  # runs 1 and 3: rescnn
    out = tmp_path / "edit"
    assert main(["edit", str(zoo), "--out", str(out), "--objective", "forget:3", "--members", "all", *SMALL]) == 0
    report = json.loads((out / "edited.json").read_text())
    members = {m["path"]: m for m in Zoo(zoo).members()}
    checked = 0
    for row in report:
        source = Zoo(zoo).weights(members[row["source"]])
        edited = load_file(out / row["file"])
        for name in (k for k in source if "running_" in k):
            torch.testing.assert_close(edited[name], source[name], rtol=0, atol=0)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("generator, hidden", [("canonical", 512), ("gmn", 32)])
def test_generate_defaults_depend_on_the_generator(tiny_zoo, tmp_path, monkeypatch, generator, hidden):
    import gmn.tasks.canonical_generation as canonical
    import gmn.tasks.generation as equivariant

    seen = {}

    def capture(*args, **kwargs):
        seen["config"] = next(a for a in args if hasattr(a, "hidden"))
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(canonical, "fit_canonical_generator", capture)
    monkeypatch.setattr(equivariant, "fit_generator", capture)
    with pytest.raises(KeyboardInterrupt):
        main(["generate", str(tiny_zoo), "--out", str(tmp_path), "--generator", generator])
    assert seen["config"].hidden == hidden
    with pytest.raises(KeyboardInterrupt):
        main(["generate", str(tiny_zoo), "--out", str(tmp_path), "--generator", generator, "--hidden", "8"])
    assert seen["config"].hidden == 8


def test_generated_checkpoints_name_their_architecture_and_nearest_training_checkpoint(resnet_zoo, tmp_path, capsys):
    import converters
    from gmn.checkpoints import file_sha256, read_provenance
    from gmn.weightspace.alignment import aligned_distance

    out = tmp_path / "gen"
    assert main(["generate", str(resnet_zoo), "--out", str(out), "--count", "2", "--steps", "2",
                 "--train-epochs", "1", "--hidden", "16"]) == 0
    assert "nearest training checkpoint" in capsys.readouterr().out
    report = json.loads((out / "generated.json").read_text())
    zoo = Zoo(resnet_zoo)
    member = next(m for m in zoo.members() if m["path"] == report[1]["nearest_training"])
    assert report[1]["arch"] == member["arch"]
    record = read_provenance(out / "generated-001.safetensors")
    assert record["arch"] == member["arch"] and record["command"][:2] == ["gmn", "generate"]
    assert list(record["sources"].values()) == [file_sha256(resnet_zoo / "catalogue.sqlite")]
    model, example = zoo.model(member)
    graphs = []
    for state in (load_file(out / "generated-001.safetensors"), zoo.weights(member)):
        model.load_state_dict(state)
        graphs.append(converters.from_torch(model.eval(), (example,)))
    assert report[1]["nearest_distance"] == pytest.approx(aligned_distance(*graphs), rel=1e-4)
    others = [m for m in zoo.members() if m["path"] != member["path"]]
    for m in others:  # nearest: no other training checkpoint is closer
        model.load_state_dict(zoo.weights(m))
        other = converters.from_torch(model.eval(), (example,))
        assert aligned_distance(graphs[0], other) >= report[1]["nearest_distance"] - 1e-6


def test_accuracy_edit_prints_the_means_before_and_after(tiny_zoo, tmp_path, capsys):
    from gmn.checkpoints import read_provenance

    out = tmp_path / "edit"
    assert main(["edit", str(tiny_zoo), "--out", str(out), *SMALL]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "edited.json").read_text())
    before = sum(r["test_acc_before"] for r in report) / len(report)
    after = sum(r["test_acc_after"] for r in report) / len(report)
    assert f"mean test accuracy {before:.4f} before, {after:.4f} after" in text
    record = read_provenance(out / report[0]["file"])
    assert record["arch"] == report[0]["arch"] and list(record["sources"]) == [str(tiny_zoo / report[0]["source"])]
