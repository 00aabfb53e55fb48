"""``gmn generate`` and ``gmn edit`` on a LoRA zoo: new adapters written as PEFT adapter folders.

The zoo's adapters of its most common layout are put in the GL(r) canonical frame
(``gmn.lora.canonical_values``: balanced SVD, which also fixes the rank order), where the canonical
flow generator learns their flattened factors, or the hypernetwork (a built zoo) learns the map from
a task's angle to its adapter (``gmn.tasks.adapter_hypernetwork``); each adapter is written with
``adapters.to_peft`` (the zoo's ``adapter_config.json`` verbatim, every tensor in its dtype), a folder
``peft.PeftModel.from_pretrained(base, folder)`` loads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path

from converters.files import atomic_write


def is_lora(zoo: str | None) -> bool:
    """Whether ``zoo`` is a LoRA zoo (built or imported)."""
    from ..zoo.lora import is_lora_zoo

    return bool(zoo) and Path(zoo).is_dir() and is_lora_zoo(zoo)


def generate_outputs(args) -> tuple[list[Path], list[Path], list]:
    """What ``gmn generate`` writes on a LoRA zoo: ``generated.json`` and one folder per sample."""
    from .weights import sample_count

    out = Path(args.out)
    return [out / "generated.json"], [out / f"generated-{i:03d}" for i in range(sample_count(args))], []


def generate_adapters(args) -> int:
    """Fit the canonical generator (or the hypernetwork) on the zoo's canonical adapters and write
    ``--count`` adapter folders (the hypernetwork: the adapter for ``--target``)."""
    from converters import to_peft

    from .. import lora
    from ..tasks.canonical_generation import fit_canonical_generator
    from ..zoo.lora import AdapterDataset
    from .weights import GENERATOR_DEFAULTS, _state_dir

    given = [o for o, on in (("--onnx", args.onnx), ("--recompute-batchnorm", args.recompute_batchnorm),
                             ("--arch", args.arch)) if on]
    if given:
        raise ValueError(f"{given[0]} does not apply to a LoRA zoo: its samples are PEFT adapter folders of its base")
    if args.generator == "gmn":
        raise ValueError("on a LoRA zoo the generator is canonical (the GL(r) frame) or hypernetwork; --generator gmn "
                         "samples the zoo families' models")
    args.config = dataclasses.replace(args.config, **{k: v for k, v in GENERATOR_DEFAULTS[args.generator].items()
                                                      if getattr(args.config, k) is None})
    if args.generator == "hypernetwork":
        return _hypernetwork_adapter(args)
    ds = AdapterDataset(args.zoo, canonical=True)
    layout, members = _common_layout(ds, args.zoo)
    out = Path(args.out)
    state = _state_dir(out, args.zoo, args.config.__dict__, "lora-canonical", layout)
    graphs = [ds.get(i) for i in members]
    gen = fit_canonical_generator(graphs, ds.y[members, 0], args.config, aligned=True, out_dir=state)
    samples = gen.sample(args.count, steps=args.steps, target=args.target, guidance=args.guidance, seed=args.seed)
    report = []
    for i, g in enumerate(samples):
        folder = out / f"generated-{i:03d}"
        to_peft(g, None, folder, overwrite=args.force)
        (j, distance), = lora.nearest(g, graphs, k=1)  # the update's distance: GL(r)-invariant
        report.append({"folder": folder.name, "conditioned_on": ds.target_names[0], "target": args.target,
                       "nearest_training": ds.rows[members[j]]["path"], "nearest_distance": distance})
        print(f"{folder.name}: nearest training adapter {report[-1]['nearest_training']} at |dW| {distance:.4g}")
    atomic_write(out / "generated.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"wrote {len(samples)} PEFT adapter folders (PeftModel.from_pretrained(base, folder) loads each) and "
          f"{out / 'generated.json'}")
    return 0


def _common_layout(ds, zoo: str) -> tuple[str, list[int]]:
    """The zoo's most common adapter layout (names and shapes) and its members, at least two."""
    layout = Counter(ds.arch_keys).most_common(1)[0][0]
    members = [i for i, k in enumerate(ds.arch_keys) if k == layout]
    if len(members) < 2:
        raise ValueError(f"{zoo}: the generator needs at least two adapters of one layout; the most common has "
                         f"{len(members)}")
    return layout, members


def _hypernetwork_adapter(args) -> int:
    """Train the hypernetwork on a built zoo's adapters and their tasks, and write the adapter for
    ``--target`` with its accuracy on that task's test images (the zoo's digits rotated by it)."""
    import peft
    import torch

    import converters
    from converters import to_peft

    from .. import lora
    from ..tasks.adapter_hypernetwork import fit_adapter_hypernetwork
    from ..tasks.lora_editing import AdapterTasks
    from ..zoo.datasets import load
    from ..zoo.lora import AdapterDataset, _accuracy, rotate, zoo_base, zoo_settings
    from .weights import _state_dir

    settings = zoo_settings(args.zoo)
    if settings.get("imported"):
        raise ValueError(f"{args.zoo} is an imported LoRA zoo: its adapters' tasks are not known to gmn, so the "
                         "hypernetwork has no task loss to learn from (use --generator canonical)")
    if args.target is None:
        raise ValueError("--generator hypernetwork needs --target: the angle of the task to write an adapter for")
    if not -180.0 <= args.target <= 180.0:
        raise ValueError(f"--target {args.target:g}: a built LoRA zoo's task is a rotation angle in degrees, "
                         "between -180 and 180")
    if args.count != 1:
        raise ValueError(f"--count {args.count}: the hypernetwork is deterministic, it writes one adapter per --target")
    base, example = zoo_base(args.zoo)
    ds = AdapterDataset(args.zoo, targets=("angle",), canonical=True, base=base, example_inputs=example)
    layout, members = _common_layout(ds, args.zoo)
    angles = ds.y[members, 0]
    data = load(settings.get("dataset", "digits"))
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(Path(args.zoo) / ds.rows[members[0]]["path"]))
    out = Path(args.out)
    state = _state_dir(out, args.zoo, args.config.__dict__, "lora-hypernetwork", layout)
    graphs = [ds.get(i) for i in members]
    net = fit_adapter_hypernetwork(graphs[0], torch.stack([ds.values[i] for i in members]), angles,
                                   AdapterTasks(angles, data), model, args.config, out_dir=state)
    g, = net.adapters([args.target])
    if not torch.isfinite(converters.parameter_values(g)).all():  # never a folder PEFT would load as garbage
        raise ValueError(f"--target {args.target:g}: the hypernetwork's adapter is not finite; nothing written")
    folder = out / "generated-000"
    to_peft(g, None, folder, overwrite=args.force)
    adapter = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder))  # scored as a user loads it
    (j, distance), = lora.nearest(g, graphs, k=1)
    report = [{"folder": folder.name, "conditioned_on": "angle", "target": args.target,
               "test_acc": _accuracy(adapter.eval(), rotate(data.x_test, args.target), data.y_test),
               "nearest_training": ds.rows[members[j]]["path"], "nearest_distance": distance}]
    atomic_write(out / "generated.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    lo, hi = float(angles.min()), float(angles.max())
    where = ("inside" if lo <= args.target <= hi else "OUTSIDE (an extrapolation: weaker, see "
             "benchmarks/results/generation/conditional.txt)")
    print(f"{folder.name}: angle {args.target:g}, test accuracy on its rotated digits {report[0]['test_acc']:.4f}; "
          f"nearest training adapter {report[0]['nearest_training']} at |dW| {distance:.4g}; the angle is {where} the "
          f"training adapters' range {lo:.1f} to {hi:.1f}")
    print(f"wrote 1 PEFT adapter folder (PeftModel.from_pretrained(base, folder) loads it) and "
          f"{out / 'generated.json'}")
    return 0


def edit_adapters(args) -> int:
    """Train an adapter editor on a built LoRA zoo (objective: each adapter's accuracy on its own task) and
    write the edited adapters as PEFT folders, with their test accuracy before and after."""
    import peft
    import torch

    from converters import to_peft

    from ..data import split_by_run
    from ..tasks.lora_editing import AdapterTasks, fit_adapter_editor
    from ..zoo.datasets import load
    from ..zoo.lora import AdapterDataset, _accuracy, zoo_base, zoo_settings
    from .weights import _report, _state_dir

    given = [o for o, on in (("--onnx", args.onnx), ("--probes", args.probes)) if on]
    if given:
        raise ValueError(f"{given[0]} does not apply to a LoRA zoo: its edits are PEFT adapter folders of its base")
    if args.objective != "accuracy":
        raise ValueError(f"--objective {args.objective}: on a LoRA zoo the objective is accuracy (each adapter on "
                         "its own task)")
    settings = zoo_settings(args.zoo)
    if settings.get("imported"):
        raise ValueError(f"{args.zoo} is an imported LoRA zoo: its adapters' tasks are not known to gmn, so there "
                         "is no objective to edit for (a built zoo's adapters each have a rotated-digits task)")
    base, example = zoo_base(args.zoo)  # loaded once: the dataset reads the adapters against it
    ds = AdapterDataset(args.zoo, targets=("angle",), base=base, example_inputs=example)
    tasks = AdapterTasks(ds.y[:, 0], load(settings.get("dataset", "digits")))
    root = Path(args.zoo)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(root / ds.rows[0]["path"]))  # PEFT wraps in place
    split = split_by_run(ds.run, ds.family, fractions=(0.1, 0.2), seed=args.seed)
    out = Path(args.out)
    state = _state_dir(out, args.zoo, "lora", args.objective, args.scale, args.inputs, args.config.__dict__)
    result = fit_adapter_editor(ds, split, tasks, model, args.config, images=args.inputs, scale=args.scale,
                                out_dir=state)
    idx = split.test if args.members == "test" else torch.arange(len(ds))
    report = []
    with torch.no_grad():
        for i in idx.tolist():
            g = ds.get(i)
            values = result.editor(g)
            folder = out / "edited" / Path(ds.rows[i]["path"]).name
            to_peft(g, values, folder, overwrite=True)
            x, y = tasks.test(i)
            edited = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
            source = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(root / ds.rows[i]["path"])).eval()
            report.append({"folder": f"edited/{folder.name}", "source": ds.rows[i]["path"],
                           "angle": float(ds.y[i, 0]), "test_acc_before": _accuracy(source, x, y),
                           "test_acc_after": _accuracy(edited, x, y)})
    _report(out / "edited.json", report, "edited adapter", True, written="PEFT adapter folders")
    return 0


__all__ = ["edit_adapters", "generate_adapters", "generate_outputs", "is_lora"]
