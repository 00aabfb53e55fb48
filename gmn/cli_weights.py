"""``gmn edit`` and ``gmn generate``: metanetworks that write weights, and the runnable
checkpoints (safetensors, optionally ONNX) they produce."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

import converters
from converters.io import atomic_write

from .zoo.generate import save_checkpoint


def add_parsers(sub, train_options) -> None:
    p = sub.add_parser("generate", help="train a weight generator on a zoo and write new checkpoints")
    p.add_argument("zoo", help="zoo folder (its checkpoints are the training data)")
    p.add_argument("--out", default="gmn-generate", help="folder for the generator state and the checkpoints")
    p.add_argument("--arch", help="architecture spec as JSON (any shape of the zoo's families; "
                                  "default: the zoo's most common architecture)")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--target", type=float, help="condition on this test accuracy")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance weight with --target")
    p.add_argument("--steps", type=int, default=20, help="Heun integration steps")
    _common(p, train_options)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("edit", help="train a weight editor on a zoo and write the edited checkpoints")
    p.add_argument("zoo", help="zoo folder")
    p.add_argument("--objective", default="accuracy",
                   help="accuracy (raise test accuracy), forget:K (remove class K) or dilation (INR zoos)")
    p.add_argument("--out", default="gmn-edit", help="folder for the editor state and the edited checkpoints")
    p.add_argument("--members", default="test", choices=("test", "all"), help="which members to edit and write")
    p.add_argument("--inputs", type=int, default=256, help="training inputs the classifier objectives see")
    p.add_argument("--scale", type=float, default=1.0, help="residual scale (0.01 for SIRENs)")
    p.add_argument("--probes", type=int, default=0,
                   help="give every neuron its activations on the first N objective inputs (gmn.probes); 0: none")
    _common(p, train_options)
    p.set_defaults(handler=_edit)


def _common(p: argparse.ArgumentParser, train_options) -> None:
    p.add_argument("--onnx", action="store_true", help="also write each model as ONNX (needs onnxscript)")
    p.add_argument("--seed", type=int, default=0)
    train_options(p)


def write_model(module: nn.Module, state: dict[str, Tensor], path: Path, example: Tensor, onnx: bool) -> None:
    """``path``.safetensors (and ``path``.onnx, batch dimension dynamic), each written atomically."""
    save_checkpoint(state, path.with_suffix(".safetensors"))
    if not onnx:
        return
    try:
        import onnx as onnx_lib
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as err:
        raise ValueError("--onnx needs onnxscript (pip install onnxscript)") from err
    module.load_state_dict(state, strict=False)
    program = torch.onnx.export(module.eval(), (example,), dynamo=True, optimize=False, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))  # any batch size
    atomic_write(path.with_suffix(".onnx"), lambda tmp: onnx_lib.save(program.model_proto, tmp))


def _accuracy(module: nn.Module, template, values: Tensor, data) -> float:
    from .tasks.generation import accuracies

    return float(accuracies(module, template, values.unsqueeze(0), data.x_test, data.y_test)[0])


def _task_data(member: dict):
    """The member's classification data, or None for zoos that are no classifiers (INRs, imports)."""
    from .zoo import datasets
    from .zoo.families import FAMILIES

    return datasets.load(member["dataset"]) if member["arch"]["family"] in FAMILIES else None


def _generate(args) -> int:
    from .data import ZooDataset
    from .tasks.generation import fit_generator
    from .zoo.families import build

    ds = ZooDataset(args.zoo, ("test_acc",), allow_modules=tuple(args.allow_module))
    out = Path(args.out)
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))
    val, train = perm[: max(1, len(ds) // 10)], perm[max(1, len(ds) // 10):]
    gen = fit_generator(ds, train, val, args.config, conditioned=True, out_dir=out / "state").cpu()
    common = Counter(ds.arch_keys).most_common(1)[0][0]
    member = ds.members[ds.arch_keys.index(common)]
    data = _task_data(member)
    if args.arch:
        if data is None:
            raise ValueError("--arch needs a zoo of the built-in families (mlp, cnn, rescnn, vit, moe)")
        module = build(json.loads(args.arch), data.input_shape, data.classes).eval()
        example = data.x_test[:2]
        template = converters.from_torch(module, (example,))
    else:
        module, example = ds.arch_modules()[common]
        template = ds.templates[common]
    values = gen.sample(template, args.count, steps=args.steps, target=args.target, guidance=args.guidance,
                        seed=args.seed)
    report = []
    for i, v in enumerate(values):
        state = converters.to_state_dict(template, v)
        write_model(module, state, out / f"generated-{i:03d}", example, args.onnx)
        report.append({"file": f"generated-{i:03d}.safetensors",
                       "test_acc": None if data is None else _accuracy(module, template, v, data)})
    _report(out / "generated.json", report, "generated", data is not None)
    return 0


def _objective(args, ds, member):
    from .tasks.editing import classifier_objective, dilation_objective

    if args.objective == "dilation":
        from .zoo.inr import coordinates, mnist_images

        return dilation_objective(ds, mnist_images()[0]), coordinates(), None
    data = _task_data(member)
    if data is None:
        raise ValueError(f"objective {args.objective!r} needs a classifier zoo of the built-in families")
    pick = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(args.seed))[: args.inputs]
    if args.objective == "accuracy":
        return classifier_objective(data.y_train[pick]), data.x_train[pick], data
    if args.objective.startswith("forget:"):
        return classifier_objective(data.y_train[pick], int(args.objective.split(":")[1])), data.x_train[pick], data
    raise ValueError(f"unknown objective {args.objective!r}; use accuracy, forget:K or dilation")


def _edit(args) -> int:
    from .data import ZooDataset, split_by_run
    from .tasks.editing import edit_members, fit_editor

    ds = ZooDataset(args.zoo, allow_modules=tuple(args.allow_module))
    objective, inputs, data = _objective(args, ds, ds.members[0])
    split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=args.seed)
    out = Path(args.out)
    probes = inputs[: args.probes] if args.probes else None
    result = fit_editor(ds, split, objective, inputs, args.config, out / "state", scale=args.scale, probes=probes)
    idx = split.test if args.members == "test" else torch.arange(len(ds))
    modules, report = ds.arch_modules(), []
    for i, values in zip(idx.tolist(), edit_members(result.editor, ds, idx)):
        member, graph = ds.members[i], ds[i]  # the member's graph: its own BatchNorm statistics
        module, example = modules[ds.arch_keys[i]]
        state = converters.to_state_dict(graph, values)
        name = f"{member['run_id']}-e{member['epoch']}"
        write_model(module, state, out / "edited" / name, example, args.onnx)
        before = converters.to_state_dict(graph)
        report.append({"file": f"edited/{name}.safetensors", "source": member["path"],
                       "objective_before": float(objective([torch.func.functional_call(module, before, (inputs,))],
                                                           torch.tensor([i]))),
                       "objective_after": float(objective([torch.func.functional_call(module, state, (inputs,))],
                                                          torch.tensor([i]))),
                       **({} if data is None else {"test_acc_before": _accuracy(module, graph, ds.values[i], data),
                                                   "test_acc_after": _accuracy(module, graph, values, data)})})
    _report(out / "edited.json", report, "edited", data is not None)
    return 0


def _report(path: Path, rows: list[dict], what: str, has_accuracy: bool) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    for r in rows[:20]:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if has_accuracy:
        key = "test_acc_after" if "test_acc_after" in rows[0] else "test_acc"
        mean = sum(r[key] for r in rows) / len(rows)
        print(f"{len(rows)} {what} models, mean test accuracy {mean:.4f}")
    print(f"wrote {len(rows)} checkpoints and {path}")
