"""The LoRA zoo: PEFT folders that load, a catalogue that tells the truth, deterministic and resumable builds."""

import csv
import shutil

import peft
import pytest
import torch
from safetensors.torch import load_file

import converters
from gmn.zoo.datasets import load
from gmn.zoo.lora import AdapterDataset, base_model, build_lora_zoo, rotate

SMALL = dict(runs=3, epochs=1, base_epochs=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora") / "zoo"
    build_lora_zoo(root, **SMALL)
    return root


def _rows(root):
    with open(root / "catalogue.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_catalogue_accuracy_is_what_peft_loads(zoo):
    rows = _rows(zoo)
    assert [r["path"] for r in rows] == ["adapters/a0000", "adapters/a0001", "adapters/a0002"]
    assert {"angle", "rank", "alpha", "seed", "accuracy"} <= set(rows[0])
    data = load("digits")
    for row in rows:
        model = peft.PeftModel.from_pretrained(base_model(zoo, data, 0, 0), zoo / row["path"]).eval()
        x = rotate(data.x_test, float(row["angle"]))
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == data.y_test).float().mean())
        assert accuracy == pytest.approx(float(row["accuracy"]), abs=1e-6)


def test_builds_are_deterministic_and_resume(zoo, tmp_path):
    again = tmp_path / "again"
    build_lora_zoo(again, **SMALL)
    shutil.rmtree(again / "adapters" / "a0001")
    build_lora_zoo(again, **SMALL)  # resumes: trains the missing adapter only
    for row in _rows(zoo):
        a, b = (load_file(str(root / row["path"] / "adapter_model.safetensors")) for root in (zoo, again))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(again) == _rows(zoo)
    with pytest.raises(ValueError, match="other settings"):
        build_lora_zoo(again, **{**SMALL, "epochs": 2})


def test_adapter_dataset_raw_and_canonical_hold_one_product(zoo):
    raw, canonical = AdapterDataset(zoo), AdapterDataset(zoo, canonical=True)
    assert len(raw) == 3 and raw.y.shape == (3, 2)
    index = raw.templates[raw.arch_keys[0]].param_index
    shapes = {n: s for n, s, _ in index.params}
    for i in range(len(raw)):
        assert not torch.equal(raw.values[i], canonical.values[i])
        for a, b in (("base_model.model.head.lora_A.weight", "base_model.model.head.lora_B.weight"),):
            products = [v[index.edge_ids(b)].reshape(shapes[b][0], -1) @ v[index.edge_ids(a)].reshape(shapes[a][0], -1)
                        for v in (raw.values[i], canonical.values[i])]
            torch.testing.assert_close(products[1], products[0], rtol=1e-5, atol=1e-6)
        g = raw[i]
        assert int(g.num_param_edges) == converters.parameter_values(g).numel()


def test_any_folder_of_adapters_with_a_csv_is_a_dataset(tmp_path):
    """``gmn zoo import``'s form: adapter folders of one base (two ranks: two layouts) and a CSV."""
    from test_adapters.cases import make

    root = tmp_path / "mine"
    factory, _, _ = make("llama", root / "x", seed=0)
    make("embedding", root / "y", seed=1)
    (root / "catalogue.csv").write_text("path,score\nx,0.5\ny,0.25\n")
    data = AdapterDataset(root, ("score",), base=factory())
    assert data.y.tolist() == [[0.5], [0.25]] and len(data.templates) == 2
    assert int(data[1].num_param_edges) == data.values[1].numel()
    (root / "catalogue.csv").write_text("path,score\n../escape,0.5\n")
    with pytest.raises(ValueError, match="outside the zoo"):
        AdapterDataset(root, ("score",), base=factory())
    (root / "catalogue.csv").write_text("path,score\nx,nan\n")
    with pytest.raises(ValueError, match="line 2: score is 'nan', not a finite number"):
        AdapterDataset(root, ("score",), base=factory())


def test_zoo_build_preset_lora_through_the_command_line(tmp_path, capsys):
    from gmn.cli import main

    assert main(["zoo", "build", str(tmp_path / "z"), "--preset", "lora", "--runs", "2", "--epochs", "1"]) == 0
    assert "2 LoRA adapters of one base" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "z" / "adapters").iterdir()) == ["a0000", "a0001"]
