"""What the op rules put into the graph: edges, positions, buffers, errors."""

import pytest
import torch
import torch.nn.functional as F
from models import build
from torch import nn

import converters
from converters import Activation, ConversionError, EdgeType, NodeType


def _edges_of(g, name):
    ids = g.param_index.edge_ids(name)
    return g.edge_index[:, ids], g.edge_type[ids], g.edge_pos[ids]


def test_linear_edges_go_from_inputs_to_outputs():
    model = nn.Linear(3, 2)
    g = converters.from_torch(model, torch.randn(1, 3))
    (src, dst), etype, _ = _edges_of(g, "weight")
    assert bool((etype == EdgeType.LINEAR).all())
    w = model.weight.detach()
    for e in range(6):
        o, i = divmod(e, 3)
        assert int(g.node_type[src[e]]) == NodeType.INPUT and int(g.node_index[src[e]]) == i
        assert int(g.node_type[dst[e]]) == NodeType.OUTPUT and int(g.node_index[dst[e]]) == o
    assert torch.equal(g.edge_value[:6], w.reshape(-1))
    (bsrc, bdst), btype, _ = _edges_of(g, "bias")
    assert bool((btype == EdgeType.BIAS).all()) and int(g.node_type[bsrc[0]]) == NodeType.BIAS


def test_conv_groups_and_kernel_positions():
    model = nn.Conv2d(4, 6, 3, groups=2)
    g = converters.from_torch(model, torch.randn(1, 4, 5, 5))
    (src, dst), etype, pos = _edges_of(g, "weight")
    assert bool((etype == EdgeType.CONV).all())
    assert torch.equal(pos.reshape(6, 2, 9)[0, 0], torch.arange(9, dtype=torch.int32))
    in_index = g.node_index[src].reshape(6, 2, 9)[:, :, 0]
    out_index = g.node_index[dst].reshape(6, 2, 9)[:, 0, 0]
    # outputs 0-2 read inputs 0-1, outputs 3-5 read inputs 2-3
    assert in_index[:3].unique().tolist() == [0, 1] and in_index[3:].unique().tolist() == [2, 3]
    assert out_index.tolist() == list(range(6))


def test_depthwise_and_transposed_conv():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3, padding=1), nn.ConvTranspose2d(3, 2, 2, stride=2))
    g = converters.from_torch(model, torch.randn(1, 3, 4, 4))
    (src, dst), _, _ = _edges_of(g, "0.weight")
    assert torch.equal(g.node_index[src].reshape(3, 9)[:, 0], torch.arange(3, dtype=torch.int32))
    (src, dst), etype, pos = _edges_of(g, "1.weight")
    assert bool((etype == EdgeType.CONV_TRANSPOSE).all())
    assert g.node_index[dst].reshape(3, 2, 4)[0, :, 0].tolist() == [0, 1]


def test_flatten_into_linear_carries_spatial_positions():
    model, x = build("flatten_cnn")
    g = converters.from_torch(model, x)
    (src, dst), _, pos = _edges_of(g, "fc1.weight")
    # fc1 reads 4 channels x 9 positions: each channel node appears 9 times with positions 0..8
    row = src[:36]
    assert row.unique().numel() == 4
    assert torch.equal(pos[:36], torch.arange(9, dtype=torch.int32).repeat(4))
    # the channels are the batchnorm/relu neurons of the conv layer, not new inputs
    assert bool((g.node_act[row] == Activation.RELU).all())


def test_batchnorm_statistics_are_buffers_tied_to_channels():
    model, x = build("flatten_cnn")
    g = converters.from_torch(model, x)
    index = g.param_index
    assert "bn.running_mean" in index.buffers and "bn.num_batches_tracked" in index.buffers
    dim, nodes = index.buffer_nodes["bn.running_mean"]
    assert dim == 0 and nodes.numel() == 4
    (_, dst), _, _ = _edges_of(g, "bn.weight")
    assert torch.equal(nodes, dst)


def test_activations_recorded():
    model, x = build("conv_zoo")
    g = converters.from_torch(model, x)
    acts = set(torch.unique(g.node_act).tolist())
    for a in (Activation.LEAKY_RELU, Activation.TANH, Activation.SILU, Activation.ELU, Activation.GELU,
              Activation.HARDSWISH, Activation.SIGMOID):
        assert int(a) in acts, a.name


def test_residual_add_makes_sum_nodes():
    model, x = build("resnet18")
    g = converters.from_torch(model, x)
    sums = g.node_type == NodeType.SUM
    assert int(sums.sum()) == 2 * (4 + 8 + 16 + 32)  # one sum per channel per block
    res = g.edge_type == EdgeType.RESIDUAL
    assert int(res.sum()) == 2 * int(sums.sum())


def test_attention_q_k_v_distinguishable():
    model, x = build("vit_mha")
    g = converters.from_torch(model, x)
    counts = torch.bincount(g.edge_type.long(), minlength=len(EdgeType))
    heads = int((g.node_type == NodeType.ATTENTION).sum())
    assert heads == 2 * 2  # two heads in each of two blocks
    for t in (EdgeType.MATMUL_LEFT, EdgeType.MATMUL_RIGHT, EdgeType.CONTRACT_PAIR):
        assert int(counts[t]) > 0


def test_gpt2_tied_weights_counted_once():
    model, x = build("gpt2")
    g = converters.from_torch(model, x)
    assert "lm_head.weight" in g.param_index.aliases
    wte = model.transformer.wte.weight
    assert int(g.num_tied_edges) == wte.numel()
    assert int(g.num_param_edges) == sum(p.numel() for p in model.parameters())
    tied = g.edge_value[int(g.num_param_edges) : int(g.num_param_edges) + wte.numel()]
    assert torch.equal(tied, g.edge_value[g.tied_slot])


def test_class_token_and_positions_are_parameters_with_structure():
    model, x = build("vit")
    g = converters.from_torch(model, x)
    (_, _), etype, _ = _edges_of(g, "cls_token")
    assert bool((etype == EdgeType.CONSTANT).all())
    (_, dst), etype, pos = _edges_of(g, "pos_embed")
    assert bool((etype == EdgeType.SHIFT).all())
    assert pos.unique().numel() == model.pos_embed.shape[1]  # one position per token
    # class token merged with patches: one MERGE node per channel fed by concatenation edges
    # (the pooled class token, ``x[:, 0]``, is a selection: its MERGE edges carry SELECTION_POS on)
    from converters.rules.shape import SELECTION_POS

    concat = (g.edge_type == EdgeType.MERGE) & (g.edge_pos < SELECTION_POS)
    assert g.edge_index[1, concat].unique().numel() == 8
    assert bool((g.node_type[g.edge_index[1, concat]] == NodeType.MERGE).all())


def test_partially_used_parameter_keeps_every_slot():
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(10, 4))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + self.table[: x.shape[1]])

    model = Sliced()
    g = converters.from_torch(model, torch.randn(2, 3, 4))
    assert int(g.num_param_edges) == 40 + 10
    (_, _), etype, _ = _edges_of(g, "table")
    assert int((etype == EdgeType.UNUSED).sum()) == 28
    assert torch.equal(converters.to_state_dict(g)["table"], model.table)


def test_unknown_op_with_parameters_is_a_clear_error():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return x @ torch.cumsum(self.w, 0)

    with pytest.raises(ConversionError, match=r"aten\.cumsum.*register_op") as err:
        converters.from_torch(Cumulative(), torch.randn(2, 3))
    assert "'w'" in str(err.value)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # Python control flow on data: export cannot trace it
            h = torch.relu(h)
        return self.out(h)


def test_data_dependent_control_flow_falls_back_to_eager_tracing():
    model, x = DataDependent().eval(), torch.randn(2, 3)
    with pytest.raises(ConversionError, match="torch.export could not trace DataDependent"):
        converters.from_torch(model, x, tracer="export")
    g = converters.from_torch(model, x)  # auto: export fails, the recorded run works
    assert int(g.num_param_edges) == 3 * 3 + 3 + 3 * 2 + 2
    torch.testing.assert_close(converters.functional_call(g, None, x), model(x))


def test_model_that_cannot_run_is_a_clear_error():
    with pytest.raises(ConversionError, match="could not run Linear on the example inputs"):
        converters.from_torch(nn.Linear(3, 2), torch.randn(2, 4))


def test_nan_weights_convert_and_are_flagged():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[2].bias[0] = float("inf")
    g = converters.from_torch(model, torch.randn(2, 3))
    assert int(g.nonfinite) == 2
    sd = converters.to_state_dict(g)
    assert torch.isnan(sd["0.weight"][0, 0]) and torch.isinf(sd["2.bias"][0])
    from gmn import summary

    assert "NaN or infinite" in summary(g)


def test_mixtral_experts_tied_to_router():
    model, x = build("mixtral")
    g = converters.from_torch(model, x)
    (_, router_out), _, _ = _edges_of(g, "model.layers.0.mlp.gate.weight")
    experts = router_out.unique()
    assert experts.numel() == 4
    src, dst = g.edge_index
    # the logits are also returned, so their softmax is a new node per router neuron
    act = (g.edge_type == EdgeType.ACTIVATION) & torch.isin(src, experts)
    if bool(act.any()):
        experts = dst[act].unique()
        assert experts.numel() == 4
    # each router neuron weights exactly one expert's outputs (product edges)
    prod = (g.edge_type == EdgeType.PRODUCT) & torch.isin(src, experts)
    assert int(prod.sum()) == 4 * 16


def test_functional_relu_after_shared_preactivation_gets_new_nodes():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            h = self.fc(x)
            return F.relu(h) + h

    g = converters.from_torch(Both(), torch.randn(2, 3))
    assert int((g.node_type == NodeType.ACTIVATION).sum()) == 4


def test_cat_skips_legacy_empty_tensors():
    class EmptyCache(torch.nn.Module):  # as an empty key/value cache is concatenated in HF models
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.cat([x.new_empty(0), self.linear(x)], dim=1)

    model = EmptyCache()
    g = converters.from_torch(model, torch.randn(2, 3, 4))
    assert g.num_parameters == 20


def test_a_number_times_neurons_is_a_scaled_edge():
    class Ops(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            h = self.fc(x)
            return torch.cat([torch.sin(h * 30.0), torch.sin(h / 2.0), torch.sin(h + 30.0), torch.sin(30.0 - h)], -1)

    g = converters.from_torch(Ops(), torch.rand(2, 3) + 1)
    counts = torch.bincount(g.edge_type.long(), minlength=len(EdgeType))
    assert int(counts[EdgeType.SCALED]) == 8  # h * 30 and h / 2: 4 neurons each
    assert int(counts[EdgeType.ACTIVATION]) == 8  # h + 30 and 30 - h are no scalings
    scaled = g.edge_pos[g.edge_type == EdgeType.SCALED]
    assert scaled.unique().numel() == 2  # times 30 and over 2 stay apart
