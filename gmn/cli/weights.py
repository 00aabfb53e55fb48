"""``gmn edit`` and ``gmn generate``: metanetworks that write weights, and the runnable
checkpoints (safetensors, optionally ONNX) they produce."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

import converters
from converters.files import atomic_write

from ..checkpoints import provenance
from ..zoo.catalogue import FILENAME
from ..zoo.generate import save_checkpoint
from . import checks

GENERATORS = ("canonical", "gmn", "hypernetwork")
#: what --train-epochs, --patience, --hidden and --batch-size default to, per generator
GENERATOR_DEFAULTS = {"canonical": {"epochs": 40, "patience": 40, "hidden": 512, "batch_size": 64},
                      "gmn": {"epochs": 20, "patience": 10, "hidden": 32, "batch_size": 32},
                      "hypernetwork": {"epochs": 40, "patience": 10, "hidden": 256, "batch_size": 16}}


def sample_count(a) -> int:
    """``--count``, or its default: 8 samples, the hypernetwork's one adapter (it is deterministic)."""
    return a.count if a.count is not None else 1 if a.generator == "hypernetwork" else 8


def add_parsers(sub, train_options) -> None:
    p = sub.add_parser("generate", help="train a weight generator on a zoo and write new checkpoints",
                       epilog="--train-epochs, --patience, --hidden and --batch-size default per generator: "
                              + "; ".join(f"{g} {d['epochs']}, {d['patience']}, {d['hidden']}, {d['batch_size']}"
                                          for g, d in GENERATOR_DEFAULTS.items())
                              + " (canonical and hypernetwork: epochs of 50 steps, batches of draws, the MLP's "
                                "width)")
    p.add_argument("zoo", help="zoo folder (its checkpoints are the training data)")
    p.add_argument("--out", default="gmn-generate", type=checks.folder,
                   help="folder for the generator state and the checkpoints")
    p.add_argument("--generator", default="canonical", choices=GENERATORS,
                   help="canonical: align the architecture's checkpoints to one frame and flow-match their "
                        "flattened weights (an MLP); gmn: equivariant flow with a GMN velocity field (any shape of "
                        "the zoo's families, also unseen ones; its samples are at chance accuracy today); "
                        "hypernetwork (a LoRA zoo gmn built): a network from the task's angle to its adapter, trained "
                        "on the zoo's adapters and their tasks; writes the adapter for --target")
    p.add_argument("--arch", help="architecture spec as JSON (canonical: one of the zoo's architectures; gmn: any "
                                  "shape of the zoo's families; default: the zoo's most common architecture)")
    p.add_argument("--recompute-batchnorm", action="store_true",
                   help="recompute the samples' BatchNorm statistics on the zoo's training data")
    p.add_argument("--count", type=checks.positive_int,
                   help="checkpoints to sample (default 8; the hypernetwork writes one adapter)")
    p.add_argument("--target", type=checks.finite_float,
                   help="condition on this test accuracy (a LoRA zoo: on its first target, e.g. the angle)")
    p.add_argument("--guidance", type=checks.finite_float, default=2.0,
                   help="classifier-free guidance weight with --target")
    p.add_argument("--steps", type=checks.positive_int, default=20, help="Heun integration steps")
    _common(p, train_options)
    p.set_defaults(handler=_generate, train_epochs=None, patience=None, hidden=None, batch_size=None,
                   outputs=_generate_outputs)

    p = sub.add_parser("edit", help="train a weight editor on a zoo and write the edited checkpoints")
    p.add_argument("zoo", help="zoo folder")
    p.add_argument("--objective", default="accuracy",
                   help="accuracy (raise test accuracy), forget:K (remove class K) or dilation (INR zoos)")
    p.add_argument("--out", default="gmn-edit", type=checks.folder,
                   help="folder for the editor state and the edited checkpoints")
    p.add_argument("--members", default="test", choices=("test", "all"), help="which members to edit and write")
    p.add_argument("--inputs", type=checks.positive_int, default=256,
                   help="training inputs the classifier objectives see")
    p.add_argument("--scale", type=checks.positive_float, default=1.0, help="residual scale (0.01 for SIRENs)")
    p.add_argument("--probes", type=checks.nonnegative_int, default=0,
                   help="give every neuron its activations on the first N objective inputs (gmn.probes); 0: none")
    _common(p, train_options)
    p.set_defaults(handler=_edit, outputs=lambda a: ([Path(a.out) / "edited.json"], [Path(a.out) / "edited"], []))


def _generate_outputs(a) -> tuple[list[Path], list[Path], list]:
    """generated.json and the samples: checkpoint files, or on a LoRA zoo adapter folders."""
    from .lora_weights import generate_outputs, is_lora

    if is_lora(a.zoo):
        return generate_outputs(a)
    return ([Path(a.out) / "generated.json"] + [Path(a.out) / f"generated-{i:03d}{x}" for i in range(sample_count(a))
                                                for x in (".safetensors", ".onnx")[: 1 + a.onnx]], [], [])


def _common(p: argparse.ArgumentParser, train_options) -> None:
    p.add_argument("--onnx", action="store_true", help="also write each model as ONNX (needs onnxscript)")
    p.add_argument("--seed", type=checks.nonnegative_int, default=0, help="split, initialisation and sampling seed")
    train_options(p)
    checks.add_force(p)


def write_model(module: nn.Module, state: dict[str, Tensor], path: Path, example: Tensor, onnx: bool,
                metadata: dict[str, str] | None = None) -> str:
    """``path``.safetensors (and ``path``.onnx, batch dimension dynamic), each written atomically
    with ``metadata`` (provenance) in its header; a Hugging Face model is written back as a
    model folder ``path`` (config.json + model.safetensors). Returns the written name."""
    from ..checkpoints import is_hf_model, save_hf_folder

    if is_hf_model(module):
        if onnx:
            raise ValueError("--onnx exports the zoo families; a Hugging Face model is written as a model folder")
        save_hf_folder(module, state, path, metadata)
        return path.name
    save_checkpoint(state, path.with_suffix(".safetensors"), metadata)
    if not onnx:
        return path.with_suffix(".safetensors").name
    check_onnx_export(onnx)
    import onnx as onnx_lib

    module.load_state_dict(state, strict=False)
    program = torch.onnx.export(module.eval(), (example,), dynamo=True, optimize=False, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))  # any batch size
    atomic_write(path.with_suffix(".onnx"), lambda tmp: onnx_lib.save(program.model_proto, tmp))
    return path.with_suffix(".safetensors").name


def _accuracy(module: nn.Module, template, values: Tensor, data) -> float:
    from ..tasks.generation import accuracies

    return float(accuracies(module, template, values.unsqueeze(0), data.x_test, data.y_test)[0])


def _task_data(member: dict):
    """The member's classification data, or None for zoos that are no classifiers (INRs, imports)."""
    from ..zoo import datasets
    from ..zoo.families import FAMILIES

    return datasets.load(member["dataset"]) if member["arch"]["family"] in FAMILIES else None


def check_onnx_export(wanted: bool) -> None:
    """``--onnx`` needs onnxscript: say so before any training, not after."""
    if not wanted:
        return
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ValueError("--onnx needs onnx and onnxscript: pip install -e \".[onnx]\"") from None


def _generate_arch(text: str | None) -> dict | None:
    """``--arch`` of ``gmn generate``: a zoo-family spec as JSON, checked before training."""
    if text is None:
        return None
    from ..checkpoints import parse_arch

    spec = parse_arch(text)
    if spec["family"] in ("builtin", "module"):
        raise ValueError(f"gmn generate --arch takes a zoo architecture as JSON ('{{\"family\": \"cnn\", \"depth\": 3, "
                         f"...}}'), not {text!r}: the generator writes the zoo's families")
    return spec


def _state_dir(out: Path, *settings) -> Path:
    """Where training state resumes: one folder per zoo and settings, so a rerun with other
    settings into the same ``--out`` trains afresh instead of loading a model of another shape."""
    key = json.dumps([str(Path(settings[0]).resolve()), *settings[1:]], sort_keys=True, default=str)
    return out / "state" / hashlib.sha1(key.encode()).hexdigest()[:12]


def _generate(args) -> int:
    from ..data import ZooDataset
    from .lora_weights import generate_adapters, is_lora

    args.count = sample_count(args)
    if is_lora(args.zoo):  # samples written as PEFT adapter folders
        return generate_adapters(args)
    if args.generator == "hypernetwork":
        raise ValueError(f"--generator hypernetwork writes adapters for the tasks of a LoRA zoo gmn built; {args.zoo} "
                         "is not one (gmn zoo build DIR --preset lora)")
    check_onnx_export(args.onnx)
    arch = _generate_arch(args.arch)
    defaults = GENERATOR_DEFAULTS[args.generator]
    args.config = dataclasses.replace(args.config, **{k: v for k, v in defaults.items()
                                                      if getattr(args.config, k) is None})
    ds = ZooDataset(args.zoo, ("test_acc",), allow_modules=tuple(args.allow_module))
    common = Counter(ds.arch_keys).most_common(1)[0][0]
    data = _task_data(ds.members[ds.arch_keys.index(common)])
    if data is None and (arch is not None or args.recompute_batchnorm):
        raise ValueError("--arch and --recompute-batchnorm need a zoo of the built-in families (mlp, cnn, rescnn, "
                         "vit, moe)")
    out = Path(args.out)
    sample = _canonical_samples if args.generator == "canonical" else _gmn_samples
    arch = arch or json.loads(common)[0]
    module, example, graphs, trained = sample(args, ds, arch, data, out)
    if args.recompute_batchnorm:
        from ..weightspace.merging import recompute_batchnorm

        batches = [(x,) for x in data.x_train.split(128)]
        for g in graphs:
            g.model = module
        graphs = [recompute_batchnorm(g, batches) for g in graphs]
    report = []
    record = provenance(arch, ["gmn", *args.argv], [ds.zoo.root / FILENAME])
    for i, g in enumerate(graphs):
        name = write_model(module, converters.to_state_dict(g), out / f"generated-{i:03d}", example, args.onnx,
                           record)
        acc = None if data is None else _accuracy(module, g, converters.parameter_values(g), data)
        report.append({"file": name, "test_acc": acc, "arch": arch, **_nearest(g, ds, trained)})
    _report(out / "generated.json", report, "generated", data is not None)
    if args.target is not None and data is not None:
        print(target_note(args.target, [r["test_acc"] for r in report], ds.y[trained, 0]))
    return 0


def target_note(target: float, reached: list[float], trained: Tensor) -> str:
    """How far the samples' accuracy landed from the requested one, and whether the request lay
    outside the accuracies the generator was trained on (an extrapolation, which it rarely reaches)."""
    median = sorted(reached)[len(reached) // 2]
    lo, hi = float(trained.min()), float(trained.max())
    where = "inside" if lo <= target <= hi else "OUTSIDE"
    return (f"requested test accuracy {target:.4f}: samples' median {median:.4f} (gap {median - target:+.4f}); "
            f"{where} the training checkpoints' range {lo:.4f}-{hi:.4f}")


def _nearest(g, ds, members: list[int]) -> dict:
    """The training checkpoint closest to a sample, after aligning it to the sample (its
    permutation frame is arbitrary): ``|w - align(w, m)| / |w|``; a sample near one checkpoint
    is a copy, not a new model. None for an architecture the generator never trained on."""
    from ..weightspace.alignment import aligned_distance, same_template

    best: tuple[float, str] | None = None
    for i in members:
        member = ds.get(i)
        if not same_template(g, member):
            continue
        d = aligned_distance(g, member)
        if best is None or d < best[0]:
            best = (d, ds.members[i]["path"])
    if best is None:
        return {"nearest_training": None, "nearest_distance": None}
    return {"nearest_training": best[1], "nearest_distance": best[0]}


def _canonical_samples(args, ds, arch: dict, data, out: Path):
    """Align the zoo's checkpoints of ``arch`` to one frame, fit the flat flow, sample."""
    from ..tasks.canonical_generation import fit_canonical_generator

    keys = [k for k in dict.fromkeys(ds.arch_keys) if json.loads(k)[0] == arch]
    members = [i for i, k in enumerate(ds.arch_keys) if keys and k == keys[0]]
    if len(members) < 2:
        raise ValueError(f"the canonical generator writes architectures the zoo holds at least two checkpoints of; "
                         f"{json.dumps(arch)} has {len(members)} (use --generator gmn for other shapes)")
    state = _state_dir(out, args.zoo, args.config.__dict__, "canonical", keys[0])
    gen = fit_canonical_generator([ds.get(i) for i in members], ds.y[members, 0], args.config, out_dir=state)
    module, example = ds.arch_modules()[keys[0]]
    return module, example, gen.sample(args.count, steps=args.steps, target=args.target, guidance=args.guidance,
                                       seed=args.seed), members


def _gmn_samples(args, ds, arch: dict, data, out: Path):
    """The equivariant GMN flow over the whole zoo, sampled for ``arch`` (seen or not)."""
    from ..tasks.generation import fit_generator
    from ..zoo.families import build

    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))
    val, train = perm[: max(1, len(ds) // 10)], perm[max(1, len(ds) // 10):]
    state = _state_dir(out, args.zoo, args.config.__dict__)
    gen = fit_generator(ds, train, val, args.config, conditioned=True, out_dir=state).cpu()
    known = [k for k in dict.fromkeys(ds.arch_keys) if json.loads(k)[0] == arch]
    if known:
        module, example = ds.arch_modules()[known[0]]
        template = ds.templates[known[0]]
    else:
        module = build(arch, data.input_shape, data.classes).eval()
        example = data.x_test[:2]
        template = converters.from_torch(module, (example,))
    values = gen.sample(template, args.count, steps=args.steps, target=args.target, guidance=args.guidance,
                        seed=args.seed)
    return module, example, [converters.with_values(template, v) for v in values], train.tolist()


def _objective(args, ds, member):
    from ..tasks.editing import classifier_objective, dilation_objective

    if args.objective == "dilation":
        from ..zoo.inr import coordinates, mnist_images

        return dilation_objective(ds, mnist_images()[0]), coordinates(), None
    data = _task_data(member)
    if data is None:
        raise ValueError(f"objective {args.objective!r} needs a classifier zoo of the built-in families")
    pick = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(args.seed))[: args.inputs]
    if args.objective == "accuracy":
        return classifier_objective(data.y_train[pick]), data.x_train[pick], data
    if args.objective.startswith("forget:"):
        k = _forgotten(args.objective, data.classes)
        return classifier_objective(data.y_train[pick], k), data.x_train[pick], data
    raise ValueError(f"unknown objective {args.objective!r}; use accuracy, forget:K or dilation")


def _forgotten(objective: str, classes: int | None = None) -> int:
    """K of ``forget:K``, checked against the data's classes."""
    text = objective.split(":", 1)[1]
    if not text.isdigit() or (classes is not None and int(text) >= classes):
        raise ValueError(f"--objective {objective}: K must be a class of the zoo's data, 0 to {(classes or 10) - 1}")
    return int(text)


def _class_accuracies(module: nn.Module, graph, values: Tensor, data, k: int) -> dict[str, float]:
    """Test accuracy on class ``k`` and on every other class, for ``forget:K``."""
    from ..tasks.generation import predictions

    right = predictions(module, graph, values.unsqueeze(0), data.x_test)[0] == data.y_test
    mine = data.y_test == k
    return {f"class_{k}_acc": float(right[mine].float().mean()), "other_acc": float(right[~mine].float().mean())}


def _edit(args) -> int:
    from ..data import ZooDataset, split_by_run
    from ..tasks.editing import edit_members, fit_editor
    from .lora_weights import is_lora

    if is_lora(args.zoo):  # edited adapters written as PEFT adapter folders
        from .lora_weights import edit_adapters

        return edit_adapters(args)
    check_onnx_export(args.onnx)
    if args.objective not in ("accuracy", "dilation") and not args.objective.startswith("forget:"):
        raise ValueError(f"unknown objective {args.objective!r}; use accuracy, forget:K or dilation")
    if args.objective.startswith("forget:"):
        _forgotten(args.objective)
    ds = ZooDataset(args.zoo, targets=(), allow_modules=tuple(args.allow_module))  # an editor needs no targets
    objective, inputs, data = _objective(args, ds, ds.members[0])
    forget = _forgotten(args.objective, data.classes) if args.objective.startswith("forget:") else None
    split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=args.seed)
    out = Path(args.out)
    probes = inputs[: args.probes] if args.probes else None
    state = _state_dir(out, args.zoo, args.objective, args.scale, args.probes, args.inputs, args.config.__dict__)
    result = fit_editor(ds, split, objective, inputs, args.config, state, scale=args.scale, probes=probes)
    idx = split.test if args.members == "test" else torch.arange(len(ds))
    modules, report = ds.arch_modules(), []
    for i, values in zip(idx.tolist(), edit_members(result.editor, ds, idx)):
        member, graph = ds.members[i], ds[i]  # the member's graph: its own BatchNorm statistics
        module, example = modules[ds.arch_keys[i]]
        state = converters.to_state_dict(graph, values)
        name = f"{member['run_id']}-e{member['epoch']}"
        record = provenance(member["arch"], ["gmn", *args.argv], [ds.zoo.path(member)])
        written = write_model(module, state, out / "edited" / name, example, args.onnx, record)
        before = converters.to_state_dict(graph)
        report.append({"file": f"edited/{written}", "source": member["path"], "arch": member["arch"],
                       "objective_before": float(objective([torch.func.functional_call(module, before, (inputs,))],
                                                           torch.tensor([i]))),
                       "objective_after": float(objective([torch.func.functional_call(module, state, (inputs,))],
                                                          torch.tensor([i]))),
                       **({} if data is None else {"test_acc_before": _accuracy(module, graph, ds.values[i], data),
                                                   "test_acc_after": _accuracy(module, graph, values, data)})})
        if forget is not None:
            for when, v in (("before", ds.values[i]), ("after", values)):
                report[-1].update({f"{k}_{when}": a for k, a in _class_accuracies(module, graph, v, data,
                                                                                  forget).items()})
    _report(out / "edited.json", report, "edited", data is not None)
    return 0


def _report(path: Path, rows: list[dict], what: str, has_accuracy: bool, written: str = "checkpoints") -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    for r in rows[:20]:  # the architecture is in the JSON file: a Hugging Face config is no line
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "arch"))
    if has_accuracy:
        key = "test_acc_after" if "test_acc_after" in rows[0] else "test_acc"
        mean = sum(r[key] for r in rows) / len(rows)
        if "test_acc_before" in rows[0]:  # an edit: what it changed, not only where it ended
            before = sum(r["test_acc_before"] for r in rows) / len(rows)
            print(f"{len(rows)} {what} models, mean test accuracy {before:.4f} before, {mean:.4f} after")
        else:
            print(f"{len(rows)} {what} models, mean test accuracy {mean:.4f}")
        near = [r["nearest_distance"] for r in rows if r.get("nearest_distance") is not None]
        if near:
            print(f"  relative distance to the nearest training checkpoint (aligned): min {min(near):.4f}, "
                  f"median {sorted(near)[len(near) // 2]:.4f}")
        for k in (k for k in rows[0] if k.endswith("_before") and k.startswith(("class_", "other_"))):
            before, after = (sum(r[k.replace("_before", w)] for r in rows) / len(rows) for w in ("_before", "_after"))
            print(f"  mean {k.removesuffix('_before')}: {before:.4f} before, {after:.4f} after")
    print(f"wrote {len(rows)} {written} and {path}")
