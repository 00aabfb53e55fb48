"""The ``gmn`` command and the summary."""

import torch
from safetensors.torch import save_file

import converters
from gmn import architectures as A
from gmn import summary
from gmn.cli import main


def test_inspect_builtin(capsys):
    assert main(["inspect", "cnn"]) == 0
    out = capsys.readouterr().out
    assert "parameter graph:" in out and "convs.0" in out and "converted in" in out


def test_convert_checkpoint_then_inspect_saved_graph(tmp_path, capsys):
    model = A.BUILTIN["mlp"][0]()
    ckpt = tmp_path / "mlp.safetensors"
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / "mlp.graph.pt"
    assert main(["convert", str(ckpt), "--arch", "mlp", "-o", str(out)]) == 0
    g = converters.load_graph(out)
    sd = converters.to_state_dict(g)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v)
    assert main(["inspect", str(out), "--graphml", str(tmp_path / "g.graphml")]) == 0
    assert (tmp_path / "g.graphml").exists()
    assert f"{sum(p.numel() for p in model.parameters())} parameters" in capsys.readouterr().out


def test_summary_counts_parameters_by_layer():
    model = A.MLP((4, 5, 2))
    g = converters.from_torch(model, torch.randn(1, 4))
    text = summary(g)
    assert "0" in text and "25" in text and "12" in text  # layer 0: 4*5+5, layer 2: 5*2+2


def test_bench_property_end_to_end(tmp_path, capsys):
    import json

    out = tmp_path / "bench"
    args = ["bench", "property", "--runs", "8", "--epochs", "2", "--workers", "1", "--train-epochs", "2",
            "--hidden", "8", "--layers", "1", "--methods", "statnn,mlp,gmn", "--seeds", "2", "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    for method in ("statnn", "mlp", "gmn"):
        row = next(line for line in table.splitlines() if line.startswith(f"{method} "))
        assert "±" in row  # mean ± std over the two seeds
    assert "16 checkpoints of 8 runs" in table and "2 seeds" in table
    result = json.loads((out / "property.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["results"]] == [
        (m, s) for s in (0, 1) for m in ("statnn", "mlp", "gmn")]
    # the seeds draw different splits: their test sets differ
    assert result["results"][0]["true"] != result["results"][3]["true"]
    assert (out / "property.png").stat().st_size > 10_000 and (out / "property.txt").read_text().strip()


def test_zoo_commands(tmp_path, capsys):
    assert main(["zoo", "build", str(tmp_path / "z"), "--runs", "2", "--epochs", "1", "--workers", "1"]) == 0
    assert main(["zoo", "info", str(tmp_path / "z")]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 checkpoints" in out and "cnn" in out
    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file(A.BUILTIN["mlp"][0]().state_dict(), str(folder / "a.safetensors"))
    (folder / "t.csv").write_text("path,test_acc\na.safetensors,0.5\n")
    assert main(["zoo", "import", str(folder), "--targets", str(folder / "t.csv"), "--arch", "mlp"]) == 0
    assert "1 runs, 1 checkpoints" in capsys.readouterr().out
