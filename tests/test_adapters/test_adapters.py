"""PEFT adapters in and out: conservation, exact folder round trips, rank permutations and GL(r).

Adapters come from PEFT's own ``LoraConfig`` on tiny transformers bases (``cases.py``), float64,
every adapter tensor random. Outputs are compared through ``PeftModel.from_pretrained`` on a fresh
base, the way a user would load what ``to_peft`` wrote.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

import converters
from adapters import from_peft, lora_pairs, to_peft
from gmn import lora, symmetry
from gmn.summary import summary

from .cases import CASES, load, make, outputs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each case saved once: name -> (folder, base factory, inputs, the PeftModel, its adapter names)."""
    out = {}
    for i, name in enumerate(CASES):
        folder = tmp_path_factory.mktemp(name)
        factory, inputs, model = make(name, folder, seed=i)
        out[name] = (folder, factory, inputs, model, list(CASES[name][1]))
    return out


def _tensors(folder) -> dict[str, torch.Tensor]:
    found = {}
    for sub in sorted(p for p in [folder, *folder.iterdir()] if (p / "adapter_model.safetensors").is_file()):
        with safe_open(str(sub / "adapter_model.safetensors"), "pt") as fh:
            found.update({f"{sub.relative_to(folder)}/{k}".removeprefix("./").removeprefix("./"): fh.get_tensor(k)
                          for k in fh.keys()})
    return {k.removeprefix("./"): v for k, v in found.items()}


def _write_and_run(g, values, tmp_path, factory, inputs, adapters):
    out = tmp_path / "written"
    to_peft(g, values, out, overwrite=True)
    model = load(factory, out, adapters)
    return [outputs(model, inputs, a) for a in adapters]


def _reference(built_case):
    folder, factory, inputs, model, adapters = built_case
    return [outputs(model, inputs, a) for a in adapters]


@pytest.mark.parametrize("name", list(CASES))
def test_every_scalar_is_one_parameter_edge(built, name):
    folder, factory, *_ = built[name]
    tensors = _tensors(folder)
    for g in (from_peft(folder), from_peft(folder, base=factory())):
        assert int(g.num_param_edges) == sum(t.numel() for t in tensors.values())
        assert int(g.num_tied_edges) == 0
        assert {n for n, _, _ in g.param_index.params} == set(tensors)
        values = converters.parameter_values(g)
        for pname, shape, offset in g.param_index.params:
            t = tensors[pname]
            assert tuple(t.shape) == shape
            assert torch.equal(values[offset:offset + t.numel()], t.reshape(-1).to(values.dtype))
        kinds = converters.edge_kinds(g)
        assert int((kinds == 0).sum()) == int(g.num_param_edges)
        assert "parameter graph" in summary(g)


@pytest.mark.parametrize("name", list(CASES))
def test_folder_round_trip_is_bit_identical_and_loads(built, name, tmp_path):
    folder, factory, inputs, model, adapters = built[name]
    g = from_peft(folder, base=factory())
    path = tmp_path / "g.pt"
    converters.save_graph(g, path)
    g = converters.load_graph(path)  # what a saved graph writes back, too
    written = tmp_path / "written"
    to_peft(g, None, written)
    before, after = _tensors(folder), _tensors(written)
    assert set(before) == set(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    for sub in ["", *adapters[1:]]:
        assert (written / sub / "adapter_config.json").read_text() == (folder / sub / "adapter_config.json").read_text()
    reloaded = load(factory, written, adapters)
    for a, ref in zip(adapters, _reference(built[name])):
        assert torch.equal(outputs(reloaded, inputs, a), ref)


@pytest.mark.parametrize("name", list(CASES))
def test_rank_permutations_are_symmetries(built, name, tmp_path):
    folder, factory, inputs, _, adapters = built[name]
    g = from_peft(folder, base=factory())
    moved, pi, _ = symmetry.random_symmetry(g, seed=3, return_maps=True)
    rank_nodes = g.node_depth == 1
    assert bool((pi[rank_nodes] != torch.nonzero(rank_nodes).squeeze(1)).any()), "no rank node moved"
    assert bool((pi[~rank_nodes] == torch.nonzero(~rank_nodes).squeeze(1)).all()), "a base neuron moved"
    values = converters.parameter_values(moved)
    assert not torch.equal(values, converters.parameter_values(g))
    for got, ref in zip(_write_and_run(g, values, tmp_path, factory, inputs, adapters), _reference(built[name])):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def _random_gl(r: int, gen: torch.Generator, cond: float = 1e4) -> torch.Tensor:
    """An invertible r x r matrix of condition number ``cond`` (random orthogonal factors)."""
    q1, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    return q1 @ torch.diag(torch.logspace(0, -math.log10(cond), r, dtype=torch.float64)) @ q2


def gl_transform(g, seed: int, cond: float = 1e4) -> torch.Tensor:
    """Values of ``g`` with ``(B M^-1, M A)`` for a random ``M`` per module."""
    gen = torch.Generator().manual_seed(seed)
    values = converters.parameter_values(g).clone()
    index = g.param_index
    shapes = {n: s for n, s, _ in index.params}
    for a_name, b_name in lora_pairs(shapes):
        ea, eb = index.edge_ids(a_name), index.edge_ids(b_name)
        r = shapes[a_name][0]
        m = _random_gl(r, gen, cond)
        a = values[ea].reshape(r, -1)
        b = values[eb].reshape(shapes[b_name][0], r)
        values[ea] = (m @ a).reshape(-1)
        values[eb] = torch.linalg.solve(m.T, b.T).T.reshape(-1)  # b @ m^-1
    return values


@pytest.mark.parametrize("name", list(CASES))
def test_gl_r_keeps_outputs_and_the_canonical_form(built, name, tmp_path):
    folder, factory, inputs, _, adapters = built[name]
    g = from_peft(folder, base=factory())
    values = gl_transform(g, seed=5)
    assert not torch.allclose(values, converters.parameter_values(g))
    refs = _reference(built[name])
    for got, ref in zip(_write_and_run(g, values, tmp_path, factory, inputs, adapters), refs):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    canon = converters.parameter_values(lora.canonicalise(g))
    canon_moved = converters.parameter_values(lora.canonicalise(converters.with_values(g, values)))
    torch.testing.assert_close(canon_moved, canon, rtol=1e-8, atol=1e-9)
    for got, ref in zip(_write_and_run(g, canon, tmp_path, factory, inputs, adapters), refs):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_base_neurons_are_shared_where_the_base_shares_them(built):
    """q, k and v read one tensor; every o_proj writes the residual stream; without a base each
    module has its own neurons."""
    folder, factory, *_ = built["llama"]
    g = from_peft(folder, base=factory())

    def ends(key):
        ids = g.param_index.edge_ids(f"base_model.model.model.layers.{key}")
        return set(g.edge_index[0, ids].tolist()), set(g.edge_index[1, ids].tolist())

    q_in, _ = ends("0.self_attn.q_proj.lora_A.weight")
    k_in, _ = ends("0.self_attn.k_proj.lora_A.weight")
    q1_in, _ = ends("1.self_attn.q_proj.lora_A.weight")
    assert q_in == k_in and q_in.isdisjoint(q1_in)
    outs = []
    for layer in (0, 1):
        delta = ends(f"{layer}.self_attn.o_proj.lora_B.weight")[1]
        residual = g.edge_type == int(converters.EdgeType.RESIDUAL)
        residual &= torch.isin(g.edge_index[0], torch.tensor(sorted(delta)))
        outs.append(set(g.edge_index[1, residual].tolist()))
    assert outs[0] == outs[1] and len(outs[0]) == 32
    bare = from_peft(folder)
    assert bare.num_nodes > g.num_nodes


def test_meta_base_peft_model_and_folder_give_one_graph(built):
    folder, factory, _, model, _ = built["llama"]
    with torch.device("meta"):
        meta = CASES["llama"][0]()
    graphs = [from_peft(folder, base=factory()), from_peft(folder, base=meta), from_peft(model)]
    for g in graphs[1:]:
        for key in ("edge_index", "edge_type", "edge_pos", "node_type", "node_index", "node_depth"):
            assert torch.equal(g[key], graphs[0][key]), key
        assert torch.equal(g.edge_value, graphs[0].edge_value)


def test_scaling_is_recorded_on_the_residual_edges(built):
    folder, factory, *_ = built["llama"]
    g = from_peft(folder, base=factory())
    residual = g.edge_type == int(converters.EdgeType.RESIDUAL)
    found = set(g.edge_value[residual].tolist())
    config = json.loads((folder / "adapter_config.json").read_text())
    assert found == {8 / 4, 8 / 2, 3 / 4}, (found, config["alpha_pattern"])
    t5 = from_peft(built["t5"][0])
    assert set(t5.edge_value[t5.edge_type == int(converters.EdgeType.RESIDUAL)].tolist()) == {4 / math.sqrt(4)}


def test_example_inputs_find_shared_neurons_of_a_plain_module(built):
    """A CNN has no dummy inputs: with ``example_inputs`` the forward finds that ``fc`` reads the sum
    into which the embedding writes."""
    folder, factory, inputs, *_ = built["cnn"]
    g = from_peft(folder, base=factory(), example_inputs=inputs)
    assert g.param_index.pins == ()
    emb_delta = g.edge_index[1, g.param_index.edge_ids("base_model.model.emb.lora_embedding_B")].unique()
    residual = (g.edge_type == int(converters.EdgeType.RESIDUAL)) & torch.isin(g.edge_index[0], emb_delta)
    fc_in = g.edge_index[0, g.param_index.edge_ids("base_model.model.fc.lora_A.weight")].unique()
    assert torch.equal(g.edge_index[1, residual].unique(), fc_in)


class _Parallel(torch.nn.Module):
    """Two branches reading and writing the same neurons: ``x + a(x) + b(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)

    def forward(self, x):
        return x + self.a(x) + self.b(x)


def test_parallel_branches_never_trade_their_updates(tmp_path):
    """Same inputs, same outputs, same rank: only the scaling tells a's update from b's. The pinned
    delta nodes keep every symmetry inside one module (an exchange of the two changed the outputs)."""
    import copy

    import peft

    from .cases import perturb

    torch.manual_seed(0)
    base = _Parallel().double()
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["a", "b"],
                                                                     alpha_pattern={"b": 7})).double()
    perturb(model, 0)
    model.save_pretrained(tmp_path / "par")
    x = torch.randn(3, 6, dtype=torch.float64)
    g = from_peft(tmp_path / "par", base=base, example_inputs=(x,))
    assert g.param_index.pins == ()
    a_out = g.edge_index[1, g.edge_type == int(converters.EdgeType.RESIDUAL)].unique()
    assert a_out.numel() == 6  # both branches write the same six neurons
    ref = model(x)
    for seed in range(4):
        moved = symmetry.random_symmetry(g, seed=seed)
        out = tmp_path / f"moved{seed}"
        to_peft(g, converters.parameter_values(moved), out)
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
        torch.testing.assert_close(loaded(x), ref, rtol=1e-12, atol=1e-12)
