"""``gmn generate`` on a LoRA zoo: new adapters written as PEFT adapter folders.

The zoo's adapters of its most common layout are put in the GL(r) canonical frame
(``gmn.lora.canonical_values``: balanced SVD, which also fixes the rank order), where the canonical
flow generator learns their flattened factors; each sample is written with ``adapters.to_peft`` (the
zoo's ``adapter_config.json`` verbatim, every tensor in its dtype), a folder
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
    out = Path(args.out)
    return [out / "generated.json"], [out / f"generated-{i:03d}" for i in range(args.count)], []


def generate_adapters(args, defaults: dict) -> int:
    """Fit the canonical generator on the zoo's canonical adapters and write ``--count`` adapter folders."""
    from converters import to_peft

    from .. import lora
    from ..tasks.canonical_generation import fit_canonical_generator
    from ..zoo.lora import AdapterDataset
    from .weights import _state_dir

    given = [o for o, on in (("--onnx", args.onnx), ("--recompute-batchnorm", args.recompute_batchnorm),
                             ("--arch", args.arch)) if on]
    if given:
        raise ValueError(f"{given[0]} does not apply to a LoRA zoo: its samples are PEFT adapter folders of its base")
    if args.generator != "canonical":
        raise ValueError("on a LoRA zoo the generator is canonical (the GL(r) frame); --generator gmn samples the zoo "
                         "families' models")
    args.config = dataclasses.replace(args.config, **{k: v for k, v in defaults.items()
                                                      if getattr(args.config, k) is None})
    ds = AdapterDataset(args.zoo, canonical=True)
    layout = Counter(ds.arch_keys).most_common(1)[0][0]
    members = [i for i, k in enumerate(ds.arch_keys) if k == layout]
    if len(members) < 2:
        raise ValueError(f"{args.zoo}: the generator needs at least two adapters of one layout; the most common has "
                         f"{len(members)}")
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
