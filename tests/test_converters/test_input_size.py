"""The converter's work follows the model, not the example input: every op's shadow of neuron
ids stays a broadcast over spatial positions and tokens (its compact size is the same at
two input sizes), and the graph itself is the same at both."""

from __future__ import annotations

import pytest
import torch
from foreign.catalogue import HF, build_hf

import converters
import converters.torch_frontend as frontend
from converters.tensor_info import TensorInfo, compact, reshape_shadow
from gmn import architectures as A

APPLY = frontend._apply  # the rules' dispatcher, before any test wraps it
STRUCTURE = ("edge_index", "edge_type", "edge_pos", "node_type", "node_depth", "node_act", "node_index")


def _tokens(n: int) -> torch.Tensor:
    return torch.randint(3, 60, (1, n), generator=torch.Generator().manual_seed(n))


def _image(side: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(side))


def _hf(name: str):
    def make():
        model, _ = build_hf(name)
        return model
    return make


#: name -> (model factory, example input at a size, two sizes)
CASES = {
    "resnet18": (lambda: A.ResNet18(width=8, classes=5), _image, (32, 96)),
    "gqa-transformer": (lambda: A.TinyTransformer(dim=16, heads=4, kv_heads=2, max_len=64), _tokens, (8, 48)),
    "moe-transformer": (lambda: A.TinyTransformer(dim=16, heads=4, experts=3, max_len=64), _tokens, (8, 48)),
    **{name: (_hf(name), _tokens, (8, 40)) for name in ("gpt2", "llama", "bert", "mixtral")},
}


def _convert_recording(monkeypatch, model, x) -> tuple[object, list[tuple]]:
    """The graph, and for each op with a neuron shadow: its name and the shadow's compact shape."""
    shapes = []

    def recording(ctx, node):
        out = APPLY(ctx, node)
        for info in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(info, TensorInfo) and info.param is None:
                shapes.append((str(node.target), tuple(compact(info.ids).shape)))
        return out

    monkeypatch.setattr(frontend, "_apply", recording)
    return converters.from_torch(model, x), shapes


@pytest.mark.parametrize("name", sorted(CASES))
def test_shadows_and_graph_do_not_grow_with_the_input(name, monkeypatch):
    if name in HF:
        pytest.importorskip("transformers")
    make, example, (small, large) = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    g_small, shapes_small = _convert_recording(monkeypatch, model, example(small))
    g_large, shapes_large = _convert_recording(monkeypatch, model, example(large))
    grown = [(a, b) for a, b in zip(shapes_small, shapes_large) if a != b]
    assert len(shapes_small) == len(shapes_large)
    assert not grown, f"{name}: shadows written out along the input's size: {grown[:3]}"
    for field in STRUCTURE:
        assert torch.equal(getattr(g_small, field), getattr(g_large, field)), field
    assert torch.equal(g_small.edge_value, g_large.edge_value)


def test_reshape_shadow_equals_reshape_and_keeps_broadcasts():
    ids = torch.arange(12).view(1, 1, 12).expand(2, 50, 12)  # (batch, tokens, channels)
    for shape in ((2, 50, 3, 4), (2, 50, 12), (100, 12), (2, 600), (2, 50, 2, 6)):
        out = reshape_shadow(ids, shape)
        assert torch.equal(out, ids.reshape(shape)), shape
    heads = reshape_shadow(ids, (2, 50, 3, 4))
    assert heads.stride(1) == 0 and compact(heads).shape == (1, 1, 3, 4)
    split = reshape_shadow(ids.permute(0, 2, 1), (2, 3, 4, 50))  # heads split off a non-view layout
    assert torch.equal(split, ids.permute(0, 2, 1).reshape(2, 3, 4, 50)) and split.stride(3) == 0
