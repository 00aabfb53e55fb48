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
