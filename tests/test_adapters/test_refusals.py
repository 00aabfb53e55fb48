"""Hostile or foreign adapter folders: one line naming the file and the problem, nothing allocated first."""

from __future__ import annotations

import json
import resource

import pytest
import torch
from safetensors.torch import save_file

from adapters import AdapterError, from_peft, to_peft

from .cases import make

KEY = "base_model.model.model.layers.0.self_attn.q_proj"


def _config(**changes) -> dict:
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}
    config.update(changes)
    return config


def _folder(tmp_path, config: dict, tensors: dict | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    tensors = tensors if tensors is not None else {f"{KEY}.lora_A.weight": torch.ones(2, 8),
                                                     f"{KEY}.lora_B.weight": torch.ones(8, 2)}
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    return tmp_path


def _refused(path, *words):
    with pytest.raises(AdapterError) as err:
        from_peft(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


def test_a_minimal_folder_converts(tmp_path):
    from adapters import is_adapter_folder

    g = from_peft(_folder(tmp_path / "one", _config()))
    assert int(g.num_param_edges) == 32
    _folder(tmp_path / "two" / "sub", _config())
    assert is_adapter_folder(tmp_path / "one") and is_adapter_folder(tmp_path / "two")
    assert not is_adapter_folder(tmp_path / "one" / "adapter_config.json") and not is_adapter_folder(tmp_path / "x")


@pytest.mark.parametrize("kind", ["IA3", "LOHA", "LOKR", "ADALORA", "PROMPT_TUNING"])
def test_other_peft_types_are_named(tmp_path, kind):
    _refused(_folder(tmp_path, _config(peft_type=kind)), kind, "not LoRA")


def test_unknown_keys_are_refused(tmp_path):
    tensors = {f"{KEY}.lora_A.weight": torch.ones(2, 8), f"{KEY}.lora_B.weight": torch.ones(8, 2),
               "base_model.model.model.layers.0.mlp.up_proj.weight": torch.ones(3, 3)}
    _refused(_folder(tmp_path, _config(), tensors), "unknown key", "up_proj")
    _refused(_folder(tmp_path, _config(), {"evil": torch.ones(1)}), "unknown key")


def test_shapes_that_disagree_with_the_config_are_refused(tmp_path):
    _refused(_folder(tmp_path, _config(r=3)), "rank-3")
    _refused(_folder(tmp_path, _config(rank_pattern={"q_proj": 4})), "rank-4")
    tensors = {f"{KEY}.lora_A.weight": torch.ones(2, 8)}
    _refused(_folder(tmp_path, _config(), tensors), "no lora_B")
    _refused(_folder(tmp_path, _config(), {f"{KEY}.lora_A.weight": torch.ones(2, 8),
                                           f"{KEY}.lora_B.weight": torch.ones(8, 2),
                                           f"{KEY}.lora_magnitude_vector": torch.ones(8)}), "use_dora is false")


@pytest.mark.parametrize("rank", [0, -1, 10**12, 2.5, "16", None])
def test_hostile_ranks_are_refused_before_any_allocation(tmp_path, rank):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(_folder(tmp_path, _config(r=rank), {}), "r is")
    _refused(_folder(tmp_path, _config(rank_pattern={"q_proj": rank}), {}), "rank_pattern")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_unreadable_and_oversized_files_are_one_line(tmp_path):
    folder = _folder(tmp_path, _config())
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    _refused(folder, "safetensors")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    _refused(folder, "pickle")
    (folder / "adapter_config.json").write_text("{not json")
    _refused(folder, "not JSON")
    (folder / "adapter_config.json").write_bytes(b"\xff\xfe{}")
    _refused(folder, "not UTF-8")
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(folder, "nested too deeply")
    _refused(_folder(tmp_path / "bad", _config(target_parameters=["experts.gate_up_proj"])), "target_parameters")
    _refused(_folder(tmp_path / "pattern", _config(alpha_pattern={"(": 2})), "regular expression")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        from_peft(tmp_path / "empty")


def test_a_base_that_disagrees_is_named(tmp_path):
    factory, _, _ = make("llama", tmp_path / "llama")
    folder = _folder(tmp_path / "wide", _config(), {f"{KEY}.lora_A.weight": torch.ones(2, 7),
                                                    f"{KEY}.lora_B.weight": torch.ones(8, 2)})
    with pytest.raises(AdapterError, match=r"adapter is a linear 7 -> 8; the base's layer is a linear 32 -> 32"):
        from_peft(folder, base=factory())
    missing = _folder(tmp_path / "missing", _config(), {
        "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": torch.ones(2, 32),
        "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": torch.ones(32, 2)})
    with pytest.raises(AdapterError, match="layers.9.self_attn.q_proj is adapted but the base has no such layer"):
        from_peft(missing, base=factory())


def test_to_peft_refuses_to_overwrite_and_graphs_without_adapters(tmp_path):
    g = from_peft(_folder(tmp_path / "a", _config()))
    to_peft(g, None, tmp_path / "out")
    with pytest.raises(AdapterError, match="exists"):
        to_peft(g, None, tmp_path / "out")
    g.peft_adapters = json.dumps({"adapters": [{"name": "x", "subdir": "../escape", "config": "{}"}]})
    with pytest.raises(AdapterError, match="malformed"):
        to_peft(g, None, tmp_path / "out2")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_half_and_double_adapters_round_trip_bit_identically(tmp_path, dtype):
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(0)
    tensors = {f"{KEY}.lora_A.weight": torch.randn(2, 8, generator=gen).to(dtype),
               f"{KEY}.lora_B.weight": torch.randn(8, 2, generator=gen).to(dtype)}
    g = from_peft(_folder(tmp_path / "in", _config(), tensors))
    to_peft(g, None, tmp_path / "out")
    back = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    for key, t in tensors.items():
        assert back[key].dtype == dtype and torch.equal(back[key].view(torch.uint8), t.view(torch.uint8))


def test_integer_tensors_are_refused(tmp_path):
    tensors = {f"{KEY}.lora_A.weight": torch.ones(2, 8, dtype=torch.int64), f"{KEY}.lora_B.weight": torch.ones(8, 2)}
    _refused(_folder(tmp_path, _config(), tensors), "I64", "floating point")


def test_converters_loads_adapters_lazily_and_never_gmn_or_peft():
    import subprocess
    import sys

    code = ("import sys, converters; assert 'adapters' not in sys.modules; f = converters.from_peft; "
            "assert 'adapters' in sys.modules and 'gmn' not in sys.modules and 'peft' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)*", r"(x)\1", ".*.*.*q", "q" * 600])
def test_patterns_that_backtrack_are_refused(tmp_path, pattern):
    _refused(_folder(tmp_path, _config(alpha_pattern={pattern: 2})), "could take exponential time")


def test_long_keys_are_refused(tmp_path):
    long = "base_model.model." + "a." * 600 + "q_proj"
    _refused(_folder(tmp_path, _config(), {f"{long}.lora_A.weight": torch.ones(2, 8),
                                           f"{long}.lora_B.weight": torch.ones(8, 2)}), "characters")


def test_peft_adapters_of_fused_experts_are_refused_in_one_line(tmp_path):
    """PEFT's own folder with LoRA on a mixture-of-experts layer's fused expert tensors (what PEFT
    >= 0.22 writes for ``target_modules=["gate_proj", ...]`` on Qwen2-MoE): refused, not misread."""
    import peft

    from .cases import _moe

    torch.manual_seed(0)
    model = peft.get_peft_model(_moe().double(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                 target_parameters=["experts.gate_up_proj"]))
    model.save_pretrained(tmp_path)
    _refused(tmp_path, "target_parameters", "fused experts")
