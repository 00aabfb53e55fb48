"""Random graph automorphisms are model symmetries, and the graphs are relabellings."""

import copy

import networkx as nx
import pytest
import torch
from models import ALL_CASES, build, output

import converters
from converters import NodeType
from gmn import symmetry, to_networkx


def _rebuilt(model, g):
    clone = copy.deepcopy(model)
    clone.load_state_dict(converters.to_state_dict(g))
    return clone.eval()


@pytest.fixture(scope="module", params=sorted(ALL_CASES))
def converted(request):
    model, x = build(request.param)
    return request.param, model, x, converters.from_torch(model, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_symmetry_preserves_function(converted, seed):
    name, model, x, g = converted
    g2 = symmetry.random_symmetry(g, seed=seed)
    with torch.no_grad():
        y, y2 = output(model(x)), output(_rebuilt(model, g2)(x))
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)
    moved = converters.parameter_values(g2) != converters.parameter_values(g)
    assert bool(moved.any()), f"{name}: the symmetry moved nothing"


def test_automorphism_fixes_inputs_outputs_and_maps_edges(converted):
    _, _, _, g = converted
    pi = symmetry.random_automorphism(g, torch.Generator().manual_seed(3))
    assert torch.equal(torch.sort(pi).values, torch.arange(g.num_nodes))
    fixed = torch.zeros(g.num_nodes, dtype=torch.bool)
    for t in (NodeType.INPUT, NodeType.OUTPUT, NodeType.TOKEN):
        fixed |= g.node_type == int(t)
    assert torch.equal(pi[fixed], torch.arange(g.num_nodes)[fixed])
    g2 = symmetry.random_symmetry(g, seed=3)
    # g2 is g relabelled by pi: every edge of g appears in g2 between the images of its ends
    src, dst = g.edge_index
    key = lambda s, d: ((s * g.num_nodes + d) * 64 + g.edge_type.long()) * 100_000 + g.edge_pos.long()  # noqa: E731
    mapped = dict(zip(key(pi[src], pi[dst]).tolist(), g.edge_value.tolist()))
    target = dict(zip(key(src, dst).tolist(), g2.edge_value.tolist()))
    if len(mapped) == g.edge_index.size(1):  # no parallel edges with equal labels
        assert mapped == target


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "flatten_cnn"])
def test_networkx_isomorphism(name):
    model, x = build(name)
    g = converters.from_torch(model, x)
    g2 = symmetry.random_symmetry(g, seed=5)

    def nodes_match(a, b):
        return (a["type"], a["depth"], a["index"], a["act"]) == (b["type"], b["depth"], b["index"], b["act"])

    def edges_match(a, b):
        def labels(d):
            return sorted((e["type"], e["pos"], round(e["value"], 6)) for e in d.values())
        return labels(a) == labels(b)

    a, b = to_networkx(g), to_networkx(g2)
    assert nx.is_isomorphic(a, b, node_match=nodes_match, edge_match=edges_match)
    # and the check can fail: a changed weight is no relabelling
    g3 = converters.with_values(g2, converters.parameter_values(g2) + (torch.arange(int(g.num_param_edges)) == 0))
    assert not nx.is_isomorphic(a, to_networkx(g3), node_match=nodes_match, edge_match=edges_match)


def test_relu_rescaling_preserves_function():
    model, x = build("flatten_cnn")
    g = converters.from_torch(model, x)
    assert int(symmetry.scalable_neurons(g).sum()) == 6 + 4  # fc1 neurons and bn->relu channels
    g2 = symmetry.random_symmetry(g, seed=0, scale=True)
    with torch.no_grad():
        torch.testing.assert_close(_rebuilt(model, g2)(x), model(x), rtol=1e-4, atol=1e-5)
    norms = lambda gg: converters.to_state_dict(gg)["fc1.weight"].norm(dim=1).sort().values  # noqa: E731
    assert not torch.allclose(norms(g), norms(g2))  # not a mere permutation


def test_no_rescaling_for_tanh():
    model, x = build("mlp_tanh")
    assert int(symmetry.scalable_neurons(converters.from_torch(model, x)).sum()) == 0


def test_batchnorm_statistics_follow_permutation():
    model, x = build("resnet18")
    g = converters.from_torch(model, x)
    g2 = symmetry.random_symmetry(g, seed=1)
    before, after = g.param_index.buffers, g2.param_index.buffers
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])
    assert torch.equal(before["stem.1.running_mean"].sort().values, after["stem.1.running_mean"].sort().values)


def _row_permutation(g, g2, name):
    """How the rows of a 2-D parameter moved (rows matched by their sorted values, since
    columns may be permuted too)."""
    a = converters.to_state_dict(g)[name].sort(dim=1).values
    b = converters.to_state_dict(g2)[name].sort(dim=1).values
    return [int((a - b[i]).abs().sum(1).argmin()) for i in range(a.shape[0])]


def test_heads_move_whole_and_rotary_dims_stay():
    model, x = build("llama")
    g = converters.from_torch(model, x)
    head_dim = 4
    seen_head_move = False
    for seed in range(6):
        g2 = symmetry.random_symmetry(g, seed=seed)
        rows = _row_permutation(g, g2, "model.layers.0.self_attn.q_proj.weight")
        for h in range(4):
            block = rows[h * head_dim : (h + 1) * head_dim]
            start = block[0]
            assert block == list(range(start, start + head_dim)), "rotary dims moved inside a head"
            seen_head_move |= start != h * head_dim
    assert seen_head_move


def test_experts_move_with_router_rows():
    model, x = build("moe")
    g = converters.from_torch(model, x)
    seen = False
    for seed in range(4):
        g2 = symmetry.random_symmetry(g, seed=seed)
        router = _row_permutation(g, g2, "blocks.0.mlp.router.weight")
        sd, sd2 = converters.to_state_dict(g), converters.to_state_dict(g2)
        for e, src in enumerate(router):
            a = sd[f"blocks.0.mlp.experts.{src}.2.bias"].sort().values
            b = sd2[f"blocks.0.mlp.experts.{e}.2.bias"].sort().values
            assert torch.equal(a, b) or torch.allclose(a, b)
        seen |= router != list(range(len(router)))
    assert seen


class _Scaled(torch.nn.Module):
    """``sin(30 fc1(x))`` read by fc2, beside variants that lose the flip: the pre-activation
    of two neurons also read elsewhere (those two stay), or shifted rather than scaled."""

    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.fc1, self.fc2 = torch.nn.Linear(3, 6), torch.nn.Linear(6, 2)

    def forward(self, x):
        h = self.fc1(x)
        if self.variant == "shifted":
            return self.fc2(torch.sin(h + 30.0))
        y = self.fc2(torch.sin(30.0 * h))
        return y + h[:, :2] if self.variant == "read_twice" else y


@pytest.mark.parametrize(("variant", "flippable"), [("scaled", 6), ("read_twice", 4), ("shifted", 0)])
def test_sign_flips_through_a_scaled_sine(variant, flippable):
    torch.manual_seed(0)
    model = _Scaled(variant).double()
    for p in model.parameters():  # every weight and bias away from 0 and 1
        p.data.uniform_(-1, 1)
    g = converters.from_torch(model, torch.rand(4, 3, dtype=torch.float64))
    assert int(symmetry.flippable_neurons(g).sum()) == flippable
    g2 = symmetry.random_symmetry(g, seed=1, sign=True)
    fresh = torch.rand(64, 3, dtype=torch.float64) * 4 - 2
    with torch.no_grad():
        torch.testing.assert_close(_rebuilt(model, g2)(fresh), model(fresh), rtol=1e-10, atol=1e-10)
    biases = [converters.to_state_dict(gg)["fc1.bias"].sort().values for gg in (g, g2)]
    assert (not torch.equal(*biases)) == (flippable > 0)  # a permutation keeps the multiset, a flip does not


def test_siren_layers_flip_on_fresh_inputs():
    model, x = build("siren")
    model = model.double()
    for p in model.parameters():
        p.data.uniform_(-1, 1)
    g = converters.from_torch(model, x.double())
    assert int(symmetry.flippable_neurons(g).sum()) == 16  # both hidden layers of 8
    fresh = torch.rand(256, 2, dtype=torch.float64) * 2 - 1
    for seed in range(3):
        g2 = symmetry.random_symmetry(g, seed=seed, sign=True)
        with torch.no_grad():
            torch.testing.assert_close(_rebuilt(model, g2)(fresh), model(fresh), rtol=1e-10, atol=1e-10)
