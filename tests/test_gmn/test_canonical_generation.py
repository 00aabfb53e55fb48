"""Canonical-frame generation: the frame is exact and symmetry-blind, the flow learns, samples work."""

import pytest
import torch

import converters
from gmn.tasks import TrainConfig
from gmn.tasks.canonical_generation import CanonicalGenerator, fit_canonical_generator, flat_rows
from gmn.tasks.generation import accuracies
from gmn.weightspace.merging import recompute_batchnorm
from gmn.weightspace.symmetry import random_symmetry
from gmn.zoo import datasets
from gmn.zoo.families import build
from gmn.zoo.train import train_run

RESNET = {"family": "rescnn", "blocks": 1, "width": 4, "act": "relu"}
CNN = {"family": "cnn", "depth": 2, "width": 8, "kernel": 3, "act": "relu", "dropout": 0.0}


def _noisy_resnets(count: int, seed: int = 0):
    """ResNets with BatchNorm, every parameter and statistic noised (no 1/0 initialisations)."""
    data = datasets.load("digits")
    graphs = []
    for k in range(count):
        torch.manual_seed(seed + k)
        model = build(RESNET, data.input_shape, data.classes)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
            for name, b in model.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_()
                elif name.endswith("running_var"):
                    b.uniform_(0.5, 2.0)
        graphs.append(converters.from_torch(model.eval(), (data.x_test[:2],)))
    return graphs, model, data


def _graph_outputs(module, g, x):
    with torch.no_grad():
        return torch.func.functional_call(module.eval(), converters.to_state_dict(g), (x,))


def test_frame_round_trip_is_exact_with_and_without_components():
    graphs, _, _ = _noisy_resnets(5)
    rows = flat_rows(graphs)
    for components in (None, len(graphs) - 1):
        gen = CanonicalGenerator(graphs[0], rows, components)
        back = gen.unflatten(gen.decode(gen.encode(rows)))
        for g, h in zip(graphs, back):
            torch.testing.assert_close(converters.parameter_values(h), converters.parameter_values(g),
                                       rtol=1e-4, atol=1e-4)
            for name in ("bn1.running_var", "stem.1.running_mean"):
                name = next(k for k in g.param_index.buffers if k.endswith(name.split(".", 1)[1]))
                torch.testing.assert_close(h.param_index.buffers[name], g.param_index.buffers[name],
                                           rtol=1e-4, atol=1e-4)
    latent = CanonicalGenerator(graphs[0], rows, 3).encode(rows)
    torch.testing.assert_close(latent.std(0), torch.ones(3), rtol=1e-3, atol=1e-3)  # whitened


def test_canonicalisation_puts_a_symmetric_copy_on_the_same_coordinates():
    graphs, model, data = _noisy_resnets(3)
    moved = random_symmetry(graphs[1], seed=4)
    gen = fit_canonical_generator([graphs[0], graphs[1], moved], config=TrainConfig(epochs=1, hidden=8, layers=1),
                                  steps_per_epoch=1, progress=False)
    aligned = gen.training_rows
    assert not torch.allclose(converters.parameter_values(moved), converters.parameter_values(graphs[1]))
    torch.testing.assert_close(aligned[2], aligned[1], rtol=1e-4, atol=1e-5)  # one frame: one vector
    # and the frame changed no function: the reference's coordinates run the reference
    g = gen.unflatten(aligned[2:3])[0]
    g.model = model
    torch.testing.assert_close(_graph_outputs(model, g, data.x_test[:16]),
                               _graph_outputs(model, graphs[1], data.x_test[:16]), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def cnn_generator():
    """A generator fitted on eight CNNs of one shape, trained from eight seeds on digits."""
    data = datasets.load("digits")
    hparams = {"optimizer": "adam", "lr": 5e-3, "l2": 1e-5, "init": "default", "init_std": 0.0, "train_fraction": 1.0}
    runs = [train_run({"run_id": str(k), "arch": CNN, "seed": k, "dataset": "digits", "epochs": 8,
                       "checkpoint_epochs": [8], "hparams": hparams}) for k in range(8)]
    module = build(CNN, data.input_shape, data.classes).eval()
    template = converters.from_torch(module, (data.x_test[:2],))
    graphs = [converters.from_state_dict(template, _tensors(r["checkpoints"][-1]))
              for r in runs]
    acc = torch.tensor([r["test_acc"] for r in runs])
    config = TrainConfig(epochs=20, patience=20, lr=1e-3, batch_size=32, hidden=256, layers=2, weight_decay=0.0)
    return fit_canonical_generator(graphs, acc, config, progress=False), module, acc


def _tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in checkpoint["state"].items()}


def test_the_flow_learns_and_its_samples_classify_like_the_checkpoints(cnn_generator):
    gen, module, checkpoints = cnn_generator
    # predicting the checkpoints' mean (latent 0) would score mean(w_1^2); the flow does far better
    trivial = float(gen.encode(gen.training_rows).pow(2).mean())
    assert gen.history[-1]["val_loss"] < 0.2 * trivial
    data = datasets.load("digits")
    values = torch.stack([converters.parameter_values(g) for g in gen.sample(16, steps=10, seed=1)])
    acc = accuracies(module, gen.template, values, data.x_test, data.y_test)
    assert acc.median() >= 0.9 * checkpoints.median()  # chance is 0.1


def test_samples_are_seeded_and_conditioning_is_checked(cnn_generator):
    gen, _, _ = cnn_generator
    a, b = gen.sample(2, steps=3, seed=7), gen.sample(2, steps=3, seed=7)
    torch.testing.assert_close(converters.parameter_values(a[1]), converters.parameter_values(b[1]))
    assert not torch.equal(converters.parameter_values(a[0]), converters.parameter_values(a[1]))
    gen.sample(2, steps=3, target=0.9, guidance=2.0)
    unconditioned = CanonicalGenerator(a[0], flat_rows(a))
    with pytest.raises(ValueError, match="without a property condition"):
        unconditioned.sample(1, target=0.5)
    with pytest.raises(ValueError, match="components must be between 1 and 1"):
        CanonicalGenerator(a[0], flat_rows(a), components=2)


def test_batchnorm_samples_have_valid_statistics_and_recompute_on_data():
    graphs, model, data = _noisy_resnets(4)
    gen = fit_canonical_generator(graphs, config=TrainConfig(epochs=2, hidden=16, layers=1), steps_per_epoch=5,
                                  progress=False)
    (g,) = gen.sample(1, steps=3)
    variances = [v for k, v in g.param_index.buffers.items() if k.endswith("running_var")]
    assert variances and all((v > 0).all() for v in variances)
    g.model = model
    fresh = recompute_batchnorm(g, [(data.x_train[:64],)])
    name = next(k for k in g.param_index.buffers if k.endswith("running_mean"))
    assert not torch.allclose(fresh.param_index.buffers[name], g.param_index.buffers[name])
    model.load_state_dict(converters.to_state_dict(fresh))
    assert torch.isfinite(model.eval()(data.x_test[:4])).all()


@pytest.mark.parametrize("change", [{"width": 6}, {"act": "gelu"}])
def test_checkpoints_of_different_architectures_are_refused(change):
    graphs, _, _ = _noisy_resnets(1)
    data = datasets.load("digits")
    other = build({**RESNET, **change}, data.input_shape, data.classes).eval()
    with pytest.raises(ValueError, match="same architecture"):
        fit_canonical_generator([graphs[0], converters.from_torch(other, (data.x_test[:2],))],
                                config=TrainConfig(epochs=1, hidden=8, layers=1), progress=False)
