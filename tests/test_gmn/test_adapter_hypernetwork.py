"""gmn.tasks.adapter_hypernetwork: the descriptor-to-adapter network on a tiny built LoRA zoo. What it
trains on is what PEFT computes with the folder it writes; the task loss lowers the loss on descriptors
it never trained on; the reconstruction stage fits the zoo's factors."""

import copy

import pytest
import torch

pytest.importorskip("peft")

import converters  # noqa: E402
from gmn.tasks.adapter_hypernetwork import AdapterHypernetwork, fit_adapter_hypernetwork  # noqa: E402
from gmn.tasks.conditional import load_adapter  # noqa: E402
from gmn.tasks.lora_editing import AdapterTasks, _Runner  # noqa: E402
from gmn.tasks.property import TrainConfig  # noqa: E402
from gmn.zoo.datasets import load  # noqa: E402
from gmn.zoo.lora import AdapterDataset, build_lora_zoo, rotate, zoo_base  # noqa: E402

FAST = TrainConfig(epochs=3, patience=3, lr=3e-3, batch_size=4, hidden=32, layers=2, weight_decay=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import peft

    root = tmp_path_factory.mktemp("hyper-zoo")
    build_lora_zoo(root, runs=10, epochs=1, base_epochs=2)
    base, example = zoo_base(root)
    ds = AdapterDataset(root, targets=("angle",), canonical=True, base=base, example_inputs=example)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(root / ds.rows[0]["path"]))
    return root, base, ds, model, load("digits")


def _fit(zoo, **kw):
    _, _, ds, model, data = zoo
    angles = ds.y[:, 0]
    return fit_adapter_hypernetwork(ds.get(0), torch.stack(ds.values), angles, AdapterTasks(angles, data), model,
                                    FAST, steps_per_epoch=4, images=16, progress=False, **kw)


def test_what_it_trains_on_is_what_peft_computes_with_the_written_folder(zoo, tmp_path):
    _, base, ds, model, data = zoo
    net = _fit(zoo, reconstruction_steps=20)
    runner = _Runner(model, [n for n, _, _ in ds.get(0).param_index.params])
    x = rotate(data.x_test[:32], 33.0)
    g, = net.adapters([33.0])
    trained_forward = runner.logits(converters.to_state_dict(net.template, net(torch.tensor([33.0]))[0]), x)
    loaded = load_adapter(g, base, tmp_path / "a").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_forward.detach(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(loaded(x), base(x), atol=1e-4)  # the adapter changes what the base computes


def test_the_task_loss_lowers_the_loss_on_descriptors_it_never_saw(zoo):
    """Validation descriptors are a seeded fifth of the zoo's adapters, never in a training step; the
    stage-2 training must lower their loss below the reconstruction-only network's (its own start)."""
    net = _fit(zoo, reconstruction_steps=20)
    assert len(net.history) == FAST.epochs
    best = min(h["val_loss"] for h in net.history)
    assert _val_loss_of(zoo, net) == pytest.approx(best, rel=1e-5)  # the best epoch's network is the one kept
    zoo_only = _fit(zoo, reconstruction_steps=20, task_loss=False)
    assert zoo_only.history == []
    assert best < _val_loss_of(zoo, zoo_only)


def _val_loss_of(zoo, net) -> float:
    """The validation loss the fit reports, computed for ``net`` with the fit's own draws."""
    from gmn.tasks.adapter_hypernetwork import _task_split

    _, _, ds, model, data = zoo
    angles = ds.y[:, 0]
    _, val = _task_split(len(angles), FAST.seed)
    tasks = AdapterTasks(angles, data)
    runner = _Runner(model, [n for n, _, _ in ds.get(0).param_index.params])
    gen, losses = torch.Generator().manual_seed(12345), []
    with torch.no_grad():
        for member, row in zip(val.tolist(), net(angles[val])):
            x, y = tasks.batch(member, 16, gen)
            losses.append(torch.nn.functional.cross_entropy(
                runner.logits(converters.to_state_dict(net.template, row), x), y))
    return float(torch.stack(losses).mean())


def test_reconstruction_fits_the_zoo_factors_and_starts_from_their_mean(zoo):
    _, _, ds, _, _ = zoo
    rows, angles = torch.stack(ds.values), ds.y[:, 0]
    untrained = AdapterHypernetwork(ds.get(0), rows, angles, hidden=32, layers=2)
    torch.testing.assert_close(untrained(angles), rows.mean(0).expand_as(rows))
    net = _fit(zoo, reconstruction_steps=300, task_loss=False)
    before = ((rows - rows.mean(0)) ** 2).mean()
    with torch.no_grad():  # three adapters near 70 degrees differ: a smooth map of the angle fits part of it
        assert ((net(angles) - rows) ** 2).mean() < 0.5 * before
