"""gmn zoo import of PEFT adapter folders: PEFT's own LoraConfig on a tiny offline Llama saved as a
Hugging Face folder, every adapter tensor random (PEFT's zero B would hide mistakes)."""

import copy
import csv
import json
import re

import peft
import pytest
import torch
import transformers
from test_adapters.cases import perturb

import converters
from adapters import from_peft
from gmn.cli import main
from gmn.zoo.lora import AdapterDataset, zoo_targets


def _llama(hidden=32):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=40)).eval()


def adapter_folders(root, count=4, hidden=32):
    """``root/base`` (a Hugging Face folder) and ``root/adapters/aN`` (PEFT folders of it), with a CSV of
    two targets per adapter; returns (base, CSV path, rows)."""
    base = _llama(hidden)
    base.save_pretrained(root / "base")
    rows = []
    for i in range(count):
        config = peft.LoraConfig(r=2 + i % 2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        model = peft.get_peft_model(copy.deepcopy(base), config)
        perturb(model, seed=i)
        model.save_pretrained(root / "adapters" / f"a{i}")
        rows.append({"path": f"a{i}", "score": 0.25 * i, "angle": 10.0 - 3 * i})
    table = root / "targets.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "score", "angle"])
        writer.writeheader()
        writer.writerows(rows)
    return base, table, rows


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    base, table, rows = adapter_folders(root)
    assert main(["zoo", "import", str(root / "adapters"), "--targets", str(table), "--base", str(root / "base")]) == 0
    return root, base, rows


def test_an_imported_zoo_reads_as_a_built_one(imported, capsys):
    root, base, rows = imported
    zoo = root / "adapters"
    assert zoo_targets(zoo) == ("score", "angle")
    data = AdapterDataset(zoo)  # no base, no targets: the zoo's own
    assert data.y.tolist() == [[r["score"], r["angle"]] for r in rows]
    assert len(data.templates) == 2  # ranks 2 and 3: two layouts
    for i, row in enumerate(rows):  # the values are those of the folder read directly over the live base
        direct = from_peft(zoo / row["path"], base=copy.deepcopy(base))
        assert torch.equal(data.values[i], converters.parameter_values(direct).float())
        assert torch.equal(data[i].node_index, direct.node_index)
    canonical = AdapterDataset(zoo, canonical=True)
    assert not torch.equal(canonical.values[0], data.values[0])
    assert main(["zoo", "info", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "4 LoRA adapters of one base" in out and "imported" in out and "score: 0 to 0.75" in out


def test_the_hypernetwork_needs_a_built_zoo_whose_tasks_it_knows(imported, tmp_path, capsys):
    err = _refused(capsys, ["generate", str(imported[0] / "adapters"), "--out", str(tmp_path / "g"), "--generator",
                            "hypernetwork", "--target", "0.5"])
    assert "is an imported LoRA zoo" in err and "use --generator canonical" in err
    assert not (tmp_path / "g").exists()


def _refused(capsys, argv):
    capsys.readouterr()  # what saving the folders printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_a_bad_adapter_is_refused_before_anything_is_written(tmp_path, capsys):
    base, table, rows = adapter_folders(tmp_path, count=2)
    other = _llama(hidden=48)  # an adapter of another base: q_proj is 48 x 48 there
    model = peft.get_peft_model(other, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    perturb(model, seed=5)
    model.save_pretrained(tmp_path / "adapters" / "wrong")
    zoo = tmp_path / "adapters"
    args = ["zoo", "import", str(zoo), "--base", str(tmp_path / "base"), "--targets"]
    for lines, problem in ((["wrong,1,2"], "row 4 of .*adapter folder wrong: .*"),
                           (["missing,1,2"], "row 4 of .*'missing' is no PEFT adapter folder"),
                           (["a0,1,2"], "row 4 of .*'a0' is already row 2"),
                           (["../base,1,2"], "row 4 of .*leads outside the zoo folder"),
                           (["a1,nan,2"], "row 3 of .*'score' is 'nan'"),
                           (["a1,,2"], "row 3 of .*'score' is empty")):
        bad = tmp_path / "bad.csv"
        kept = ["path,score,angle", "a0,0,1"] + (["a1,1,2"] if not lines[0].startswith("a1") else [])
        bad.write_text("\n".join(kept + lines) + "\n")
        assert re.search(problem, _refused(capsys, args + [str(bad)])), problem
        assert not (zoo / "zoo.json").exists() and not (zoo / "catalogue.csv").exists()
    assert "module:attr" in _refused(capsys, args[:-3] + ["--base", "os:getcwd", "--targets", str(table)])
    only_pickle = tmp_path / "adapters" / "a1" / "adapter_model.safetensors"
    only_pickle.rename(only_pickle.with_name("adapter_model.bin"))
    assert "adapter_model.bin is a pickle" in _refused(capsys, args + [str(table)])


def test_an_import_replaces_a_zoo_only_when_asked_and_is_all_or_nothing(tmp_path, capsys, monkeypatch):
    _, table, _ = adapter_folders(tmp_path, count=2)
    zoo = tmp_path / "adapters"
    args = ["zoo", "import", str(zoo), "--base", str(tmp_path / "base"), "--targets", str(table)]
    assert main(args) == 0
    first = (zoo / "catalogue.csv").read_text()
    assert "never replaces" in _refused(capsys, args)
    rows = table.read_text().replace("a1,0.25", "a1,0.5")
    table.write_text(rows)
    import converters.files

    real = converters.files.atomic_write

    def killed(path, write):  # the catalogue's write fails: zoo.json is new, the catalogue old
        if str(path).endswith("catalogue.csv"):
            raise OSError(f"{path}: no space left on device")
        real(path, write)

    monkeypatch.setattr("gmn.zoo.adapter_import.atomic_write", killed)
    assert "no space" in _refused(capsys, args + ["--replace"])
    assert (zoo / "catalogue.csv").read_text() == first
    with pytest.raises(ValueError, match="an import was interrupted"):
        AdapterDataset(zoo)
    monkeypatch.setattr("gmn.zoo.adapter_import.atomic_write", real)
    assert main(args + ["--replace"]) == 0
    assert AdapterDataset(zoo).y[1, 0] == 0.5
    assert json.loads((zoo / "zoo.json").read_text())["descriptors"] == ["score", "angle"]


def test_adapter_folders_without_base_are_one_line(tmp_path, capsys):
    _, table, _ = adapter_folders(tmp_path, count=1)
    err = _refused(capsys, ["zoo", "import", str(tmp_path / "adapters"), "--targets", str(table)])
    assert "names PEFT adapter folders: give their base with --base" in err


def test_base_goes_with_adapter_folders_only(tmp_path, capsys):
    _, table, _ = adapter_folders(tmp_path, count=1)
    zoo = str(tmp_path / "adapters")
    for extra, problem in ((["--format", "siren-inr"], "drop --targets/--arch/--input-shape/--base"),
                           (["--arch", "cnn"], "--arch and --input-shape describe model checkpoints"),
                           (["--base", str(tmp_path / "nowhere")], "no such Hugging Face model folder")):
        err = _refused(capsys, ["zoo", "import", zoo, "--targets", str(table), "--base", str(tmp_path / "base"),
                                *extra])
        assert problem in err, err
    assert not (tmp_path / "adapters" / "zoo.json").exists()


def test_a_built_in_base(tmp_path, capsys):
    """--base mlp: adapters of gmn's built-in MLP (Linear layers 0, 2, 4), read against a fresh build."""
    from gmn.architectures import BUILTIN

    factory, _ = BUILTIN["mlp"]
    lines = ["path,loss"]
    for i in range(3):
        model = peft.get_peft_model(factory(), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["0", "4"]))
        perturb(model, seed=10 + i)
        model.save_pretrained(tmp_path / "mlp-adapters" / f"m{i}")
        lines.append(f"m{i},{1.5 - i}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    zoo = tmp_path / "mlp-adapters"
    assert main(["zoo", "import", str(zoo), "--targets", str(tmp_path / "t.csv"), "--base", "mlp"]) == 0
    assert json.loads((zoo / "zoo.json").read_text())["base"] == {"family": "builtin", "name": "mlp", "kwargs": {}}
    data = AdapterDataset(zoo)
    assert data.y[:, 0].tolist() == [1.5, 0.5, -0.5]
    direct = from_peft(zoo / "m2", base=factory())
    assert torch.equal(data.values[2], converters.parameter_values(direct).float())
    assert main(["zoo", "import", str(zoo), "--targets", str(tmp_path / "t.csv"), "--base", "cnn", "--replace"]) == 2
    assert "row 2 of" in capsys.readouterr().err  # an MLP's adapters do not fit the CNN


def test_a_base_inside_the_zoo_moves_with_it_and_a_record_leading_out_is_refused(tmp_path):
    root = tmp_path / "zoo"
    _, table, _ = adapter_folders(root, count=2)
    (root / "base").rename(root / "adapters" / "base")  # the base kept inside the imported folder
    assert main(["zoo", "import", str(root / "adapters"), "--targets", str(table), "--base",
                 str(root / "adapters" / "base")]) == 0
    settings = json.loads((root / "adapters" / "zoo.json").read_text())
    assert settings["base"]["path"] == "base"  # relative: no absolute path of the machine it was made on
    moved = tmp_path / "elsewhere"
    (root / "adapters").rename(moved)
    before = AdapterDataset(moved)
    assert len(before) == 2
    settings["base"]["path"] = "../../base"
    (moved / "zoo.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="leads outside the zoo folder"):
        AdapterDataset(moved)
