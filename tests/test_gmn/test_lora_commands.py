"""Commands on a LoRA zoo: gmn bench property (raw against GL(r)-canonical adapters, one split per seed)."""

import json

import numpy as np
import pytest
import torch

import converters
from gmn.cli import main
from gmn.data.splits import split_by_run
from gmn.tasks.lora_property import lora_property_runs
from gmn.tasks.property import TrainConfig, fit_flat_mlp
from gmn.zoo.lora import AdapterDataset, build_lora_zoo

ROWS = ["statnn", "mlp-raw", "mlp-canon", "gmn-raw", "gmn-canon"]
FAST = ["--train-epochs", "2", "--hidden", "8", "--layers", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-cmd") / "zoo"
    build_lora_zoo(root, runs=12, epochs=1, base_epochs=1)
    return root


def test_bench_property_on_a_lora_zoo_writes_the_side_by_side_table(zoo, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "property", "--zoo", str(zoo), "--out", str(out), "--seeds", "2", *FAST]) == 0
    table = (out / "property.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[3:8]] == ROWS
    assert "angle tau" in table[1] and "accuracy tau" in table[1]
    report = json.loads((out / "property.json").read_text())
    assert report["targets"] == ["angle", "accuracy"] and report["adapters"] == 12
    assert [(r["method"], r["seed"]) for r in report["results"]] == [(m, s) for s in (0, 1) for m in ROWS]
    assert all(len(r["pred"]) == len(r["true"]) == r["test_adapters"] == 2 for r in report["results"])
    assert (out / "property.png").stat().st_size > 0
    assert main(["bench", "property", "--zoo", str(zoo), "--out", str(out), "--seeds", "1", *FAST]) == 2
    assert "gmn never replaces an output" in capsys.readouterr().err


def test_one_split_per_seed_and_the_canonical_rows_read_canonical_adapters(zoo):
    config = TrainConfig(epochs=2, hidden=8, layers=1, batch_size=4, patience=2, seed=3)
    runs, raw, skipped = lora_property_runs(zoo, ("statnn", "mlp"), config=config, seeds=2)
    assert [[r.method for r in seed] for seed in runs] == [ROWS[:3]] * 2 and skipped == {}
    for seed in runs:
        for r in seed[1:]:
            np.testing.assert_array_equal(r.true, seed[0].true)  # every method tested on the same adapters
    assert not np.array_equal(runs[0][0].true, runs[1][0].true)  # seeds 3 and 4: other splits
    split = split_by_run(raw.run, raw.family, seed=3)
    canonical = AdapterDataset(zoo, canonical=True)
    direct = fit_flat_mlp(canonical, split, config, progress=False)
    np.testing.assert_allclose(runs[0][2].pred, direct.pred, rtol=1e-5, atol=1e-6)
    on_raw = fit_flat_mlp(raw, split, config, progress=False)
    np.testing.assert_allclose(runs[0][1].pred, on_raw.pred, rtol=1e-5, atol=1e-6)
    assert not np.allclose(on_raw.pred, direct.pred)
    assert torch.equal(raw.y, canonical.y)


@pytest.mark.parametrize("extra, problem", [
    (["--methods", "statnn,nfn_np"], "method 'nfn_np' does not read adapters"),
    (["--split", "nfn"], "is a LoRA zoo, split by adapter"),
    (["--test-families", "lora"], "a LoRA zoo has one base")])
def test_bench_property_refuses_what_a_lora_zoo_cannot_do(zoo, tmp_path, capsys, extra, problem):
    capsys.readouterr()
    assert main(["bench", "property", "--zoo", str(zoo), "--out", str(tmp_path / "o"), *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err
    assert not (tmp_path / "o" / "property.txt").exists()


def test_generate_on_a_lora_zoo_writes_adapter_folders_peft_loads(zoo, tmp_path, capsys):
    import peft
    from safetensors.torch import load_file

    import converters
    from gmn.zoo.datasets import load
    from gmn.zoo.lora import base_model

    out = tmp_path / "gen"
    argv = ["generate", str(zoo), "--out", str(out), "--count", "2", "--train-epochs", "2", "--hidden", "32",
            "--batch-size", "8", "--steps", "4", "--target", "30"]
    assert main(argv) == 0
    report = json.loads((out / "generated.json").read_text())
    assert [r["folder"] for r in report] == ["generated-000", "generated-001"]
    source = load_file(str(zoo / "adapters" / "a0000" / "adapter_model.safetensors"))
    data = load("digits")
    for row in report:
        folder = out / row["folder"]
        assert (folder / "adapter_config.json").read_text() == (zoo / "adapters/a0000/adapter_config.json").read_text()
        written = load_file(str(folder / "adapter_model.safetensors"))
        assert written.keys() == source.keys()
        assert all(not torch.equal(written[k], source[k]) for k in written)  # new weights, not a copy
        base = base_model(zoo, data, 0, 0)
        model = peft.PeftModel.from_pretrained(base, folder).eval()
        loaded = peft.get_peft_model_state_dict(model)
        assert loaded.keys() == written.keys() and all(torch.equal(loaded[k], written[k]) for k in loaded)
        with torch.no_grad():  # the adapter changes what the base computes
            assert not torch.allclose(model(data.x_test[:8]), base_model(zoo, data, 0, 0)(data.x_test[:8]))
    # the write path on unchanged values: a zoo adapter read and written back is bit-identical
    raw = AdapterDataset(zoo)
    converters.to_peft(raw.get(3), None, tmp_path / "same")
    again = load_file(str(tmp_path / "same" / "adapter_model.safetensors"))
    original = load_file(str(zoo / raw.rows[3]["path"] / "adapter_model.safetensors"))
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)
    capsys.readouterr()
    assert main(argv) == 2  # the folders hold outputs: never replaced without --force
    assert "gmn never replaces an output" in capsys.readouterr().err


def test_generate_with_the_hypernetwork_writes_the_adapter_for_the_target_angle(zoo, tmp_path, capsys):
    """One folder, the adapter for --target, scored as PEFT loads it on the digits rotated by that angle."""
    import peft

    from gmn.zoo.datasets import load
    from gmn.zoo.lora import _accuracy, base_model, rotate

    out = tmp_path / "hyper"
    argv = ["generate", str(zoo), "--generator", "hypernetwork", "--target", "30", "--out", str(out),
            "--train-epochs", "1", "--hidden", "16", "--layers", "1", "--batch-size", "4"]
    assert main(argv) == 0
    report = json.loads((out / "generated.json").read_text())
    assert [(r["folder"], r["conditioned_on"], r["target"]) for r in report] == [("generated-000", "angle", 30.0)]
    assert sorted(p.name for p in out.iterdir()) == ["generated-000", "generated.json", "state"]
    data = load("digits")
    model = peft.PeftModel.from_pretrained(base_model(zoo, data, 0, 0), out / "generated-000").eval()
    assert report[0]["test_acc"] == _accuracy(model, rotate(data.x_test, 30.0), data.y_test)
    printed = capsys.readouterr().out
    assert f"test accuracy on its rotated digits {report[0]['test_acc']:.4f}" in printed
    assert "the angle is inside the training adapters' range" in printed
    assert main(argv) == 2  # the folder holds an output: never replaced without --force
    assert "gmn never replaces an output" in capsys.readouterr().err


@pytest.mark.parametrize("command, extra, problem", [
    ("generate", ["--generator", "gmn"], "on a LoRA zoo the generator is canonical"),
    ("generate", ["--generator", "hypernetwork"], "--generator hypernetwork needs --target"),
    ("generate", ["--generator", "hypernetwork", "--target", "30", "--count", "2"], "one adapter per --target"),
    ("generate", ["--generator", "hypernetwork", "--target", "1e30"], "a rotation angle in degrees, between -180"),
    ("generate", ["--onnx"], "--onnx does not apply to a LoRA zoo"),
    ("edit", ["--objective", "forget:3"], "on a LoRA zoo the objective is accuracy"),
    ("edit", ["--onnx"], "--onnx does not apply to a LoRA zoo")])
def test_weight_commands_refuse_what_adapters_cannot_do(zoo, tmp_path, capsys, command, extra, problem):
    capsys.readouterr()
    assert main([command, str(zoo), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err


def test_edit_on_a_lora_zoo_writes_edited_adapter_folders_peft_loads(zoo, tmp_path, capsys):
    """Each edited adapter is a PEFT folder; its accuracy before is the zoo's own (the catalogue), after
    is what PEFT computes with the written folder, and the editor's validation loss fell below the
    unedited adapters' (the untrained editor is the identity)."""
    import csv

    import peft
    from safetensors.torch import load_file

    from gmn.zoo.datasets import load
    from gmn.zoo.lora import base_model, rotate

    out = tmp_path / "edit"
    assert main(["edit", str(zoo), "--out", str(out), "--members", "all", "--inputs", "16", "--train-epochs", "1",
                 "--hidden", "8", "--layers", "2", "--batch-size", "4"]) == 0
    report = {r["source"]: r for r in json.loads((out / "edited.json").read_text())}
    with open(zoo / "catalogue.csv") as fh:
        catalogue = {row["path"]: row for row in csv.DictReader(fh)}
    assert report.keys() == catalogue.keys()
    data = load("digits")
    for path, row in report.items():
        assert row["test_acc_before"] == pytest.approx(float(catalogue[path]["accuracy"]), abs=1e-9)
        model = peft.PeftModel.from_pretrained(base_model(zoo, data, 0, 0), out / row["folder"]).eval()
        with torch.no_grad():
            x = rotate(data.x_test, float(catalogue[path]["angle"]))
            assert float((model(x).argmax(-1) == data.y_test).float().mean()) == row["test_acc_after"]
        written = load_file(str(out / row["folder"] / "adapter_model.safetensors"))
        source = load_file(str(zoo / path / "adapter_model.safetensors"))
        assert written.keys() == source.keys() and not all(torch.equal(written[k], source[k]) for k in written)
    assert "edited adapter models, mean test accuracy" in capsys.readouterr().out


def test_adapter_editor_lowers_the_validation_loss_below_the_unedited_adapters(zoo):
    import peft

    from gmn.data import split_by_run
    from gmn.tasks.lora_editing import AdapterTasks, fit_adapter_editor
    from gmn.tasks.property import TrainConfig
    from gmn.zoo.datasets import load
    from gmn.zoo.lora import base_model

    ds = AdapterDataset(zoo, targets=("angle",))
    data = load("digits")
    model = peft.PeftModel.from_pretrained(base_model(zoo, data, 0, 0), zoo / ds.rows[0]["path"])
    split = split_by_run(ds.run, ds.family, fractions=(0.25, 0.25), seed=0)
    config = TrainConfig(epochs=4, patience=4, hidden=16, layers=2, batch_size=4, lr=3e-3)
    result = fit_adapter_editor(ds, split, AdapterTasks(ds.y[:, 0], data), model, config, images=32,
                                progress=False)
    assert min(h["val_loss"] for h in result.history) < result.val_unedited


def test_adapter_editor_is_equivariant_to_rank_permutations(zoo):
    """A rank permutation of an adapter (an automorphism of its graph) gives the same edited function."""
    import peft

    from gmn.tasks.editing import WeightEditor
    from gmn.tasks.lora_editing import _Runner
    from gmn.weightspace.symmetry import random_symmetry
    from gmn.zoo.datasets import load
    from gmn.zoo.lora import base_model

    ds = AdapterDataset(zoo)
    torch.manual_seed(0)
    editor = WeightEditor(hidden=16, layers=2, scale=0.1)
    torch.nn.init.normal_(editor.net.head[-1].weight, std=0.5)  # a trained editor's output is not zero
    model = peft.PeftModel.from_pretrained(base_model(zoo, load("digits"), 0, 0), zoo / ds.rows[0]["path"])
    g = ds.get(0)
    moved = random_symmetry(g, seed=3)
    key = "base_model.model.head.lora_A.weight"
    assert not torch.equal(converters.to_state_dict(g)[key], converters.to_state_dict(moved)[key])
    runner = _Runner(model, [n for n, _, _ in g.param_index.params])
    x = load("digits").x_test[:16]
    with torch.no_grad():
        outputs = [runner.logits(converters.to_state_dict(h, editor(h)), x) for h in (g, moved)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def _dense_distances(query_folder, folders, scaling=2.0):
    """|s B_q A_q - s B A|_F over modules from the files, by dense products in float64 (alpha 8 / rank 4)."""
    from safetensors.torch import load_file

    def updates(folder):
        t = load_file(str(folder / "adapter_model.safetensors"))
        out = {}
        for key in (k for k in t if "lora_A" in k):
            a, b = t[key].double(), t[key.replace("lora_A", "lora_B")].double()
            out[key] = scaling * b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
        return out

    q = updates(query_folder)
    return [sum(float((q[k] - u[k]).norm() ** 2) for k in q) ** 0.5 for u in map(updates, folders)]


def test_nearest_retrieves_the_same_neighbours_for_any_gl_transform_of_the_query(zoo, tmp_path, capsys):
    from test_adapters.test_adapters import gl_transform

    import converters
    from adapters import from_peft
    from gmn.zoo.lora import nearest_adapters, zoo_base

    base, example = zoo_base(zoo)
    g = from_peft(zoo / "adapters" / "a0003", base=base, example_inputs=example)
    wide = converters.with_values(g, converters.parameter_values(g).double())
    wide.edge_value = wide.edge_value.double()  # M applied in float64, written back as the files' float32
    moved = converters.with_values(g, gl_transform(wide, seed=7, cond=1e2).float())
    converters.to_peft(moved, None, tmp_path / "moved")
    changed = converters.parameter_values(from_peft(tmp_path / "moved", base=base, example_inputs=example))
    assert not torch.allclose(changed, converters.parameter_values(g), atol=1e-3)  # other factors
    plain = nearest_adapters(zoo, zoo / "adapters" / "a0003", k=12)
    transformed = nearest_adapters(zoo, tmp_path / "moved", k=12)
    assert [r["path"] for r, _ in plain] == [r["path"] for r, _ in transformed]
    assert plain[0][0]["path"] == "adapters/a0003" and plain[0][1] < 1e-5 and transformed[0][1] < 1e-3
    folders = [zoo / r["path"] for r, _ in plain]
    dense = _dense_distances(zoo / "adapters" / "a0003", folders)
    assert dense == sorted(dense)  # the order is that of the dense updates' distances
    np.testing.assert_allclose([d for _, d in plain], dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([d for _, d in transformed], dense, rtol=1e-3, atol=1e-3)
    other = nearest_adapters(zoo, zoo / "adapters" / "a0005", k=3)
    assert other[0][0]["path"] == "adapters/a0005"
    capsys.readouterr()
    assert main(["nearest", str(zoo), str(tmp_path / "moved"), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[2:]] == [r["path"] for r, _ in plain[:3]]
    assert main(["nearest", str(zoo), str(tmp_path / "moved"), "-k", "0"]) == 2
    assert main(["nearest", str(tmp_path), str(tmp_path / "moved")]) == 2
    assert "not a LoRA zoo" in capsys.readouterr().err


def test_train_then_predict_adapter_folders(zoo, tmp_path, capsys):
    """gmn train on a LoRA zoo, then gmn predict on adapter folders: the test adapters' predictions are
    those training wrote, and a GL(r)-moved copy of an adapter is predicted as the adapter itself."""
    import csv

    from test_adapters.test_adapters import gl_transform

    import converters
    from adapters import from_peft
    from gmn.zoo.lora import zoo_base

    out = tmp_path / "train"
    assert main(["train", str(zoo), "--out", str(out), *FAST, "--seed", "1"]) == 0
    with open(out / "test_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"path", "angle_true", "angle_pred", "accuracy_true", "accuracy_pred"}
    base, example = zoo_base(zoo)
    g = from_peft(rows[0]["path"], base=base, example_inputs=example)
    wide = converters.with_values(g, converters.parameter_values(g).double())
    wide.edge_value = wide.edge_value.double()
    converters.to_peft(converters.with_values(g, gl_transform(wide, seed=3, cond=1e2).float()), None,
                       tmp_path / "moved")
    capsys.readouterr()
    assert main(["predict", str(out), *(r["path"] for r in rows), str(tmp_path / "moved")]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[2:]}
    for r in rows:
        np.testing.assert_allclose(table[r["path"]], [float(r["angle_pred"]), float(r["accuracy_pred"])],
                                   rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(table[str(tmp_path / "moved")], table[rows[0]["path"]], rtol=1e-3, atol=1e-3)
    assert abs(table[rows[0]["path"]][0] - table[rows[1]["path"]][0]) > 1e-2  # adapters are told apart
    assert main(["predict", str(out), str(zoo / "base.safetensors")]) == 2
    assert "give PEFT adapter folders" in capsys.readouterr().err
