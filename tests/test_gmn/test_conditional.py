"""gmn.tasks.conditional: held-out descriptors, retrieval, task arithmetic weights, and scoring through
PEFT folders on a tiny LoRA zoo (the reference fine-tuning reproduces the zoo's own adapters)."""

import json

import pytest
import torch

pytest.importorskip("peft")

from gmn.tasks.conditional import (  # noqa: E402
    DescriptorSplit,
    Task,
    finetune_curve,
    fresh_adapter,
    load_adapter,
    nearest_descriptor,
    neighbour_weights,
    reference_steps,
)
from gmn.zoo.datasets import load  # noqa: E402
from gmn.zoo.lora import AdapterDataset, build_lora_zoo, rotate, zoo_base  # noqa: E402

SMALL = dict(runs=3, epochs=1, base_epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-zoo")
    build_lora_zoo(root, **SMALL)
    return root


def test_split_holds_out_exactly_the_band_and_the_ends():
    angles = torch.tensor([-90.0, -75.0, -10.0, 20.0, 21.0, 44.9, 45.0, 75.0, 80.0])
    split = DescriptorSplit(band=(20.0, 45.0), train_range=(-75.0, 75.0))
    assert split.train_indices(angles) == [1, 2, 3, 6, 7]  # band open, range closed
    assert split.check([30.0, 85.0, -80.0]) == ["interpolation", "extrapolation", "extrapolation"]
    with pytest.raises(ValueError, match="not held out"):
        split.check([10.0])


def test_retrieval_and_task_arithmetic_pick_the_neighbouring_descriptors():
    angles = torch.tensor([-60.0, 10.0, 50.0, 15.0, 70.0])
    assert nearest_descriptor(angles, 30.0) == 3
    assert nearest_descriptor(angles, 90.0) == 4
    (i, wi), (j, wj) = neighbour_weights(angles, 30.0)  # brackets 30: 15 below, 50 above, linear weights
    assert (i, j) == (3, 2) and wi == pytest.approx(20 / 35) and wj == pytest.approx(15 / 35)
    (i, wi), (j, wj) = neighbour_weights(angles, 80.0)  # beyond the range: the two nearest, convex
    assert {i, j} == {4, 2} and wi + wj == pytest.approx(1.0) and min(wi, wj) > 0


def test_reference_fine_tuning_reproduces_the_zoos_recipe(zoo):
    row = json.loads((zoo / "adapters" / "a0000" / "result.json").read_text())
    base, _ = zoo_base(zoo)
    data = load("digits")
    task = Task.rotated(data, row["angle"])
    steps = reference_steps(len(data.y_train), SMALL["epochs"])
    curve = finetune_curve(fresh_adapter(base, 4, 8.0, ["convs.0", "convs.1", "head"], row["seed"]), task, steps,
                           row["seed"])
    assert len(curve.accuracy) == steps + 1 and curve.accuracy[0] == pytest.approx(row["base_accuracy"])
    assert curve.accuracy[-1] == pytest.approx(row["accuracy"], abs=1e-6)
    assert curve.seconds == sorted(curve.seconds) and curve.steps_to(row["accuracy"]) <= steps


def test_adapter_folders_load_with_peft_and_score_on_their_rotated_task(zoo, tmp_path):
    import peft

    from gmn.tasks.canonical_generation import fit_canonical_generator
    from gmn.tasks.property import TrainConfig

    ds = AdapterDataset(zoo, canonical=True)
    base, _ = zoo_base(zoo)
    data = load("digits")
    # a zoo adapter through its graph and folder: the catalogue's accuracy on its own angle, not another's
    for i, row in enumerate(ds.rows):
        task = Task.rotated(data, float(row["angle"]))
        assert task.accuracy(load_adapter(ds.get(i), base, tmp_path / f"z{i}")) == pytest.approx(
            float(row["accuracy"]), abs=1e-6)
    config = TrainConfig(epochs=1, patience=1, hidden=16, layers=1, batch_size=4, weight_decay=0.0)
    gen = fit_canonical_generator([ds.get(i) for i in range(len(ds))], ds.y[:, 0], config, steps_per_epoch=2,
                                  aligned=True, progress=False)
    angle = 33.0
    sample = gen.sample(1, steps=2, target=angle)[0]
    task = Task.rotated(data, angle)
    got = task.accuracy(load_adapter(sample, base, tmp_path / "gen"))
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "gen")).eval()
    with torch.no_grad():
        expected = float((model(rotate(data.x_test, angle)).argmax(1) == data.y_test).float().mean())
    assert got == pytest.approx(expected)
