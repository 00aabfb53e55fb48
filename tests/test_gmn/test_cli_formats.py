"""Every format gmn reads in every command that reads models, checked at ``gmn zoo import``
(issue 37): ONNX files and model folders against a named architecture, module:attr factories
that return no module, Hugging Face model folders as zoo members."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from gmn.architectures import SmallCNN
from gmn.cli import main


def _onnx(model: torch.nn.Module, path, example) -> None:
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, optimize=False, verbose=False)


def _csv(folder, names) -> str:
    path = folder / "targets.csv"
    path.write_text("path,test_acc\n" + "".join(f"{n},{0.5 + i / 10}\n" for i, n in enumerate(names)))
    return str(path)


def _gpt2_folders(transformers, root, count: int, width: int):
    """``count`` tiny GPT-2 model folders ``gpt0 ..`` (seed = index) under ``root``: their names
    and the last model."""
    for seed in range(count):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(vocab_size=4 * width, n_embd=width, n_layer=1, n_head=2, n_positions=width)
        model = transformers.GPT2LMHeadModel(config)
        model.save_pretrained(root / f"gpt{seed}")
    return [f"gpt{seed}" for seed in range(count)], model


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gmn: error:") and "\n" not in err, err
    return err


def test_onnx_files_of_another_architecture_are_refused_at_import(tmp_path, capsys):
    for i in range(2):
        _onnx(SmallCNN(), tmp_path / f"m{i}.onnx", torch.randn(1, 1, 8, 8))
    targets = _csv(tmp_path, ["m0.onnx", "m1.onnx"])
    err = _error(capsys, ["zoo", "import", str(tmp_path), "--targets", targets, "--arch", "resnet18"])
    assert "row 2" in err and "m0.onnx does not fit --arch resnet18" in err
    assert not (tmp_path / "catalogue.sqlite").exists() and not list(tmp_path.glob("*.sqlite"))
    assert main(["zoo", "import", str(tmp_path), "--targets", targets, "--arch", "cnn"]) == 0  # its own: accepted
    assert "2 checkpoints" in capsys.readouterr().out


def test_a_factory_that_returns_base_and_adapter_is_refused_at_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "userpkg_peft").mkdir()
    (tmp_path / "userpkg_peft" / "nets.py").write_text(
        "import torch\n\n\ndef base():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), "
        "torch.nn.Linear(8, 2))\n\n\ndef with_adapter():\n    return base(), base()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from userpkg_peft.nets import base

    folder = tmp_path / "ckpts"
    folder.mkdir()
    for i in range(2):
        save_file(base().state_dict(), folder / f"m{i}.safetensors")
    targets = _csv(folder, ["m0.safetensors", "m1.safetensors"])
    err = _error(capsys, ["zoo", "import", str(folder), "--targets", targets,
                          "--arch", "userpkg_peft.nets:with_adapter", "--input-shape", "4"])
    assert "a tuple of Sequential, Sequential" in err and "must be an nn.Module" in err and "PEFT" in err
    assert main(["zoo", "import", str(folder), "--targets", targets, "--arch", "userpkg_peft.nets:base",
                 "--input-shape", "4"]) == 0


def test_hugging_face_folders_are_zoo_members(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import converters
    from gmn.data import ZooDataset

    names, model = _gpt2_folders(transformers, tmp_path, 2, width=16)
    targets = _csv(tmp_path, names)
    assert main(["zoo", "import", str(tmp_path), "--targets", targets]) == 0
    assert "2 checkpoints" in capsys.readouterr().out
    ds = ZooDataset(tmp_path, ("test_acc",), progress=False)
    assert len(ds) == 2
    torch.testing.assert_close(converters.to_state_dict(ds.get(1))["transformer.h.0.attn.c_attn.weight"],
                               model.state_dict()["transformer.h.0.attn.c_attn.weight"])
    err = _error(capsys, ["zoo", "import", str(tmp_path), "--targets", targets, "--arch", "cnn", "--replace"])
    assert "gpt0 does not fit --arch cnn" in err


def test_generate_writes_hugging_face_members_back_as_model_folders(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from gmn.checkpoints import read_provenance

    names, _ = _gpt2_folders(transformers, tmp_path, 3, width=8)
    assert main(["zoo", "import", str(tmp_path), "--targets", _csv(tmp_path, names)]) == 0
    out = tmp_path / "gen"
    assert main(["generate", str(tmp_path), "--out", str(out), "--count", "1", "--steps", "2", "--train-epochs", "1",
                 "--hidden", "8"]) == 0
    row = json.loads((out / "generated.json").read_text())[0]
    assert row["file"] == "generated-000" and row["arch"]["config"]["model_type"] == "gpt2"
    assert row["nearest_training"] in names and row["nearest_distance"] > 0
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out / "generated-000", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])  # every weight from us
    assert read_provenance(out / "generated-000")["arch"] == row["arch"]
