"""The converter never offers a symmetry the model does not have: what a rule cannot record
is pinned, ties are respected, look-alike structure is told apart. Each model here has a
"symmetry" that a graph missing one fact would offer; each check fails without that fact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from foreign.harness import perturb, rebuilt
from models import SharedTwice
from torch import nn

import converters
from converters import NodeType
from gmn import symmetry


def _sound(model: nn.Module, x, seeds: int = 6) -> tuple[object, torch.Tensor]:
    """Convert in float64 after noise; every random symmetry must keep the outputs."""
    model = perturb(model)
    g = converters.from_torch(model, x)
    with torch.no_grad():
        y = model(x)
    moved = torch.zeros(g.num_nodes, dtype=torch.bool)
    for seed in range(seeds):
        g2, pi, _ = symmetry.random_symmetry(g, seed=seed, return_maps=True)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(model, g2)(x), y, rtol=1e-10, atol=1e-10)
        moved |= pi != torch.arange(g.num_nodes)
    return g, moved


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64)


class FFTMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.fft.fft(self.b(h), dim=-1).real)


def test_an_op_without_a_rule_that_mixes_channels_is_pinned():
    g, moved = _sound(FFTMixer(), _x(3, 4))
    assert any("fft" in p for p in g.param_index.pins)
    hidden = g.node_type == int(NodeType.HIDDEN)
    assert bool((moved & hidden).any())  # the first layer's units still move


class MaskedAttention(nn.Module):
    """A learned per-head bias handed to SDPA as its mask (T5/BEiT-style)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 24), nn.Linear(8, 3)
        self.bias = nn.Embedding(5, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).view(1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        mask = self.bias(torch.arange(5)).t().unsqueeze(-1)  # (heads, query, 1)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(h.transpose(1, 2).reshape(1, 5, 8))


def test_an_ignored_attention_mask_pins_its_heads():
    g, _ = _sound(MaskedAttention(), _x(1, 5, 4))
    assert any("scaled_dot_product" in p for p in g.param_index.pins)


def test_a_layer_applied_twice_moves_as_one():
    g, moved = _sound(SharedTwice(), _x(4, 3))
    assert int(g.num_tied_edges) == 30
    assert bool(moved.any())


class TwoPowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.a(x) ** 2 + self.b(x) ** 3)


class TwoTables(nn.Module):
    """Token and position tables of one size, summed (GPT-2 with vocabulary = context)."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos, self.out = nn.Embedding(6, 4), nn.Embedding(6, 4), nn.Linear(4, 6)

    def forward(self, ids):
        return self.out(self.tok(ids) + self.pos(torch.arange(ids.shape[1])))


class RotateHalf(nn.Module):
    """``x * cos + rotate_half(x) * sin`` with the tables computed from a parameter (RoFormer)."""

    def __init__(self):
        super().__init__()
        self.q, self.table, self.out = nn.Linear(3, 4), nn.Embedding(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        q = self.q(x)
        sin, cos = self.table(torch.arange(5)).chunk(2, -1)
        sin, cos = (torch.stack([t, t], -1).reshape(5, 4) for t in (sin, cos))
        rotated = torch.stack([-q[..., 1::2], q[..., ::2]], -1).reshape_as(q)
        return self.out(q * cos + rotated * sin)


class Select(nn.Module):
    """``where(x > 0, a(x), b(x))`` and ``maximum``: the two branches of ``where`` differ."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(3, 4) for _ in range(4))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        mask = x[:, :1] > 0
        return self.out(torch.where(mask, self.a(x), self.b(x)) * torch.maximum(self.c(x), self.d(x)))


class GatedAndResampled(nn.Module):
    """GLU (Speech2Text's convolution block) and a bicubically resized parameter (YOLOS's
    position embeddings)."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv1d(3, 8, 3, padding=1), nn.Linear(4, 2)
        self.table = nn.Parameter(torch.randn(1, 4, 3, 3))

    def forward(self, x):
        h = F.glu(self.conv(x), dim=1)  # (b, 4, L)
        pos = F.interpolate(self.table, size=(2, 3), mode="bicubic", align_corners=False).flatten(2)
        return self.out((h + pos[..., : h.shape[-1]]).transpose(1, 2))


@pytest.mark.parametrize("model,x", [
    (GatedAndResampled(), _x(1, 3, 6)),
    (Select(), _x(6, 3)),
    (TwoPowers(), _x(4, 3)),
    (TwoTables(), torch.tensor([[1, 3, 5, 0, 2, 4]])),
    (RotateHalf(), _x(5, 3)),
])
def test_look_alike_structure_is_told_apart(model, x):
    _sound(model, x)


def test_permute_values_refuses_a_relabelling_that_breaks_ties():
    torch.manual_seed(0)
    g = converters.from_torch(SharedTwice().double(), _x(4, 3))
    pi = symmetry.random_automorphism(g, torch.Generator().manual_seed(0))
    symmetry.permute_values(g, pi)  # a real automorphism is accepted
    # swap two hidden units of the second application only: the plain graph allows it, the ties do not
    hidden = (g.node_type == int(NodeType.HIDDEN)).nonzero().squeeze(1)
    depth = g.node_depth[hidden]
    second = hidden[depth == depth.unique()[2]]
    bad = torch.arange(g.num_nodes)
    bad[second[0]], bad[second[1]] = second[1], second[0]
    with pytest.raises(ValueError, match="automorphism"):
        symmetry.permute_values(g, bad)


def test_a_rule_that_drops_a_parameter_stops_the_conversion():
    from converters.registry import OP_RULES

    class Resampled(nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.out = nn.Parameter(torch.randn(1, 2, 3, 3)), nn.Linear(9, 2)

        def forward(self, x):
            return self.out(x + F.interpolate(self.table, size=(3, 3), mode="nearest").flatten(1)[:, :9])

    saved = OP_RULES["aten.upsample_nearest2d"]
    OP_RULES["aten.upsample_nearest2d"] = lambda ctx, node: converters.context.nonneuron(ctx.shape())
    try:
        with pytest.raises(converters.ConversionError, match="drops parameter 'table'"):
            converters.from_torch(Resampled(), torch.randn(2, 9))
    finally:
        OP_RULES["aten.upsample_nearest2d"] = saved


class EinsumLayers(nn.Module):
    """A dense layer, a product with a 3-D parameter and two-head attention, all as einsum."""

    def __init__(self):
        super().__init__()
        self.w, self.w2 = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(4, 2, 6))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(torch.einsum("bld,hd->blh", x, self.w))
        qk = torch.einsum("blh,nkh->blnk", h, self.w2)  # (b, l, heads=4... as 2 heads of 2x2)
        q, k = qk[..., 0].view(1, 3, 2, 2), qk[..., 1].view(1, 3, 2, 2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return self.out(torch.einsum("bhqk,bkhd->bqhd", s, q).reshape(1, 3, 4))


def test_einsum_is_lowered_not_pinned():
    g, moved = _sound(EinsumLayers(), _x(1, 3, 4))
    assert g.param_index.pins == ()
    assert int(g.num_param_edges) == 6 * 4 + 4 * 2 * 6 + 4 * 2 + 2
    assert bool((moved & (g.node_type == int(NodeType.HIDDEN))).any())


class ThreeOperandEinsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.inp, self.o = (nn.Linear(4, 4) for _ in range(5))

    def forward(self, x):
        h = self.inp(x)
        q, k = F.elu(self.q(h)) + 1, F.elu(self.k(h)) + 1
        return self.o(torch.einsum("...nd,...ne,...me->...md", q, k, self.v(h)))


def test_pinned_neurons_survive_clean_up():
    """An ellipsis is not lowered: all operands are pinned, and the pins on the activations of the
    operands the result does not name must survive the removal of dead structure."""
    g, _ = _sound(ThreeOperandEinsum(), _x(1, 5, 4), seeds=8)
    assert any("einsum" in p for p in g.param_index.pins)


class ConstantScale(nn.Module):
    """Hidden units times a constant made in ``forward``: one repeated number, or one per unit."""

    def __init__(self, repeated: bool):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.repeated = repeated

    def forward(self, x):
        scale = torch.full((6,), 1.5, dtype=x.dtype) if self.repeated else torch.arange(1.0, 7.0, dtype=x.dtype)
        return self.b(torch.relu(self.a(x)) * scale)


def test_a_constant_of_one_repeated_number_keeps_units_interchangeable():
    _, moved = _sound(ConstantScale(repeated=True), _x(3, 4))
    assert bool(moved.any())  # the fill multiplies every unit alike


def test_a_constant_that_differs_per_unit_fixes_them():
    g, moved = _sound(ConstantScale(repeated=False), _x(3, 4))
    hidden = g.node_type == int(NodeType.HIDDEN)
    assert not bool((moved & hidden).any())


class TwinBranches(nn.Module):
    """Two branches of one structure, each with BatchNorm, concatenated (an Inception block):
    swapping the branches is a symmetry, and each one's running statistics must go along."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 1)
        self.left = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        return self.head(torch.cat([self.left(h), self.right(h)], 1))


def test_whole_branches_swap_with_their_running_statistics():
    g, _ = _sound(TwinBranches().eval(), _x(1, 2, 5, 5), seeds=12)
    left, right = (g.param_index.buffer_nodes[f"{b}.1.running_mean"][1] for b in ("left", "right"))
    swaps = [seed for seed in range(12)
             if bool(torch.isin(symmetry.random_symmetry(g, seed=seed, return_maps=True)[1][left], right).all())]
    assert swaps  # the swap is offered (and _sound checked the outputs under every seed)


class HeadsOnTokens(nn.Module):
    """Two look-alike heads reading different tokens: by a constant slice, or by rows an index
    computed from the input picked (an expert's tokens). Swapping the heads is no symmetry."""

    def __init__(self, by_index: bool):
        super().__init__()
        self.by_index = by_index
        self.inp, self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.by_index:
            rows = (x[0, :, 0] > 0).nonzero().squeeze(1)
            return self.a(h[:, rows]).sum(1) + self.b(h).sum(1)
        return self.a(h[:, 0]) + self.b(h[:, 1])


@pytest.mark.parametrize("by_index", [False, True])
def test_heads_reading_different_positions_are_not_swapped(by_index):
    torch.manual_seed(0)
    x = _x(1, 5, 4)
    x[0, :2, 0] = torch.tensor([1.0, -1.0])  # the index picks some rows, not all
    g, moved = _sound(HeadsOnTokens(by_index), x)
    # a constant slice keeps the shared layer's units free; rows picked by a data-dependent index
    # pin what they were picked from (the check cannot tell how the index used its inputs)
    assert bool(moved.any()) != by_index


class ExpertLoop(nn.Module):
    """Top-1 routing written as a Python loop over the experts that got tokens (eager trace)."""

    def __init__(self, experts: int = 3):
        super().__init__()
        self.router = nn.Linear(4, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4)) for _ in range(experts))

    def forward(self, x):
        choice = self.router(x).argmax(-1).reshape(-1)
        flat, out = x.reshape(-1, 4), torch.zeros_like(x.reshape(-1, 4))
        for e in choice.unique():
            rows = (choice == e).nonzero().squeeze(1)
            out.index_add_(0, rows, self.experts[int(e)](flat[rows]))
        return out.reshape(x.shape)


def test_an_expert_loop_is_sound_on_fresh_inputs():
    """Experts reached by the example move nowhere else; where one went unread every neuron
    is pinned (another input may reach it); either way every symmetry holds on new inputs."""
    from foreign.harness import fresh_inputs

    torch.manual_seed(0)
    for tokens, all_read in ((64, True), (1, False)):
        model = perturb(ExpertLoop())
        x = _x(1, tokens, 4)
        g = converters.from_torch(model, x)
        pinned_all = bool((g.node_index >= 0).all())
        assert pinned_all != all_read
        for seed in range(3):
            moved = rebuilt(model, symmetry.random_symmetry(g, seed=seed))
            for fresh in [(x,)] + [fresh_inputs((x,), i) for i in range(3)]:
                with torch.no_grad():
                    torch.testing.assert_close(moved(*fresh), model(*fresh), rtol=1e-10, atol=1e-10)


class CopyIntoSlices(nn.Module):
    """Keys built by copying two projections into slices of an empty tensor (DeepSeek's MLA)."""

    def __init__(self):
        super().__init__()
        self.q, self.k1, self.k2 = nn.Linear(4, 6), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        k = x.new_empty(*x.shape[:-1], 6)
        k[..., :4].copy_(self.k1(x))
        k[..., 4:].copy_(self.k2(x))
        return torch.softmax(self.q(x) @ k.transpose(-1, -2), -1) @ x


def test_in_place_writes_through_views_reach_their_base():
    g, moved = _sound(CopyIntoSlices(), _x(1, 5, 4))
    assert bool(moved.any())


def _sound_on_fresh(model: nn.Module, x, seeds: int = 6) -> tuple[object, torch.Tensor]:
    """``_sound``, and every symmetry also checked on 3 fresh inputs; returns the graph and
    which hidden neurons moved."""
    from foreign.harness import fresh_inputs

    model = perturb(model)
    x = x if isinstance(x, tuple) else (x,)
    g = converters.from_torch(model, x)
    moved = torch.zeros(g.num_nodes, dtype=torch.bool)
    for seed in range(seeds):
        g2, pi, _ = symmetry.random_symmetry(g, seed=seed, return_maps=True)
        other = rebuilt(model, g2)
        for inputs in [x] + [fresh_inputs(x, i) for i in range(3)]:
            with torch.no_grad():
                torch.testing.assert_close(other(*inputs), model(*inputs), rtol=1e-10, atol=1e-10)
        moved |= pi != torch.arange(g.num_nodes)
    return g, moved & (g.node_type == int(NodeType.HIDDEN))


class ScaledTwin(nn.Module):
    """``a(s * h) + b(h)``: a graph that takes ``s * h`` for ``h`` lets ``a`` and ``b`` swap (the
    outputs changed by 0.23). The scale is a Python number or a constant tensor of one number."""

    def __init__(self, tensor: bool):
        super().__init__()
        self.l0, self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)
        self.tensor = tensor

    def forward(self, x):
        h = torch.relu(self.l0(x))
        s = torch.tensor(2.0, dtype=x.dtype) if self.tensor else 2.0
        return self.a(h * s) + self.b(h)


@pytest.mark.parametrize("tensor", [False, True])
def test_a_number_times_neurons_is_not_the_neurons(tensor):
    _, moved = _sound_on_fresh(ScaledTwin(tensor), _x(5, 3))
    assert bool(moved.any())  # units inside each layer still move


class StandardisedConvs(nn.Module):
    """Two parallel convolutions of one shape on one input, summed: one weight-standardised
    (BiT, timm's StdConv: ``batch_norm`` of the weight's rows), one plain; then a linear layer
    whose weight is ``2 * w``, beside one reading its weight as it is. Swapping a layer that
    computes its weight with one that does not is no symmetry."""

    def __init__(self, running: bool = False):
        super().__init__()
        self.ws, self.plain = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.l2, self.l1 = nn.Linear(4, 5), nn.Linear(4, 5)
        self.out = nn.Linear(5, 2)
        self.running = running
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)

    def forward(self, x):
        w = self.ws.weight
        if self.running:  # per-row constants that differ: a function nobody proved row-wise
            w = F.batch_norm(w.reshape(1, 4, -1), self.mean, self.var, training=False, eps=1e-5).reshape_as(w)
        else:
            w = F.batch_norm(w.reshape(1, 4, -1), None, None, training=True, momentum=0.0, eps=1e-5).reshape_as(w)
        h = torch.relu(F.conv2d(x, w, self.ws.bias, padding=1) + self.plain(x)).mean((2, 3))
        return self.out(torch.relu(F.linear(h, self.l2.weight * 2.0, self.l2.bias) + self.l1(h)))


def test_weights_computed_from_parameters_move_with_their_rows():
    g, moved = _sound_on_fresh(StandardisedConvs(), _x(2, 3, 6, 6), seeds=8)
    assert not g.param_index.pins
    assert bool(moved.any())


def test_a_weight_computed_by_an_unproven_function_pins_its_layer():
    g, _ = _sound_on_fresh(StandardisedConvs(running=True), _x(2, 3, 6, 6), seeds=8)
    assert any("not proven row-wise" in p for p in g.param_index.pins)


class AlibiAttention(nn.Module):
    """Bloom's scores: ``alibi.baddbmm(q, k^T, beta=1, alpha=1/sqrt(d))`` with ALiBi built from the
    input (a per-head slope times each key's position, counted along a mask): the heads differ by
    their slope, so swapping them is no symmetry; channels inside a head still are."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.register_buffer("slopes", torch.tensor([0.5, 0.25]))

    def forward(self, x, mask):
        b, t, _ = x.shape
        mask = mask.to(x.dtype)  # an input: ALiBi is no constant
        alibi = (self.slopes.view(1, 2, 1).to(x.dtype) * (mask.cumsum(-1) - 1).view(b, 1, t)).reshape(b * 2, 1, t)

        def heads(h):
            return h.view(b, t, 2, 4).transpose(1, 2).reshape(b * 2, t, 4)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = alibi.baddbmm(q, k.transpose(1, 2), beta=1.0, alpha=0.5).softmax(-1)
        return self.o((scores @ v).view(b, 2, t, 4).transpose(1, 2).reshape(b, t, 8))


def test_alibi_scores_keep_each_head_and_move_its_channels():
    g, moved = _sound_on_fresh(AlibiAttention(), (_x(1, 5, 6), torch.ones(1, 5, dtype=torch.bool)), seeds=8)
    assert not g.param_index.pins
    assert bool(moved.any())


class BlockGates(nn.Module):
    """RecurrentGemma's RG-LRU gates: ``baddbmm(b[:, None, :], x_blocks, W)`` with a 3-D weight,
    one dense layer per block of channels."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(3, 6), nn.Linear(6, 2)
        self.w = nn.Parameter(torch.randn(2, 3, 3))
        self.b = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        h = self.inp(x)
        n, t, _ = h.shape
        blocks = h.reshape(n * t, 2, 3).permute(1, 0, 2)
        gate = torch.sigmoid(torch.baddbmm(self.b[:, None, :], blocks, self.w).transpose(0, 1).reshape(n, t, 6))
        return self.out(h * gate)


def test_block_diagonal_gates_move_with_their_blocks():
    g, moved = _sound_on_fresh(BlockGates(), _x(2, 4, 3), seeds=8)
    assert bool(moved.any())


class DynamicConv(nn.Module):
    """ConvBERT's span-based dynamic convolution: ``unfold`` (``aten.im2col``) gives each channel
    at every window offset, weighted by per-token kernel taps from a linear layer. Swapping two
    taps with their rows of the kernel layer is no symmetry: each tap weights its own offset."""

    def __init__(self):
        super().__init__()
        self.v, self.k, self.o = nn.Linear(4, 6), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        b, t, _ = x.shape
        taps = self.k(x).softmax(-1).reshape(b, t, 3, 1)
        u = F.unfold(self.v(x).transpose(1, 2).unsqueeze(-1), kernel_size=[3, 1], padding=[1, 0])
        u = u.transpose(1, 2).reshape(b, t, 6, 3)
        return self.o(torch.matmul(u, taps).squeeze(-1))


def test_unfolded_windows_keep_their_offsets():
    g, moved = _sound_on_fresh(DynamicConv(), _x(2, 5, 4), seeds=8)
    assert not g.param_index.pins
    assert bool(moved.any())


class LinearAttentionEinsum(nn.Module):
    """Performer-style linear attention, ``einsum("bnd,bne,bme->bmd", q, k, v)`` with positive
    feature maps: folded into ``(q^T k)`` and its product with ``v``. Query and key channels meet
    pairwise (``CONTRACT_PAIR``), so they move only together; value channels move alone."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.inp, self.o = (nn.Linear(4, 4) for _ in range(5))

    def forward(self, x):
        h = self.inp(x)
        q, k = F.elu(self.q(h)) + 1, F.elu(self.k(h)) + 1
        return self.o(torch.einsum("bnd,bne,bme->bmd", q, k, self.v(h)))


def test_three_operand_einsum_is_folded_not_pinned():
    g, moved = _sound_on_fresh(LinearAttentionEinsum(), _x(1, 5, 4), seeds=8)
    assert g.param_index.pins == ()
    assert bool(moved.any())


class GatedBiasAttention(nn.Module):
    """WavLM's attention: ``F.multi_head_attention_forward`` with separate projection weights and
    their biases concatenated (a bias that is no single parameter), and a relative-position bias
    gated per head and query by the hidden states, passed as the attention mask (a ``baddbmm``
    with neurons)."""

    def __init__(self):
        super().__init__()
        self.inp, self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(5))
        self.gate = nn.Linear(2, 1)
        self.rel = nn.Parameter(torch.randn(2, 5, 5))

    def forward(self, x):
        h = self.inp(x)  # (tokens, batch, 4)
        t, b, _ = h.shape
        g = torch.sigmoid(self.gate(h.view(t, b, 2, 2))).permute(1, 2, 0, 3)  # (b, heads, t, 1)
        bias = (g * self.rel.unsqueeze(0)).reshape(b * 2, t, t)
        out, _ = F.multi_head_attention_forward(
            h, h, h, 4, 2, torch.empty([0]), torch.cat((self.q.bias, self.k.bias, self.v.bias)), None, None,
            False, 0.0, self.o.weight, self.o.bias, False, None, need_weights=True, attn_mask=bias,
            use_separate_proj_weight=True, q_proj_weight=self.q.weight, k_proj_weight=self.k.weight,
            v_proj_weight=self.v.weight)
        return out


def test_gated_position_bias_and_concatenated_biases():
    g, moved = _sound_on_fresh(GatedBiasAttention(), _x(5, 1, 4), seeds=8)
    assert bool(moved.any())


class RowsOfTwoLayers(nn.Module):
    """``index_add`` of rows from two layers (JetMoE's mixture of attention heads gives each
    expert's rows in turn): the first two tokens through ``a``, the rest through ``b``, added back
    in another order. ``a`` and ``b`` read different tokens, so they are not interchangeable."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        rows = torch.cat([self.a(x[:2]), torch.relu(self.b(x[2:]))])
        order = torch.tensor([4, 0, 3, 1, 2])
        return self.o(torch.zeros(5, 4, dtype=x.dtype).index_add(0, order, rows))


def test_index_add_of_rows_of_different_layers():
    g, moved = _sound_on_fresh(RowsOfTwoLayers(), _x(5, 3), seeds=8)
    assert bool(moved.any())


class _FusedExperts(nn.Module):
    def __init__(self, e: int = 3, d: int = 4, i: int = 5):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.randn(e, d, i))
        self.act_fn = nn.SiLU()

    def forward(self, x, weights):
        gate, up = torch.einsum("ejd,nd->enj", self.gate_up_proj, x).chunk(2, dim=-1)
        y = torch.einsum("edi,eni->end", self.down_proj, self.act_fn(gate) * up)
        return (weights.t().unsqueeze(-1) * y).sum(0)


class MaskedRouting(nn.Module):
    """Fused experts whose routing weights do not say which router neuron chose which expert
    (PhiMoE's sparsemixer masks and renormalises its scores; here a hard top-1 one-hot): experts
    stay, the router is pinned, the units inside each expert move."""

    def __init__(self):
        super().__init__()
        self.inp, self.router, self.experts, self.o = nn.Linear(3, 4), nn.Linear(4, 3), _FusedExperts(), nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        p = self.router(h)
        w = torch.zeros_like(p).scatter(-1, p.argmax(-1, keepdim=True), 1.0)  # hard top-1: no neurons
        return self.o(self.experts(h, w))


def test_fused_experts_with_weights_that_lost_their_routes():
    g, moved = _sound_on_fresh(MaskedRouting(), _x(6, 3), seeds=8)
    assert any("routing weights without routes" in p for p in g.param_index.pins)
    assert bool(moved.any())
