"""``gmn convert`` over several files of one architecture (one trace, then reads) and over PEFT
adapter folders (``--base``), through the command line."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from safetensors.torch import save_file

import converters
from gmn.cli import main


def _checkpoints(folder, count: int) -> list[str]:
    """``count`` checkpoints of the built-in mlp, each its own random weights."""
    from gmn.checkpoints import build_arch, parse_arch

    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = build_arch(parse_arch("mlp"))[0]
        path = folder / f"mlp-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        paths.append(str(path))
    return paths


def test_several_checkpoints_of_one_architecture_are_traced_once(tmp_path, capsys):
    paths = _checkpoints(tmp_path, 3)
    out = tmp_path / "graphs"
    assert main(["convert", *paths, "--arch", "mlp", "-o", str(out)]) == 0
    assert "converted 3 models (1 traced)" in capsys.readouterr().out
    values = []
    for seed, path in enumerate(paths):
        single = tmp_path / "single.pt"
        assert main(["convert", path, "--arch", "mlp", "-o", str(single), "--force"]) == 0
        many, one = converters.load_graph(out / f"mlp-{seed}.pt"), converters.load_graph(single)
        assert torch.equal(many.edge_index, one.edge_index) and torch.equal(many.edge_value, one.edge_value)
        values.append(many.edge_value)
    assert not torch.equal(values[0], values[1])  # each file's own weights, not the template's


def test_onnx_files_of_one_architecture_are_traced_once(tmp_path, capsys):
    import warnings

    pytest.importorskip("onnxscript")
    from gmn.architectures import SmallCNN

    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"cnn-{seed}.onnx"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(SmallCNN().eval(), (torch.randn(1, 1, 8, 8),), paths[-1], dynamo=True, optimize=False,
                              verbose=False)
    assert main(["convert", *paths, "-o", str(tmp_path / "graphs")]) == 0
    assert "converted 2 models (1 traced)" in capsys.readouterr().out
    for seed, path in enumerate(paths):
        g, fresh = converters.load_graph(tmp_path / "graphs" / f"cnn-{seed}.pt"), converters.from_onnx(path)
        assert torch.equal(g.edge_index, fresh.edge_index) and torch.equal(g.edge_value, fresh.edge_value)


def test_several_models_need_a_folder_and_distinct_names(tmp_path, capsys):
    paths = _checkpoints(tmp_path, 2)
    assert main(["convert", *paths, "--arch", "mlp", "-o", str(tmp_path / "g.pt")]) == 2
    assert "-o is a folder" in capsys.readouterr().err
    assert main(["convert", paths[0], paths[0], "--arch", "mlp", "-o", str(tmp_path / "out")]) == 2
    assert "one name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A PEFT LoRA adapter of a tiny Llama (every adapter tensor random: B starts at zero) and its base folder."""
    root = tmp_path_factory.mktemp("adapter")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=40)
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    model.save_pretrained(root / "adapter")
    return root


def test_an_adapter_folder_converts_over_its_base(adapter, tmp_path, capsys):
    out = tmp_path / "a.pt"
    assert main(["convert", str(adapter / "adapter"), "--base", str(adapter / "base"), "-o", str(out)]) == 0
    g = converters.load_graph(out)
    direct = converters.from_peft(adapter / "adapter", base=str(adapter / "base"))
    assert torch.equal(g.edge_index, direct.edge_index) and torch.equal(g.edge_value, direct.edge_value)
    # every adapter scalar is one edge: 2 layers x (q, v) x (A: 4 x 32, B: 32 x 4 or 16 x 4)
    state = peft.utils.load_peft_weights(str(adapter / "adapter"))
    assert int(g.num_param_edges) == sum(v.numel() for v in state.values())
    assert main(["inspect", str(adapter / "adapter")]) == 0  # without a base: each module's neurons its own
    assert "parameter graph" in capsys.readouterr().out


def test_base_without_an_adapter_is_refused(adapter, tmp_path, capsys):
    assert main(["convert", "mlp", "--base", str(adapter / "base"), "-o", str(tmp_path / "g.pt")]) == 2
    err = capsys.readouterr().err
    assert "--base goes with a PEFT adapter folder" in err and not (tmp_path / "g.pt").exists()


def test_merging_adapter_folders_is_peft_s_cat_merge(adapter, tmp_path, capsys):
    """``gmn merge A B --method task-arithmetic`` on two adapters of one base writes an adapter
    folder that computes what PEFT's own ``add_weighted_adapter(..., "cat")`` computes."""
    base_folder = adapter / "base"
    second = tmp_path / "second"
    model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(base_folder),
                                peft.LoraConfig(r=2, lora_alpha=6, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(generator=torch.Generator().manual_seed(hash(name) % 1000))
    model.save_pretrained(second)
    out = tmp_path / "merged"
    assert main(["merge", str(adapter / "adapter"), str(second), "--method", "task-arithmetic",
                 "--base", str(base_folder), "-o", str(out)]) == 0
    assert "(exact)" in capsys.readouterr().out
    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    ours = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_folder), out)
    theirs = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_folder),
                                            adapter / "adapter", adapter_name="a")
    theirs.load_adapter(second, adapter_name="b")
    theirs.add_weighted_adapter(["a", "b"], [1.0, 1.0], "ab", combination_type="cat")
    theirs.set_adapter("ab")
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(tokens).logits, theirs.eval()(tokens).logits, rtol=1e-4, atol=1e-4)
    assert main(["merge", str(adapter / "adapter"), "mlp", "-o", str(tmp_path / "mix")]) == 2
    assert "not a mix" in capsys.readouterr().err
