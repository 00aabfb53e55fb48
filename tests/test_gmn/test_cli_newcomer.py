"""The mistakes a newcomer makes get one line and exit code 2, before any work starts; the
models they bring (JSON architectures, Hugging Face folders, their own module) convert."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
from safetensors.torch import save_file

import converters
from gmn import architectures as A
from gmn.cli import main


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress bars may come first
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1].startswith("gmn: error: "), lines[-5:]
    return lines[-1]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "z"
    assert main(["zoo", "build", str(root), "--runs", "3", "--epochs", "1", "--workers", "1"]) == 0
    return root


def test_mistakes_are_one_line_before_any_work(tmp_path, capsys, zoo):
    start = time.perf_counter()
    assert "no such folder for the output" in _error(capsys, ["convert", "cnn", "-o", str(tmp_path / "no" / "g.pt")])
    assert "must end in .pt" in _error(capsys, ["convert", "cnn", "-o", str(tmp_path / "g.txt")])
    assert "unknown method 'foo'" in _error(capsys, ["bench", "property", "--methods", "statnn,foo",
                                                      "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b" / "zoo-small-cnn-digits").exists()  # refused before the zoo was built
    assert "takes a zoo architecture as JSON" in _error(capsys, ["generate", str(zoo), "--arch", "cnn",
                                                                 "--out", str(tmp_path / "g")])
    assert "--arch is not valid JSON" in _error(capsys, ["generate", str(zoo), "--arch", "{cnn",
                                                         "--out", str(tmp_path / "g")])
    assert "K must be a class of the zoo's data, 0 to 9" in _error(
        capsys, ["edit", str(zoo), "--objective", "forget:12", "--out", str(tmp_path / "e")])
    assert "K must be a class" in _error(capsys, ["edit", str(zoo), "--objective", "forget:x",
                                                  "--out", str(tmp_path / "e")])
    assert "holds no zoo catalogue" in _error(capsys, ["zoo", "info", str(tmp_path / "nope")])
    assert "cannot read the CSV" in _error(capsys, ["zoo", "import", str(tmp_path), "--targets",
                                                    str(tmp_path / "nope.csv")])
    assert time.perf_counter() - start < 30  # nothing trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_first(capsys, zoo, tmp_path):
    for args in (["train", str(zoo)], ["bench", "property", "--zoo", str(zoo)], ["edit", str(zoo)]):
        err = _error(capsys, [*args, "--device", "cuda", "--out", str(tmp_path / "o")])
        assert "--device cuda: this torch has no usable CUDA device" in err and "--device cpu" in err


def test_checkpoints_of_other_sizes_and_json_architectures(tmp_path, capsys):
    path = tmp_path / "r.safetensors"
    save_file(A.ResNet18(width=16, classes=10).state_dict(), str(path))
    err = _error(capsys, ["convert", str(path), "--arch", "resnet18", "-o", str(tmp_path / "g.pt")])
    assert "102 shape mismatches (first: stem.0.weight is (16, 3, 7, 7) in the file, (64, 3, 7, 7)" in err
    assert len(err) < 400
    arch = '{"name": "resnet18", "width": 16, "classes": 10}'
    assert main(["convert", str(path), "--arch", arch, "-o", str(tmp_path / "g.pt")]) == 0
    g = converters.load_graph(tmp_path / "g.pt")
    assert int(g.num_param_edges) == sum(p.numel() for p in A.ResNet18(width=16, classes=10).parameters())
    assert "does not take these arguments" in _error(capsys, ["convert", str(path), "--arch", '{"name": "resnet18", '
                                                              '"depth": 3}', "-o", str(tmp_path / "g2.pt")])
    assert "name its architecture with --arch" in _error(capsys, ["convert", str(path), "-o", str(tmp_path / "h.pt")])


def test_graphml_limit_names_the_flag(tmp_path, capsys, monkeypatch):
    import gmn.cli.convert

    monkeypatch.setattr(gmn.cli.convert, "GRAPHML_EDGES", 1000)
    err = _error(capsys, ["inspect", "cnn", "--graphml", str(tmp_path / "g.graphml")])
    assert "--graphml writes graphs of up to 1,000 edges" in err and "gmn convert -o" in err
    assert not (tmp_path / "g.graphml").exists()


def test_hugging_face_folder_converts(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.save_pretrained(tmp_path / "my-model")
    assert main(["convert", str(tmp_path / "my-model"), "-o", str(tmp_path / "g.pt")]) == 0
    g = converters.load_graph(tmp_path / "g.pt")
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}  # the tied head counts once
    assert int(g.num_param_edges) == sum(unique.values())
    state = converters.to_state_dict(g)
    torch.testing.assert_close(state["transformer.h.0.attn.c_attn.weight"],
                               model.state_dict()["transformer.h.0.attn.c_attn.weight"])
    (tmp_path / "empty").mkdir()
    assert "folder without config.json" in _error(capsys, ["convert", str(tmp_path / "empty"), "-o",
                                                           str(tmp_path / "x.pt")])


def test_module_attr_is_found_from_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "userpkg_newcomer").mkdir()
    (tmp_path / "userpkg_newcomer" / "nets.py").write_text(
        "import torch\n\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), "
        "torch.nn.Linear(8, 2))\n")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "userpkg_newcomer.nets:make", "--input-shape", "1,4"]) == 0
    assert "converted in" in capsys.readouterr().out
    assert "cannot import 'nopkg.x:y'" in _error(capsys, ["inspect", "nopkg.x:y", "--input-shape", "1,4"])


def _parsers(parser: argparse.ArgumentParser, name: str = "gmn"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _parsers(child, f"{name} {child_name}")


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured["parser"] = self
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    main(["zoo", "info", "/nonexistent-zoo"])
    for name, parser in _parsers(captured["parser"]):
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_forget_reports_the_class_and_the_others(zoo, tmp_path, capsys):
    import json

    out = tmp_path / "forgotten"
    assert main(["edit", str(zoo), "--objective", "forget:3", "--out", str(out), "--train-epochs", "1",
                 "--hidden", "8", "--layers", "1", "--inputs", "32"]) == 0
    printed = capsys.readouterr().out
    assert "mean class_3_acc:" in printed and "mean other_acc:" in printed
    rows = json.loads((out / "edited.json").read_text())
    for row in rows:
        for key in ("class_3_acc_before", "class_3_acc_after", "other_acc_before", "other_acc_after"):
            assert 0.0 <= row[key] <= 1.0
    assert (out / rows[0]["file"]).stat().st_mode & 0o044 == 0o044  # readable by others


def test_the_distribution_has_a_name_of_its_own():
    """``gmn`` on PyPI is another project: the distribution is graph-metanetworks, installs the
    ``gmn`` command and both import packages."""
    import importlib.metadata
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["name"] == "graph-metanetworks" and project["scripts"] == {"gmn": "gmn.cli:main"}
    dist = importlib.metadata.distribution("graph-metanetworks")
    assert [(e.name, e.value) for e in dist.entry_points if e.group == "console_scripts"] == [("gmn", "gmn.cli:main")]
