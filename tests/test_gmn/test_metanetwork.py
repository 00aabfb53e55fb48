"""Metanetworks: invariance / equivariance under model symmetries, sensitivity, learning."""

import pytest
import torch
from models import build
from torch_geometric.data import Batch

import converters
from gmn import GraphMetanetwork, architectures, symmetry
from gmn.nn import scatter

CASES = ["mlp_tanh", "flatten_cnn", "resnet18", "vit", "moe", "gpt2"]


@pytest.fixture(scope="module")
def graphs():
    out = {}
    for name in CASES:
        model, x = build(name)
        g = converters.from_torch(model, x)
        out[name] = (g, *symmetry.random_symmetry(g, seed=1, return_maps=True))
    return out


def _net(kind, readout, seed=0):
    torch.manual_seed(seed)
    return GraphMetanetwork(hidden=16, layers=2, kind=kind, readout=readout).eval()


@pytest.mark.parametrize("kind", ["gmn", "pna", "scale_gmn"])
@pytest.mark.parametrize("name", CASES)
def test_permutation_invariance_and_equivariance(graphs, name, kind):
    g, g2, node_map, edge_map = graphs[name]
    with torch.no_grad():
        torch.testing.assert_close(_net(kind, "graph")(g2), _net(kind, "graph")(g), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_net(kind, "node")(g2)[node_map], _net(kind, "node")(g), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_net(kind, "edge")(g2), _net(kind, "edge")(g)[edge_map], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp_tanh", "flatten_cnn", "resnet18", "siren"])
def test_scale_gmn_is_invariant_to_rescaling_and_sign_flips(name):
    model, x = build(name)
    g = converters.from_torch(model, x)
    g2, node_map, edge_map = symmetry.random_symmetry(g, seed=2, scale=True, sign=True, return_maps=True)
    moved = converters.parameter_values(g2) != converters.parameter_values(g)[edge_map[: int(g.num_param_edges)]]
    assert bool(moved.any()), "the symmetry did not rescale or flip anything"
    with torch.no_grad():
        torch.testing.assert_close(_net("scale_gmn", "graph")(g2), _net("scale_gmn", "graph")(g),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_net("scale_gmn", "node")(g2)[node_map], _net("scale_gmn", "node")(g),
                                   rtol=1e-4, atol=1e-5)
        # edge outputs transform like the weights: scaled by the same factor
        p = int(g.num_param_edges)
        w1, w2 = g.edge_value[edge_map[:p]], g2.edge_value[:p]
        factor = torch.where(w1.abs() > 1e-6, w2 / w1, torch.ones(()))
        y1, y2 = _net("scale_gmn", "edge")(g)[edge_map[:p], 0], _net("scale_gmn", "edge")(g2)[:p, 0]
        keep = w1.abs() > 1e-3
        torch.testing.assert_close(y2[keep], (y1 * factor)[keep], rtol=1e-3, atol=1e-4)
        # the plain GMN is not invariant to these (so the test above means something)
        assert not torch.allclose(_net("gmn", "graph")(g2), _net("gmn", "graph")(g), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["gmn", "pna", "scale_gmn"])
def test_outputs_change_under_non_symmetric_edits(graphs, kind):
    g = graphs["flatten_cnn"][0]
    values = g.edge_value.clone()
    values[3] += 0.5  # one weight: no symmetry does this
    net = _net(kind, "graph")
    with torch.no_grad():
        assert not torch.allclose(net(g, values), net(g), rtol=1e-5, atol=1e-6)


def test_mixed_architecture_batch_matches_single_graphs(graphs):
    singles = [graphs[n][0] for n in ("mlp_tanh", "vit", "moe")]
    batch = Batch.from_data_list(singles)
    for kind in ("gmn", "pna", "scale_gmn"):
        net = _net(kind, "graph")
        with torch.no_grad():
            together = net(batch)
            apart = torch.cat([net(s) for s in singles])
        torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)
    edge = _net("gmn", "edge")
    with torch.no_grad():
        out = edge(batch)
    mask = converters.parameter_edge_mask(batch)
    assert int(mask.sum()) == converters.parameter_values(batch).numel()
    states = converters.to_state_dict(batch, out[mask, 0])
    assert [set(s) for s in states] == [set(converters.to_state_dict(s)) for s in singles]


def test_torch_scatter_and_fallback_agree(monkeypatch):
    torch_scatter = pytest.importorskip("torch_scatter")
    import gmn.nn.scatter as mod

    src, index = torch.randn(40, 4), torch.randint(0, 6, (40,))
    for reduce in ("sum", "mean", "max", "min"):
        with_ext = torch_scatter.scatter(src, index, dim=0, dim_size=7, reduce=reduce)
        monkeypatch.setattr(mod, "USE_TORCH_SCATTER", False)
        torch.testing.assert_close(mod.scatter(src, index, 7, reduce), with_ext)
        monkeypatch.setattr(mod, "USE_TORCH_SCATTER", True)


def test_scatter_fallback_matches_reference():
    torch.manual_seed(0)
    src, index = torch.randn(50, 3), torch.randint(0, 7, (50,))
    for reduce in ("sum", "mean", "max", "min"):
        got = scatter(src, index, 8, reduce)
        for i in range(8):
            rows = src[index == i]
            if rows.numel() == 0:
                assert bool((got[i] == 0).all())
                continue
            ref = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values,
                   "min": rows.min(0).values}[reduce]
            torch.testing.assert_close(got[i], ref)


def _random_mlp_graph(gen: torch.Generator):
    depth = int(torch.randint(1, 4, (1,), generator=gen))
    sizes = [4] + [int(torch.randint(3, 9, (1,), generator=gen)) for _ in range(depth)] + [2]
    model = architectures.MLP(tuple(sizes))
    with torch.no_grad():
        gain = float(torch.empty(1).uniform_(0.3, 2.0, generator=gen))
        for p in model.parameters():
            p.mul_(gain)
    g = converters.from_torch(model, torch.randn(1, 4))
    g.y = torch.log(sum(p.detach().norm() ** 2 for p in model.parameters())).view(1, 1)
    return g


@pytest.mark.parametrize("seed", [0, 1])
def test_learning_frobenius_norm_beats_mean_predictor(seed):
    torch.manual_seed(seed)  # the MLPs' own initialisation
    gen = torch.Generator().manual_seed(seed)
    train = [_random_mlp_graph(gen) for _ in range(48)]
    test = Batch.from_data_list([_random_mlp_graph(gen) for _ in range(16)])
    net = GraphMetanetwork(hidden=32, layers=2, kind="gmn")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randperm(len(train))[:16]
        batch = Batch.from_data_list([train[i] for i in idx])
        loss = torch.nn.functional.mse_loss(net(batch), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(net(test), test.y)
    baseline = ((test.y - torch.cat([g.y for g in train]).mean()) ** 2).mean()
    print(f"test mse {float(mse):.4f}, mean predictor {float(baseline):.4f}")
    assert float(mse) < 0.2 * float(baseline), (float(mse), float(baseline))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_results_on_cuda(graphs):
    g = graphs["resnet18"][0]
    for kind in ("gmn", "pna", "scale_gmn"):
        net = _net(kind, "graph")
        with torch.no_grad():
            cpu = net(g)
            gpu = net.cuda()(g.clone().to("cuda"))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("pool", ["mean+attn", "tensor", "mean+max+attn+tensor", "norm", "mean+output", "film"])
def test_readout_pools_are_invariant_and_batch_alike(graphs, pool):
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=2, pool="mean+attn" if pool in ("norm", "film") else pool,
                           readout_norm=pool == "norm", film=pool == "film")
    if pool == "norm":  # batch statistics to evaluate with
        net(Batch.from_data_list([graphs[n][0] for n in ("mlp_tanh", "resnet18", "moe")]))
    net.eval()
    singles = [graphs[n][0] for n in ("mlp_tanh", "resnet18", "moe")]
    with torch.no_grad():
        for name in ("mlp_tanh", "resnet18", "moe", "gpt2"):
            g, g2 = graphs[name][:2]
            torch.testing.assert_close(net(g2), net(g), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(Batch.from_data_list(singles)), torch.cat([net(s) for s in singles]),
                                   rtol=1e-4, atol=1e-5)


def test_tensor_segments_follow_the_parameters(graphs):
    from gmn.nn.tensor_pool import tensor_segments

    singles = [graphs[n][0] for n in ("mlp_tanh", "vit")]
    seg, owner = tensor_segments(Batch.from_data_list(singles))
    first = singles[0].param_index.params
    assert owner.tolist() == [0] * (len(first) + 1) + [1] * (len(singles[1].param_index.params) + 1)
    for i, (name, _, _) in enumerate(first):  # a tensor's edges are its own segment
        assert set(seg[singles[0].param_index.edge_ids(name)].tolist()) == {i}


def _siren_graph():
    from gmn.zoo.inr import Siren

    torch.manual_seed(0)
    return converters.from_torch(Siren(hidden=8), torch.zeros(4, 2))


@pytest.mark.parametrize("layers", [4, 5])
def test_a_sirens_output_neuron_hears_the_first_layer_after_five_hops(layers):
    """sin(w0 x) puts a node between every hidden layer and its sine, so a SIREN with two
    hidden layers is 5 hops from its inputs to its output: a 4-layer GMN's output neuron
    never sees a first-layer weight. At init the output's
    gradient is ~1e-7 after 5 hops (each hop shrinks a neighbour's change 10-100 fold), so
    the dependence is read from autograd, not from a difference of outputs."""
    g = _siren_graph()
    values = g.edge_value.clone().requires_grad_()
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=layers, readout="node").eval()
    out = int((g.node_type == int(converters.NodeType.OUTPUT)).nonzero())
    (grad,) = torch.autograd.grad(net(g, values)[out].sum(), values)
    first = grad[g.param_index.edge_ids("0.weight")]
    assert bool((first != 0).any()) == (layers >= 5), first.abs().max()
    assert bool((grad[g.param_index.edge_ids("4.weight")] != 0).all())  # the last layer: one hop



def test_a_metanetwork_saved_before_a_vocabulary_grew_still_loads():
    net = _net("gmn", "graph")
    state = net.state_dict()
    key = next(k for k in state if k.endswith("type_embed.weight") and "edge" in k)
    old = {k: (v[:-1] if k == key else v) for k, v in state.items()}  # saved without the newest edge type
    fresh = _net("gmn", "graph", seed=1)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.state_dict()[key][:-1], state[key][:-1])
    assert not torch.equal(fresh.state_dict()[key][-1], state[key][-1])  # the new row keeps its own value
