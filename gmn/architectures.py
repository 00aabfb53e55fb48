"""Reference architectures in plain PyTorch (no torchvision): used by tests, examples,
benchmarks and zoos. Each is small by default and scales with its arguments."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear``."""

    def __init__(self, sizes: tuple[int, ...] = (16, 32, 32, 10), act: type[nn.Module] = nn.ReLU):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Conv stack, global average pooling, linear head (the Small CNN Zoo layout)."""

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 3, classes: int = 10,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        chans = [in_channels] + [width] * depth
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2 if i else 1, padding=1)
                                   for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        self.act = act()
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = mid * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """A ResNet: stem, stages of residual blocks (the first of each later stage strides),
    global average pooling, a linear head."""

    def __init__(self, block: type[nn.Module], counts: tuple[int, ...], expansion: int, width: int = 64,
                 classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, count in enumerate(counts):
            for j in range(count):
                blocks.append(block(cin, width * 2**i, 2 if (j == 0 and i > 0) else 1))
                cin = width * 2**i * expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet18(ResNet):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``width=64`` is the standard 11.7 M-parameter size."""

    def __init__(self, width: int = 64, classes: int = 1000, in_channels: int = 3):
        super().__init__(BasicBlock, (2, 2, 2, 2), 1, width, classes, in_channels)


class ResNet50(ResNet):
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``width=64`` is the standard 25.6 M-parameter size."""

    def __init__(self, width: int = 64, classes: int = 1000, in_channels: int = 3):
        super().__init__(Bottleneck, (3, 4, 6, 3), 4, width, classes, in_channels)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections; ``kv_heads < heads`` is GQA."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.v = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) / self.head_dim**0.5
        out = scores.softmax(-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class MoE(nn.Module):
    """Top-k mixture of expert MLPs: a router ``Linear`` and an ``nn.ModuleList`` of experts."""

    def __init__(self, dim: int, hidden: int, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) for _ in range(experts)
        )

    def forward(self, x: Tensor) -> Tensor:
        probs = self.router(x).softmax(-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        out = 0
        for e, expert in enumerate(self.experts):
            out = out + gates[..., e : e + 1] * expert(x)
        return out


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, kind: str = "separate", kv_heads: int | None = None,
                 experts: int = 0):
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if kind == "fused":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.attn = Attention(dim, heads, kv_heads)
        self.mlp = MoE(dim, mlp, experts) if experts else nn.Sequential(
            nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        h = self.attn(h, h, h, need_weights=False)[0] if self.kind == "fused" else self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small vision transformer: patch conv, class token, learned positions, blocks, head."""

    def __init__(self, image: int = 8, patch: int = 4, channels: int = 3, dim: int = 16, depth: int = 2,
                 heads: int = 2, mlp: int = 32, classes: int = 10, kind: str = "separate"):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp, kind) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TinyTransformer(nn.Module):
    """A token model: embedding, learned positions, blocks (optionally MoE / GQA), LM head."""

    def __init__(self, vocab: int = 32, dim: int = 16, depth: int = 2, heads: int = 4, mlp: int = 32,
                 kv_heads: int | None = None, experts: int = 0, max_len: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp, "separate", kv_heads, experts)
                                      for _ in range(depth)))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        return self.head(self.norm(self.blocks(x)))


def _tokens(batch: int = 2, length: int = 8, vocab: int = 32) -> Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))


#: Built-in architectures by name: ``name -> (factory, example inputs)``. A factory takes its
#: class's keyword arguments (``BUILTIN["resnet18"][0](width=16, classes=10)``); ``gmn --arch``
#: passes them as JSON (``{"name": "resnet18", "width": 16, "classes": 10}``).
BUILTIN = {
    "mlp": (partial(MLP, sizes=(64, 128, 128, 10)), lambda: torch.randn(2, 64)),
    "cnn": (SmallCNN, lambda: torch.randn(2, 1, 28, 28)),
    "resnet18": (ResNet18, lambda: torch.randn(1, 3, 64, 64)),
    "resnet50": (ResNet50, lambda: torch.randn(1, 3, 64, 64)),
    "vit": (partial(ViT, image=32, patch=4, dim=64, depth=4, heads=4, mlp=128), lambda: torch.randn(2, 3, 32, 32)),
    "gqa-transformer": (partial(TinyTransformer, dim=64, depth=2, heads=8, kv_heads=2, mlp=128), _tokens),
    "moe-transformer": (partial(TinyTransformer, dim=64, depth=2, heads=4, mlp=128, experts=4), _tokens),
}
