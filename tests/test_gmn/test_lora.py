"""gmn.lora: the balanced SVD canonical form, and metanetworks on adapter graphs invariant to GL(r)."""

import pytest
import torch
from test_adapters.cases import make
from test_adapters.test_adapters import _random_gl, gl_transform

import converters
from adapters import from_peft
from gmn import GraphMetanetwork, lora, symmetry


def _factors(m, n, r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(r, n, generator=gen, dtype=torch.float64),
            torch.randn(m, r, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("m, n, r", [(12, 9, 4), (5, 20, 8), (3, 2, 6)])
def test_balanced_form_keeps_the_product_and_balances_it(m, n, r):
    a, b = _factors(m, n, r)
    a2, b2, s = lora.balanced_svd(a, b)
    assert a2.shape == a.shape and b2.shape == b.shape
    torch.testing.assert_close(b2 @ a2, b @ a, rtol=1e-12, atol=1e-12)
    assert bool((s[:-1] >= s[1:]).all())
    torch.testing.assert_close(b2.T @ b2, torch.diag(s), atol=1e-12, rtol=0)  # balanced: B'^T B' = A' A'^T = S
    torch.testing.assert_close(a2 @ a2.T, torch.diag(s), atol=1e-12, rtol=0)
    top = b2.abs().argmax(0)
    live = s > 0
    assert bool((b2[top, torch.arange(r)][live] > 0).all())  # the sign rule


@pytest.mark.parametrize("cond", [1.0, 1e2, 1e4])
def test_any_invertible_m_gives_one_form(cond):
    a, b = _factors(30, 20, 6, seed=1)
    m = _random_gl(6, torch.Generator().manual_seed(2), cond)
    ref = lora.balanced_svd(a, b)
    moved = lora.balanced_svd(m @ a, torch.linalg.solve(m.T, b.T).T)
    for x, y in zip(ref, moved):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9)


def test_zero_singular_values_have_one_form():
    a, b = _factors(10, 8, 4, seed=3)
    zero_a, zero_b, s = lora.balanced_svd(a, torch.zeros_like(b))  # PEFT's initial B
    assert not zero_a.any() and not zero_b.any() and not s.any()
    a[2:] = a[:2]  # rank 2 of 4
    m = _random_gl(4, torch.Generator().manual_seed(4), 1e3)
    a2, b2, s = lora.balanced_svd(a, b)
    assert int((s == 0).sum()) == 2 and not a2[2:].any() and not b2[:, 2:].any()
    for x, y in zip((a2, b2), lora.balanced_svd(m @ a, torch.linalg.solve(m.T, b.T).T)):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9)


def test_equal_singular_values_are_reported(tmp_path):
    factory, _, _ = make("llama", tmp_path / "llama")
    g = from_peft(tmp_path / "llama")
    values = converters.parameter_values(g).clone()
    index = g.param_index
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    q, _ = torch.linalg.qr(torch.randn(32, 4, dtype=torch.float64))
    values[index.edge_ids(f"{name}.lora_A.weight")] = (torch.diag(torch.tensor([2.0, 2.0, 1.0, 0.0])).double()
                                                       @ q.T).reshape(-1)
    values[index.edge_ids(f"{name}.lora_B.weight")] = q.reshape(-1)
    _, spectra = lora.canonical_values(converters.with_values(g, values))
    found = {s.module: s for s in spectra}[name]
    assert found.free_rotations == ((0, 2),)
    torch.testing.assert_close(torch.tensor(found.singular_values, dtype=torch.float64),
                               torch.tensor([2.0, 2.0, 1.0, 0.0], dtype=torch.float64))


def test_the_form_costs_no_m_by_n_product():
    """A 200,000 x 200,000 product would need 320 GB; the factors are 200,000 x 4."""
    a, b = _factors(200_000, 200_000, 4, seed=5)
    a2, b2, s = lora.balanced_svd(a, b)
    torch.testing.assert_close((b2[:50] @ a2[:, :50]), b[:50] @ a[:, :50], rtol=1e-10, atol=1e-10)


def test_metanetworks_are_invariant_to_rank_permutations_and_with_canonicalisation_to_gl(tmp_path):
    make("two", tmp_path / "two")
    g = from_peft(tmp_path / "two")
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=2, kind="gmn", readout="graph").eval()

    def run(graph):  # the metanetwork reads float32 values; the transforms ran in float64
        graph = graph.clone()
        graph.edge_value = graph.edge_value.float()
        return net(graph)

    with torch.no_grad():
        ref = run(g)
        torch.testing.assert_close(run(symmetry.random_symmetry(g, seed=1)), ref, rtol=1e-4, atol=1e-5)
        moved = converters.with_values(g, gl_transform(g, seed=2))
        assert not torch.allclose(run(moved), ref, rtol=1e-3, atol=1e-3)  # raw factors see M
        torch.testing.assert_close(run(lora.canonicalise(moved)), run(lora.canonicalise(g)), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two single-adapter folders of one Llama base (r=4 and r=2 on v_proj), and PEFT on both."""
    root = tmp_path_factory.mktemp("pair")
    factory, inputs, first = make("llama", root / "a", seed=0)
    _, _, second = make("llama", root / "b", seed=7)
    return root, factory, inputs


def test_exact_merge_is_peft_s_cat_merge(pair, tmp_path):
    import peft
    from test_adapters.cases import outputs

    root, factory, inputs = pair
    graphs = [from_peft(root / "a"), from_peft(root / "b")]
    merged, errors = lora.merge(graphs, weights=[0.7, -0.4])
    assert set(errors.values()) == {0.0}
    converters.to_peft(merged, None, tmp_path / "merged")
    ours = outputs(peft.PeftModel.from_pretrained(factory(), tmp_path / "merged").eval(), inputs)
    model = peft.PeftModel.from_pretrained(factory(), root / "a", adapter_name="a")
    model.load_adapter(root / "b", adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "ab", combination_type="cat")
    torch.testing.assert_close(ours, outputs(model.eval(), inputs, "ab"), rtol=1e-10, atol=1e-10)


def test_truncated_merge_reports_its_error(pair):
    root, *_ = pair
    graphs = [from_peft(root / "a"), from_peft(root / "b")]
    exact, _ = lora.merge(graphs)
    cut, errors = lora.merge(graphs, rank=3)
    for module, (s_e, a_e, b_e, *_), in lora._products(exact).items():
        s_c, a_c, b_c, *_ = lora._products(cut)[module]
        full = s_e * b_e @ a_e
        measured = float((s_c * b_c @ a_c - full).norm() / full.norm())
        assert measured == pytest.approx(errors[module], rel=1e-6, abs=1e-12)
        assert a_c.shape[0] == min(3, a_e.shape[0])
    assert max(errors.values()) > 0


def test_product_distances_are_exact_and_gl_invariant(pair):
    root, *_ = pair
    a, b = from_peft(root / "a"), from_peft(root / "b")
    moved = converters.with_values(a, gl_transform(a, seed=3))
    dense = sum(float(((x[0] * x[2] @ x[1]) - (y[0] * y[2] @ y[1])).square().sum())
                for x, y in zip(lora._products(a).values(), lora._products(b).values())) ** 0.5
    d = lora.product_distances(a, [b, moved, a])
    assert float(d[0]) == pytest.approx(dense, rel=1e-10)
    assert float(d[1]) < 1e-8 * float(d[0]) and float(d[2]) < 1e-12 * float(d[0])
    assert [i for i, _ in lora.nearest(a, [b, moved], k=2)] == [1, 0]


@pytest.mark.parametrize("method", ["ties", "dare"])
def test_ties_and_dare_act_on_the_products(pair, method):
    from gmn.weightspace.merging import _ties

    root, *_ = pair
    graphs = [from_peft(root / "a"), from_peft(root / "b")]
    merged, errors = lora.merge(graphs, [1.0, 0.5], rank=32, method=method, density=0.3, seed=4)
    gen = torch.Generator().manual_seed(4)
    parts = [lora._products(g) for g in graphs]
    for module in sorted(parts[0]):  # the same module order as merge, so DARE draws the same masks
        tasks = torch.stack([w * p[module][0] * (p[module][2] @ p[module][1]) for w, p in zip([1.0, 0.5], parts)])
        flat = tasks.flatten(1)
        if method == "ties":
            expected = _ties(flat, 0.3)
        else:
            expected = (flat * (torch.rand(flat.shape, generator=gen, dtype=torch.float64) < 0.3) / 0.3).sum(0)
        s, a, b, *_ = lora._products(merged)[module]
        torch.testing.assert_close(s * b @ a, expected.view(tasks.shape[1:]), rtol=1e-9, atol=1e-10)
        assert errors[module] < 1e-12  # rank 32 holds any 32 x n product: exact
    cut, errors = lora.merge(graphs, rank=2, method=method, density=0.3)
    assert min(errors.values()) > 0 and all(a.shape[0] == 2 for _, a, *_ in lora._products(cut).values())
