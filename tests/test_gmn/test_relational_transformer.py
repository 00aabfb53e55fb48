"""NG-T (the relational transformer over graph edges): symmetry, sensitivity, learning."""

import pytest
import torch
from models import build
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

import converters
from gmn import GraphMetanetwork, symmetry
from gmn.data import ZooDataset
from gmn.nn import RelationalTransformerConv


def _net(readout: str, seed: int = 0) -> GraphMetanetwork:
    """An ``ng_t`` metanetwork in float64 with every weight, gain and bias drawn at random
    (LayerNorm's ones and zeros would hide a gain or bias applied to the wrong row)."""
    torch.manual_seed(seed)
    net = GraphMetanetwork(hidden=16, layers=2, kind="ng_t", readout=readout).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


@pytest.fixture(scope="module")
def moved():
    """Graphs, their images under a random symmetry (with the maps), and fresh edge values
    for both: random values on every edge of the original, moved by the symmetry's edge map."""
    out = {}
    for name in ("mlp_tanh", "flatten_cnn", "resnet18", "moe"):
        model, x = build(name)
        g = converters.from_torch(model, x)
        g2, node_map, edge_map = symmetry.random_symmetry(g, seed=3, return_maps=True)
        values = torch.randn(g.num_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        out[name] = (g, g2, node_map, edge_map, values, values[edge_map])
    return out


@pytest.mark.parametrize("name", ["mlp_tanh", "flatten_cnn", "resnet18", "moe"])
def test_graph_readout_invariant_and_edge_readout_equivariant(moved, name):
    g, g2, node_map, edge_map, values, values2 = moved[name]
    assert not torch.equal(edge_map, torch.arange(edge_map.numel())), "the symmetry moved nothing"
    with torch.no_grad():
        torch.testing.assert_close(_net("graph")(g2, values2), _net("graph")(g, values), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(_net("edge")(g2, values2), _net("edge")(g, values)[edge_map],
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(_net("node")(g2, values2)[node_map], _net("node")(g, values),
                                   rtol=1e-10, atol=1e-10)


def test_outputs_follow_the_values_and_the_direction(moved):
    g, _, _, _, values, _ = moved["flatten_cnn"]
    net = _net("graph")
    with torch.no_grad():
        base = net(g, values)
        edited = values.clone()
        edited[5] += 0.5  # one weight: no symmetry does this
        assert not torch.allclose(net(g, edited), base, rtol=1e-8, atol=1e-8)
        # reversing every edge is no symmetry of the model: the two directions are told apart
        flipped = g.clone()
        flipped.edge_index = g.edge_index.flip(0)
        assert not torch.allclose(net(flipped, values), base, rtol=1e-8, atol=1e-8)


def test_attention_matches_the_formula_node_by_node():
    """Each node's output is W_O of a per-head softmax over every message it receives, along
    and against its edges, computed here by a loop over nodes (a node without edges: b_O)."""
    torch.manual_seed(0)
    conv = RelationalTransformerConv(8, heads=2).double()
    h, e = torch.randn(6, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    edge_index = torch.tensor([[0, 0, 1, 2, 3, 1, 2], [1, 2, 2, 3, 1, 3, 2]])  # a self-loop at 2; node 5 alone
    with torch.no_grad():
        got = conv.attend(h, e, edge_index)
        q_n, k_n, v_n = conv.node_qkv(h).chunk(3, -1)
        for r in range(6):
            scores, values = [], []
            for i, (u, v) in enumerate(edge_index.t().tolist()):
                for direction, (recv, send) in enumerate(((v, u), (u, v))):
                    if recv != r:
                        continue
                    qe, ke, me, ve = conv.edge_qkv[direction](e[i]).chunk(4)
                    q, k = (q_n[recv] + qe).view(2, 4), (k_n[send] + ke).view(2, 4)
                    scores.append((q * k).sum(-1) / 2.0)
                    values.append((v_n[send] * me + ve).view(2, 4))
            if not scores:
                torch.testing.assert_close(got[r], conv.attn_out.bias)
                continue
            weight = torch.softmax(torch.stack(scores), dim=0)  # messages x heads
            out = (weight.unsqueeze(-1) * torch.stack(values)).sum(0).flatten()
            torch.testing.assert_close(got[r], conv.attn_out(out))


def test_learning_reduces_loss_on_a_tiny_zoo(tiny_zoo):
    data = ZooDataset(tiny_zoo, ("test_acc",), progress=False)
    data = data.index_select(torch.arange(12))  # half the zoo: seconds on a loaded CPU
    y = torch.cat([g.y for g in data])
    mean, std = y.mean(0), y.std(0).clamp(min=1e-6)
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=2, kind="ng_t")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batches = list(DataLoader(data, batch_size=12))
    assert len(batches) == 1

    def loss() -> torch.Tensor:
        batch = batches[0]
        return torch.nn.functional.mse_loss(net(batch), (batch.y - mean) / std)

    with torch.no_grad():
        before = float(loss())
    for _ in range(20):
        opt.zero_grad()
        step = loss()
        step.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    print(f"training loss {before:.3f} -> {after:.3f}")
    assert after < 0.3 * before, (before, after)


def test_mixed_architecture_batch_matches_single_graphs(moved):
    singles = [moved[n][0] for n in ("mlp_tanh", "resnet18", "moe")]
    net = GraphMetanetwork(hidden=16, layers=2, kind="ng_t").eval()
    with torch.no_grad():
        torch.testing.assert_close(net(Batch.from_data_list(singles)), torch.cat([net(s) for s in singles]),
                                   rtol=1e-4, atol=1e-5)
