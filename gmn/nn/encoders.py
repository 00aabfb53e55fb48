"""Encoders: node and edge features of a parameter graph -> hidden states.

Nodes: type, activation, depth (sinusoidal), and an index only where the graph has one
(input/output/token nodes); hidden neurons get nothing that tells them apart. Edges:
type, kind (parameter / tied / structure), position (sinusoidal) and the value through
random Fourier features plus the raw value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from converters import edge_kinds
from converters.vocab import Activation, EdgeType, NodeType

from .features import sinusoidal


class VocabEmbedding(nn.Embedding):
    """An embedding of one of the graph's vocabularies, which grow at the end only: a state
    dict saved before a member was added loads, the new member's row keeping its fresh value."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor) and saved.dim() == 2 and saved.shape[1] == self.embedding_dim \
                and saved.shape[0] < self.num_embeddings:
            state_dict[key] = torch.cat([saved, self.weight.detach()[saved.shape[0]:].to(saved)])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NodeEncoder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.type_embed = VocabEmbedding(len(NodeType), hidden)
        self.act = VocabEmbedding(len(Activation), hidden)
        self.depth = nn.Linear(hidden, hidden)
        self.index = nn.Linear(hidden, hidden)

    def forward(self, g) -> Tensor:
        h = self.type_embed(g.node_type.long()) + self.act(g.node_act.long())
        dtype = self.depth.weight.dtype  # sinusoidal features are float32; a float64 model reads them in float64
        h = h + self.depth(sinusoidal(g.node_depth, self.hidden).to(dtype))
        has_index = (g.node_index >= 0).unsqueeze(-1)
        return h + has_index * self.index(sinusoidal(g.node_index.clamp(min=0), self.hidden).to(dtype))


class FourierFeatures(nn.Module):
    """``[sin(2 pi B x), cos(2 pi B x), x]`` with fixed random frequencies ``B``."""

    def __init__(self, features: int, scale: float = 4.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(features // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = 2 * torch.pi * x.unsqueeze(-1) * self.freqs
        return torch.cat([angles.sin(), angles.cos(), x.unsqueeze(-1)], -1)


class EdgeEncoder(nn.Module):
    def __init__(self, hidden: int, fourier: int = 32, scale: float = 4.0):
        super().__init__()
        self.hidden = hidden
        self.type_embed = VocabEmbedding(len(EdgeType), hidden)
        self.kind = nn.Embedding(3, hidden)
        self.pos = nn.Linear(hidden, hidden)
        self.fourier = FourierFeatures(fourier, scale)
        self.value = nn.Linear(fourier // 2 * 2 + 1, hidden)

    def forward(self, g, values: Tensor) -> Tensor:
        return self.encode(g.edge_type, edge_kinds(g), g.edge_pos, values)

    def encode(self, etype: Tensor, kind: Tensor, pos: Tensor, values: Tensor) -> Tensor:
        """States of edges given by type, kind, position and value (any subset of a graph's)."""
        # (type, kind, position) takes few distinct values: embed those once, gather per edge
        etype, pos = etype.long(), pos.long()
        key = (etype * 3 + kind) * (int(pos.max()) + 1 if pos.numel() else 1) + pos
        uniq, inverse = torch.unique(key, return_inverse=True)
        first = torch.zeros_like(uniq).scatter_(0, inverse, torch.arange(key.numel(), device=key.device))
        table = (self.type_embed(etype[first]) + self.kind(kind[first])
                 + self.pos(sinusoidal(pos[first], self.hidden).to(self.pos.weight.dtype)))
        value = torch.nan_to_num(values, nan=0.0, posinf=1e4, neginf=-1e4).to(self.pos.weight.dtype)
        return table.index_select(0, inverse) + self.value(self.fourier(value))
