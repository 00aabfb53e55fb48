"""Architectures nobody in this project wrote: every one converts with conservation and an
exact round trip, runs through ``functional_call``, and every random symmetry the graph
offers leaves its float64 outputs unchanged, while hidden neurons do move (the symmetries
are offered, not all pinned away). Every parameter and buffer is perturbed first."""

from __future__ import annotations

import os

import pytest
import torch
from catalogue import HF, PEFT, build_hf, build_peft
from classic import CLASSIC, REFUSED
from harness import flat_output, fresh_inputs, perturb, rebuilt, rel_err, run, unique_numel

import converters
from converters import NodeType
from gmn import symmetry

#: models that compute parts of their forward in float32 whatever their dtype (attention or
#: routers upcast "for stability"): a permutation reorders float32 sums, so 1e-6, not 1e-9
FLOAT32_INSIDE = {"gpt_neo", "gptj", "codegen", "switch", "switch_experts4", "switch_dropping", "mamba2"}
#: weight matching ends in another local optimum than the inverse symmetry (measured; see the note)
ALIGNMENT_LOCAL_OPTIMA = {"squeeze_excite"}
#: transformers configs this version cannot build or export offline (reason in the note)
SKIP = {
    "xglm": "its config cannot build a float64 model (positional table overflow)",
    "funnel": "FunnelModel fails on its own default inputs",
    "cvt": "CvtConfig needs per-stage lists this catalogue does not give",
    "efficientnet": "EfficientNetConfig's tiny widths do not match its BatchNorm sizes",
}
#: fused experts (batched_mm) run only in float32: checked there, at float32's tolerance
FLOAT32_ONLY = {"mixtral", "qwen2_moe", "qwen3_moe", "qwen3_moe_top1", "olmoe", "deepseek_v3", "deepseek_v3_grouped",
                "phimoe", "gpt_oss"}


#: routing variants whose eager traces are slow (about 90 s each on 2 cores): GMN_EXTENDED=1 runs them
EXTENDED_ONLY = {"switch_experts4", "switch_dropping"}


def _build(name):
    if name in EXTENDED_ONLY and os.environ.get("GMN_EXTENDED") != "1":
        pytest.skip("slow routing variant: GMN_EXTENDED=1")
    if name in CLASSIC:
        factory, x = CLASSIC[name]
        torch.manual_seed(0)
        return perturb(factory()), x
    if name in SKIP:
        pytest.skip(SKIP[name])
    pytest.importorskip("transformers")
    if name in PEFT:
        pytest.importorskip("peft")
        model, x = build_peft(name)
    else:
        model, x = build_hf(name)
    return perturb(model, dtype=torch.float32 if name in FLOAT32_ONLY else torch.float64), x


@pytest.fixture(scope="module", params=sorted(HF) + sorted(PEFT) + sorted(CLASSIC))
def converted(request):
    model, x = _build(request.param)
    try:
        g = converters.from_torch(model, x)
    except converters.ConversionError as err:
        pytest.xfail(f"refused with a clear error: {err}")
    return request.param, model, x, g


def test_conserves_and_round_trips(converted):
    name, model, x, g = converted
    assert int(g.num_param_edges) == unique_numel(model)
    state = converters.to_state_dict(g)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        y = flat_output(converters.functional_call(g, converters.parameter_values(g), *x))
    assert rel_err(y, run(model, x)) < (1e-6 if name in FLOAT32_ONLY else 1e-12)


def test_symmetries_are_sound_and_offered(converted):
    name, model, x, g = converted
    y = run(model, x)
    tol = 1e-5 if name in FLOAT32_ONLY else 1e-6 if name in FLOAT32_INSIDE else 1e-9
    hidden = g.node_type == int(NodeType.HIDDEN)
    moved = torch.zeros_like(hidden)
    for seed in range(3):
        g2, pi, _ = symmetry.random_symmetry(g, seed=seed, return_maps=True)
        assert rel_err(run(rebuilt(model, g2), x), y) < tol, f"{name}: seed {seed} changed the outputs"
        moved |= pi != torch.arange(g.num_nodes)
    assert bool((moved & hidden).any()), f"{name}: no hidden neuron ever moved"


def test_symmetries_hold_on_fresh_inputs(converted):
    """A symmetry is one for every input, not only the traced one (the eager tracer follows the
    example's control flow; a data-dependent index or routing must not be taken as fixed): one
    random symmetry, checked on 3 fresh inputs besides the traced one."""
    name, model, x, g = converted
    tol = 1e-5 if name in FLOAT32_ONLY else 1e-6 if name in FLOAT32_INSIDE else 1e-9
    inputs = [fresh_inputs(x, seed) for seed in range(3)]
    # the model's outputs first: a run refreshes the weights the deprecated weight_norm hook computes
    # (left needing grad by the trace, they cannot be deep-copied)
    expected = [run(model, i) for i in inputs]
    moved = rebuilt(model, symmetry.random_symmetry(g, seed=7))
    for seed in range(3):
        assert rel_err(run(moved, inputs[seed]), expected[seed]) < tol, f"{name}: fresh input {seed} changed"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_layers_are_refused_clearly(name):
    factory, x = REFUSED[name]
    with pytest.raises(converters.ConversionError, match="register one with"):
        converters.from_torch(perturb(factory()), x)


def _gate_rows(t: torch.Tensor, gates: int) -> torch.Tensor:
    """A recurrent weight's rows grouped by hidden unit: (units, gates * columns)."""
    return t.reshape(gates, t.shape[0] // gates, -1).transpose(0, 1).reshape(t.shape[0] // gates, -1)


@pytest.mark.parametrize("name, prefix, gates", [("lstm", "rnn", 4), ("gru_bidirectional", "rnn", 3),
                                                 ("rnn_relu_no_bias", "rnn", 1)])
def test_recurrent_hidden_units_move(name, prefix, gates):
    """Hidden units are permuted across all gates and the recurrence at once: each unit's rows
    of every gate of ``weight_hh_l0`` land, together, on another unit's, and ``weight_hh``'s
    columns follow the same permutation."""
    model, x = _build(name)
    g = converters.from_torch(model, x)
    w = model.state_dict()[f"{prefix}.weight_hh_l0"]
    for seed in range(6):
        moved = converters.to_state_dict(symmetry.random_symmetry(g, seed=seed))[f"{prefix}.weight_hh_l0"]
        before = _gate_rows(w, gates)
        after = _gate_rows(moved, gates)
        # unit j's rows, up to the column permutation: compare sorted values
        match = (after.sort(1).values.unsqueeze(1) == before.sort(1).values.unsqueeze(0)).all(-1).float()
        perm = match.argmax(1)
        assert bool(match.any(1).all()), "a unit's gate rows were split up"
        if not torch.equal(perm, torch.arange(perm.numel())):
            # the columns (the previous state) move with the same permutation as the rows
            assert torch.equal(moved, w.reshape(gates, -1, w.shape[1])[:, perm][:, :, perm].reshape(w.shape))
            return
    pytest.fail(f"{name}: no hidden unit moved in 6 random symmetries")


def _units_moved(before: torch.Tensor, after: torch.Tensor, dim: int, size: int) -> bool:
    """Whether some unit (``size`` slices along ``dim``: a head's rows, an expert) of ``after``
    holds exactly the values of another unit of ``before``; the values are sorted, so
    permutations inside units and of the other axes do not matter."""
    def units(t):
        t = t.movedim(dim, 0)
        return t.reshape(t.shape[0] // size, -1).sort(dim=1).values
    a, b = units(before), units(after)
    return any(torch.equal(b[i], a[j]) for i in range(a.shape[0]) for j in range(a.shape[0]) if i != j)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "olmoe"])
def test_experts_move_with_their_router_rows(name):
    """An expert permutation is offered: expert slices and router rows move together."""
    model, x = _build(name)
    g = converters.from_torch(model, x)
    sd = model.state_dict()
    experts = next(k for k in sd if k.endswith("experts.gate_up_proj"))
    layer = experts.split("experts.")[0]
    router = next(k for k in sd if k.startswith(layer) and k.endswith("gate.weight") and sd[k].dim() == 2)
    for seed in range(6):
        moved = converters.to_state_dict(symmetry.random_symmetry(g, seed=seed))
        if _units_moved(sd[experts], moved[experts], 0, 1):
            assert _units_moved(sd[router], moved[router], 0, 1), "experts moved without their router rows"
            return
    pytest.fail(f"{name}: no expert permutation in 6 random symmetries")


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_attention_heads_move(name):
    """Whole heads are permuted: some head's block of query rows lands on another head's."""
    model, x = _build(name)
    g = converters.from_torch(model, x)
    sd = model.state_dict()
    key = {"llama": "layers.0.self_attn.q_proj.weight", "gpt2": "h.0.attn.c_attn.weight",
           "bert": "encoder.layer.0.attention.self.query.weight"}[name]
    dim = 1 if name == "gpt2" else 0  # GPT-2's Conv1D stores (in, 3 * out): queries are columns 0..15
    for seed in range(6):
        moved = converters.to_state_dict(symmetry.random_symmetry(g, seed=seed))
        if _units_moved(sd[key].narrow(dim, 0, 16), moved[key].narrow(dim, 0, 16), dim, 8):
            return
    pytest.fail(f"{name}: no head permutation in 6 random symmetries")


def test_alignment_undoes_a_symmetry(converted):
    """Weight matching finds the inverse of a random symmetry exactly, with no spec: residual
    streams, heads, GQA groups, experts, recurrent units and tied embeddings included."""
    from gmn.weightspace.alignment import align

    name, model, x, g = converted
    moved = symmetry.random_symmetry(g, seed=1)
    n = int(g.num_param_edges)
    aligned = align(g, moved)
    if name in ALIGNMENT_LOCAL_OPTIMA:  # a valid symmetry, not the inverse: same function, closer
        assert rel_err(run(rebuilt(model, aligned), x), run(model, x)) < 1e-9
        before = (moved.edge_value[:n] - g.edge_value[:n]).norm()
        assert (aligned.edge_value[:n] - g.edge_value[:n]).norm() < 0.7 * before  # measured: 6.65 -> 4.00
        return
    assert torch.equal(aligned.edge_value[:n], g.edge_value[:n]), f"{name}: alignment left a distance"
    for key, value in g.param_index.buffers.items():
        assert torch.equal(aligned.param_index.buffers[key], value), f"{name}: buffer {key} not restored"


def test_free_groups_are_symmetries(converted):
    """The groups alignment matches by coordinate descent (free: every permutation of their
    units a symmetry) are: each permuted alone is an automorphism, and all permuted at once
    leave the float64 outputs unchanged."""
    from gmn.weightspace.alignment import _template

    name, model, x, g = converted
    fg = _template(g).free
    y = run(model, x)
    tol = 1e-5 if name in FLOAT32_ONLY else 1e-6 if name in FLOAT32_INSIDE else 1e-9
    gen = torch.Generator().manual_seed(0)
    together = torch.arange(g.num_nodes)
    for group in range(len(fg.units)):
        nodes = fg.nodes(group)
        image = nodes[torch.randperm(fg.units[group], generator=gen)].reshape(-1)
        alone = torch.arange(g.num_nodes)
        alone[nodes.reshape(-1)] = image
        symmetry.permute_values(g, alone)  # raises unless an automorphism with its tied weights
        together[nodes.reshape(-1)] = image
    values, buffers, _ = symmetry.permute_values(g, together)
    moved = converters.with_values(g, values, buffers)
    assert rel_err(run(rebuilt(model, moved), x), y) < tol, f"{name}: permuting the free groups changed the outputs"


def test_rescalings_and_sign_flips_hold_on_fresh_inputs(converted):
    """ReLU-like neurons rescaled and odd-activation neurons flipped (also through a product by a
    number: ``sin(30 x)``, ``relu(x / 2)``) leave outputs unchanged on fresh inputs too."""
    name, model, x, g = converted
    tol = 1e-5 if name in FLOAT32_ONLY else 1e-6 if name in FLOAT32_INSIDE else 1e-9
    if not bool((symmetry.scalable_neurons(g) | symmetry.flippable_neurons(g)).any()):
        pytest.skip(f"{name}: no neuron may be rescaled or flipped")
    inputs = [fresh_inputs(x, seed) for seed in range(3)]
    expected = [run(model, i) for i in inputs]
    moved = rebuilt(model, symmetry.random_symmetry(g, seed=11, scale=True, sign=True))
    for seed in range(3):
        assert rel_err(run(moved, inputs[seed]), expected[seed]) < tol, f"{name}: fresh input {seed} changed"
