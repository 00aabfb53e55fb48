"""The architectures the tests convert: (factory, example inputs), built small."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gmn import architectures as A
from gmn.zoo.inr import Siren


class ConvZoo(nn.Module):
    """Conv1d/2d/3d with stride, padding, dilation, groups, depthwise; ConvTranspose2d;
    channel concatenation; GroupNorm; pooling; flatten of a spatial map into Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.branch = nn.Conv2d(8, 4, 3, padding=1)
        self.gn = nn.GroupNorm(3, 12)
        self.up = nn.ConvTranspose2d(12, 6, 2, stride=2)
        self.c3d = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
        self.c1d = nn.Conv1d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x))
        h = F.silu(self.grouped(torch.tanh(self.dw(h))))
        h = torch.cat([h, F.elu(self.branch(h))], dim=1)
        h = self.up(F.gelu(self.gn(h)))
        h = h + self.c3d(h[:, :1].unsqueeze(1)).sum(1)
        h = F.max_pool2d(F.hardswish(h), 2)
        h = self.c1d(h.flatten(2)).view(h.shape[0], 4, 4, 4)
        h = F.avg_pool2d(torch.sigmoid(h), 2)
        return self.fc(h.flatten(1))


class FlattenCNN(nn.Module):
    """The classic layout: conv -> relu -> pool -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 3 * 3, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


class SharedTwice(nn.Module):
    """One hidden layer applied twice (ALBERT's sharing in small)."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(h)))))


def _randomise_buffers(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _hf(name: str):
    transformers = __import__("transformers")
    transformers.logging.set_verbosity_error()
    small = dict(vocab_size=40, max_position_embeddings=16)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=16, use_cache=False)
        return transformers.GPT2LMHeadModel(cfg)
    if name == "bert":
        cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, **small)
        return transformers.BertModel(cfg)
    if name == "llama":
        cfg = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=32, use_cache=False, **small)
        return transformers.LlamaForCausalLM(cfg)
    cfg = transformers.MixtralConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=24, num_local_experts=4,
                                     num_experts_per_tok=2, use_cache=False, **small)
    model = transformers.MixtralForCausalLM(cfg)
    model.set_experts_implementation("batched_mm")
    return model


def tokens(batch: int = 1, length: int = 6, vocab: int = 32):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))


TORCH_CASES = {
    "mlp": (lambda: A.MLP((6, 8, 8, 3)), lambda: torch.randn(2, 6)),
    "mlp_tanh": (lambda: A.MLP((5, 7, 4), act=nn.Tanh), lambda: torch.randn(2, 5)),
    "small_cnn": (lambda: A.SmallCNN(width=6), lambda: torch.randn(2, 1, 8, 8)),
    "flatten_cnn": (FlattenCNN, lambda: torch.randn(2, 1, 6, 6)),
    "conv_zoo": (ConvZoo, lambda: torch.randn(2, 3, 8, 8)),
    "resnet18": (lambda: A.ResNet18(width=4, classes=5), lambda: torch.randn(2, 3, 32, 32)),
    "vit": (lambda: A.ViT(dim=8, heads=2, mlp=16), lambda: torch.randn(2, 3, 8, 8)),
    "vit_mha": (lambda: A.ViT(dim=8, heads=2, mlp=16, kind="fused"), lambda: torch.randn(2, 3, 8, 8)),
    "gqa": (lambda: A.TinyTransformer(dim=16, depth=1, heads=4, kv_heads=2, mlp=16), tokens),
    "moe": (lambda: A.TinyTransformer(dim=8, depth=1, heads=2, mlp=8, experts=4), tokens),
    "siren": (lambda: Siren(hidden=8, depth=3), lambda: torch.rand(2, 2) * 2 - 1),
}
HF_CASES = {name: (lambda name=name: _hf(name), tokens) for name in ("gpt2", "bert", "llama", "mixtral")}
ALL_CASES = {**TORCH_CASES, **HF_CASES}


def build(name: str):
    """A fresh (model, inputs) for case ``name``, seeded, in eval mode."""
    torch.manual_seed(0)
    factory, inputs = ALL_CASES[name]
    if name in HF_CASES:
        __import__("pytest").importorskip("transformers")
    return _randomise_buffers(factory()), inputs()


def output(y):
    """The main tensor of a model output (HF models return ModelOutput)."""
    if isinstance(y, torch.Tensor):
        return y
    return y[0] if isinstance(y, (tuple, list)) else next(iter(y.values()))
