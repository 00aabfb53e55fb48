"""Adapters nobody here wrote: PEFT's own LoraConfig on tiny transformers bases built offline.

Every case is float64 and every adapter tensor is set to random values (PEFT initialises ``B`` to
zero, which would hide every mistake). ``make(name, folder)`` returns ``(base factory, inputs)``
after saving the adapter(s) into ``folder``; the factory builds a fresh base of the same weights.
"""

from __future__ import annotations

import copy

import peft
import torch
import transformers
from torch import nn

VOCAB = 40


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x, label):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        return self.fc(h + self.emb(label))


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB)
    return transformers.LlamaForCausalLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                  vocab_size=VOCAB, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def _t5():
    cfg = transformers.T5Config(d_model=32, d_ff=48, num_layers=1, num_decoder_layers=1, num_heads=4, d_kv=8,
                                vocab_size=VOCAB, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg)


def _vit():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                                 image_size=8, patch_size=4, num_channels=3, num_labels=3)
    return transformers.ViTForImageClassification(cfg)


def _moe():
    cfg = transformers.Qwen2MoeConfig(hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, vocab_size=VOCAB,
                                      experts_implementation="eager")
    return transformers.Qwen2MoeForCausalLM(cfg)


def _tokens(gen, *extra):
    ids = torch.randint(0, VOCAB, (2, 6), generator=gen)
    return {"input_ids": ids, **{k: ids for k in extra}}


#: name -> (base builder, LoRA configs by adapter name, inputs)
CASES = {
    "llama": (_llama, {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                       rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 3})},
              lambda gen: _tokens(gen)),
    "gpt2": (_gpt2, {"default": dict(r=3, lora_alpha=6, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                     bias="all")},
             lambda gen: _tokens(gen)),
    "bert": (_bert, {"default": dict(r=3, lora_alpha=5, target_modules=r".*attention\.self\.(query|value)",
                                     bias="lora_only", modules_to_save=["classifier"])},
             lambda gen: _tokens(gen)),
    "t5": (_t5, {"default": dict(r=4, lora_alpha=4, target_modules=["q", "v", "wo"], use_rslora=True)},
           lambda gen: _tokens(gen, "decoder_input_ids")),
    "vit": (_vit, {"default": dict(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "fc1"], use_dora=True)},
            lambda gen: {"pixel_values": torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)}),
    # The shared expert by its full names: PEFT >= 0.22 turns a bare "gate_proj" into target_parameters on the
    # fused routed experts (gate_up_proj), which gmn refuses (test_refusals) rather than reading wrong.
    "moe": (_moe, {"default": dict(r=2, lora_alpha=4, target_modules=[
        "q_proj", "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj"])},
            lambda gen: _tokens(gen)),
    "cnn": (SmallCNN, {"default": dict(r=2, lora_alpha=3, target_modules=["conv1", "conv2", "emb", "fc"],
                                       use_dora=True)},
            lambda gen: (torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64),
                         torch.randint(0, 10, (2,), generator=gen))),
    "embedding": (_llama, {"default": dict(r=3, lora_alpha=5, target_modules=["embed_tokens", "q_proj"])},
                  lambda gen: _tokens(gen)),
    "two": (_llama, {"default": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                     "other": dict(r=3, lora_alpha=2, target_modules=["q_proj", "down_proj"], use_dora=True)},
            lambda gen: _tokens(gen)),
}


def perturb(model: nn.Module, seed: int) -> None:
    """Every adapter tensor (LoRA factors, DoRA magnitudes, saved biases and modules) random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name or (name.endswith("bias") and p.requires_grad):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + (1.0 if "magnitude" in name else 0))


def make(name: str, folder, seed: int = 0):
    """Save case ``name``'s adapters into ``folder``; returns (fresh base factory, inputs, PeftModel)."""
    build, configs, inputs = CASES[name]
    torch.manual_seed(seed)
    base = build().double().eval()
    pristine = copy.deepcopy(base)
    adapters = list(configs.items())
    model = peft.get_peft_model(base, peft.LoraConfig(**adapters[0][1]), adapter_name=adapters[0][0])
    for adapter, config in adapters[1:]:
        model.add_adapter(adapter, peft.LoraConfig(**config))
    model = model.double().eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    gen = torch.Generator().manual_seed(seed + 1)
    return (lambda: copy.deepcopy(pristine)), inputs(gen), model


def outputs(model, inputs, adapter: str = "default") -> torch.Tensor:
    """The model's output tensor (logits) on ``inputs`` with ``adapter`` active."""
    model.set_adapter(adapter)
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def load(base_factory, folder, adapters=("default",)):
    """``PeftModel.from_pretrained`` of ``folder`` (and its other adapters) on a fresh base."""
    model = peft.PeftModel.from_pretrained(base_factory(), folder, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.load_adapter(f"{folder}/{name}", adapter_name=name)
    return model.eval()
