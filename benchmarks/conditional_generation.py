"""Weights for tasks nobody trained on: the conditional generator against fine-tuning (issue 38).

On the LoRA zoo (``gmn.zoo.lora``: one digits CNN, adapters each trained on digits rotated by an
angle), angles are held out of training: a band inside the range (interpolation) and the ends
beyond it (extrapolation). The conditional flow generator is trained on the rest, in the GL(r)
canonical frame and on the raw factors; for each held-out angle, in one run, every method's
adapter is written as a PEFT folder, loaded with ``PeftModel.from_pretrained`` and scored on that
angle's rotated test digits, against fine-tuning a fresh adapter with the zoo's recipe
(``gmn.tasks.conditional`` has the parts). Compute is training seconds (one thread, evaluation
excluded) over the reference fine-tuning's; the generator's own training is reported apart
(amortised over every task it serves).

    python benchmarks/conditional_generation.py --zoo /work/exp/lora/zoo
    # benchmarks/results/generation/conditional.{json,txt,png}
    python benchmarks/conditional_generation.py --report-only   # the table and plot again from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import parse_with_out  # noqa: E402

KS = (1, 10, 100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="lora-zoo", help="a built LoRA zoo (gmn zoo build DIR --preset lora)")
    p.add_argument("--band", type=float, nargs=2, default=(20.0, 45.0), help="interpolation band held out")
    p.add_argument("--range", type=float, nargs=2, default=(-75.0, 75.0), help="training range of angles")
    p.add_argument("--interpolation", type=float, nargs="+", default=(25.0, 30.0, 35.0, 40.0))
    p.add_argument("--extrapolation", type=float, nargs="+", default=(-85.0, 85.0))
    p.add_argument("--samples", type=int, default=4, help="generated adapters per task (accuracy: their mean)")
    p.add_argument("--epochs", type=int, default=40, help="generator epochs of 50 steps (gmn generate's default)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1: generator, fine-tuning and sampling")
    p.add_argument("--out", default="benchmarks/results/generation")
    p.add_argument("--report-only", action="store_true", help="rewrite the table and plot from conditional.json")
    args, out = parse_with_out(p)
    if args.report_only:  # the measurements stay those of the run that made them, and its command
        saved = json.loads((out / "conditional.json").read_text())
        rows, summary, command = saved["rows"], saved["summary"], saved["command"]
    else:
        torch.set_num_threads(1)  # timings comparable across methods on a shared machine
        rows, summary = run(args)
        command = "python benchmarks/conditional_generation.py " + " ".join(sys.argv[1:])
        (out / "conditional.json").write_text(json.dumps({"command": command, "summary": summary, "rows": rows},
                                                         indent=1))
    (out / "conditional.txt").write_text(table(rows, summary, command))
    plot(rows, out / "conditional.png")
    print((out / "conditional.txt").read_text())


def run(args) -> tuple[list[dict], dict]:
    import copy

    import peft
    from tqdm.auto import tqdm

    from gmn import lora
    from gmn.tasks.conditional import DescriptorSplit, Task, reference_steps
    from gmn.tasks.lora_editing import AdapterTasks
    from gmn.zoo.datasets import load
    from gmn.zoo.lora import AdapterDataset, zoo_base, zoo_settings

    settings = zoo_settings(args.zoo)
    base, _ = zoo_base(args.zoo)
    data = load(settings["dataset"])
    raw, canon = AdapterDataset(args.zoo, canonical=False), AdapterDataset(args.zoo, canonical=True)
    split = DescriptorSplit(tuple(args.band), tuple(args.range))
    tasks = [*args.interpolation, *args.extrapolation]
    kinds = split.check(tasks)
    train = split.train_indices(raw.y[:, 0])
    zoo = {"raw": [raw.get(i) for i in train], "canonical": [canon.get(i) for i in train],
           "canonical_values": [canon.values[i] for i in train], "raw_values": [raw.values[i] for i in train],
           "angles": raw.y[train, 0], "settings": settings}
    means = shared_means(zoo)
    neighbours = neighbour_distances(zoo, lora)
    norms = [update_norm(g) for g in zoo["raw"]]
    ref_steps = reference_steps(len(data.y_train), settings["epochs"])
    tasks_of_training = AdapterTasks(zoo["angles"], data)  # the training adapters' own tasks
    peft_base = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(Path(args.zoo) / raw.rows[0]["path"]))
    rows, fit_seconds = [], {}
    for seed in range(args.seeds):
        generators = {name: fit(zoo[frame], zoo["angles"], seed, args.epochs)
                      for name, frame in (("generated", "canonical"), ("generated_raw", "raw"))}
        hypernetworks = {name: fit_hypernetwork(zoo, frame, tasks_of_training, peft_base, seed, *how)
                         for name, frame, *how in HYPERNETWORKS}
        fit_seconds[seed] = {k: g.fit_seconds for k, g in {**generators, **hypernetworks}.items()}
        with tempfile.TemporaryDirectory() as work:
            for angle, kind in tqdm(list(zip(tasks, kinds)), desc=f"held-out tasks, seed {seed}", unit="task"):
                task = Task.rotated(data, angle)
                rows += task_rows(task, kind, base, zoo, generators, hypernetworks, means, ref_steps, seed, args,
                                  Path(work))
    summary = {"zoo": str(args.zoo), "train_adapters": len(train), "held_out_adapters": len(raw) - len(train),
               "band": list(args.band), "train_range": list(args.range), "reference_steps": ref_steps,
               "seeds": args.seeds, "generator_fit_seconds": fit_seconds,
               "neighbour_distance_median": statistics.median(neighbours),
               "neighbour_distance_quartiles": statistics.quantiles(neighbours, n=4),
               "training_update_norm_median": statistics.median(norms),
               "compute": "training seconds (1 thread; evaluation and file writing excluded) over the reference "
                          "fine-tuning's; generator training excluded (generator_fit_seconds, amortised)"}
    return rows, summary


def fit(graphs: list, angles: torch.Tensor, seed: int, epochs: int):
    """The conditional flow generator on ``graphs``, as ``gmn generate --target`` fits it on a LoRA zoo."""
    from gmn.tasks.canonical_generation import fit_canonical_generator
    from gmn.tasks.property import TrainConfig

    config = TrainConfig(epochs=epochs, patience=epochs, lr=1e-3, batch_size=64, hidden=512, layers=3,
                         weight_decay=0.0, seed=seed)
    return fit_canonical_generator(graphs, angles, config, aligned=True)


#: (method, frame, trained with the task loss, conditioned on the angle): the hypernetwork, its raw-factor
#: variant, the zoo alone (no task loss), and one adapter for all training tasks (no descriptor)
HYPERNETWORKS = (("hypernetwork", "canonical", True, True), ("hypernetwork_raw", "raw", True, True),
                 ("hypernetwork_zoo_only", "canonical", False, True), ("multitask_adapter", "canonical", True, False))


def fit_hypernetwork(zoo: dict, frame: str, tasks, peft_base, seed: int, task_loss: bool, conditioned: bool):
    """The descriptor-to-adapter hypernetwork on the training adapters (``gmn generate --generator
    hypernetwork``'s settings), in ``frame``; with ``task_loss`` also trained on their tasks' images;
    not ``conditioned``: one adapter for all of them."""
    import dataclasses

    from gmn.tasks.adapter_hypernetwork import HYPERNETWORK_CONFIG, fit_adapter_hypernetwork

    config = dataclasses.replace(HYPERNETWORK_CONFIG, seed=seed)
    return fit_adapter_hypernetwork(zoo[frame][0], torch.stack(zoo[f"{frame}_values"]), zoo["angles"], tasks,
                                    peft_base, config, task_loss=task_loss, conditioned=conditioned, progress=False)


def shared_means(zoo: dict) -> dict:
    """The two task-independent baselines, each with the seconds it took to make."""
    from gmn import lora
    from gmn.tasks.conditional import canonical_mean

    start = time.perf_counter()
    products, _ = lora.merge(zoo["raw"], [1.0 / len(zoo["raw"])] * len(zoo["raw"]))
    middle = time.perf_counter()
    factors = canonical_mean(zoo["canonical"], zoo["canonical_values"])
    return {"mean_products": (products, middle - start), "mean_canonical": (factors, time.perf_counter() - middle)}


def update_norm(g) -> float:
    """``|s B A|`` over the adapter's modules: the size of its update, to read distances against."""
    import converters
    from gmn import lora

    zero = converters.with_values(g, torch.zeros_like(converters.parameter_values(g)))
    return float(lora.product_distances(g, [zero])[0])


def neighbour_distances(zoo: dict, lora) -> list[float]:
    """Update distances between training adapters adjacent in angle: the spacing a new one is judged by."""
    order = zoo["angles"].argsort().tolist()
    return [float(lora.product_distances(zoo["raw"][i], [zoo["raw"][j]])[0]) for i, j in zip(order, order[1:])]


def task_rows(task, kind: str, base, zoo: dict, generators: dict, hypernetworks: dict, means: dict,
              ref_steps: int, seed: int, args, work: Path) -> list[dict]:
    """Every method's row on one held-out task."""
    from gmn.tasks.conditional import finetune_curve, fresh_adapter

    cfg = zoo["settings"]
    steps = max(ref_steps, max(KS))
    curve = finetune_curve(fresh_adapter(base, cfg["rank"], cfg["alpha"], cfg["targets"], seed), task, steps, seed)
    ref = {"accuracy": curve.accuracy[ref_steps], "seconds": curve.seconds[ref_steps], "steps": ref_steps,
           "steps_to_reference": curve.steps_to(curve.accuracy[ref_steps])}

    def row(method: str, accuracy: float, seconds: float, steps: int = 0, **extra) -> dict:
        return {"method": method, "descriptor": task.angle, "held_out": kind, "seed": seed, "accuracy": accuracy,
                "finetuned_accuracy": ref["accuracy"], "accuracy_ratio": accuracy / ref["accuracy"],
                "compute_ratio": seconds / ref["seconds"], "steps": steps, "seconds": seconds, **extra}

    rows = [row("finetune", ref["accuracy"], ref["seconds"], ref_steps, curve=curve.accuracy,
                steps_to_reference=ref["steps_to_reference"])]
    rows += [row(f"finetune_k{k}", curve.accuracy[k], curve.seconds[k], k) for k in KS]
    rows += baseline_rows(task, base, zoo, means, work, row)
    for name, gen in generators.items():
        start = time.perf_counter()
        samples = gen.sample(args.samples, steps=20, target=task.angle, guidance=2.0, seed=seed)  # gmn generate's
        seconds = (time.perf_counter() - start) / args.samples  # per adapter
        rows += generated_rows(name, samples, seconds, task, base, zoo, ref, seed, work, row)
    for name, net in hypernetworks.items():
        start = time.perf_counter()
        adapter = net.adapters([task.angle])
        rows += generated_rows(name, adapter, time.perf_counter() - start, task, base, zoo, ref, seed, work, row)
    return rows


def baseline_rows(task, base, zoo: dict, means: dict, work: Path, row) -> list[dict]:
    """Retrieval, the two means and task arithmetic, each scored through its PEFT folder."""
    from gmn import lora
    from gmn.tasks.conditional import load_adapter, nearest_descriptor, neighbour_weights

    start = time.perf_counter()
    j = nearest_descriptor(zoo["angles"], task.angle)
    seconds = time.perf_counter() - start
    rows = [row("retrieval", task.accuracy(load_adapter(zoo["raw"][j], base, work / "retrieval")), seconds,
                neighbour=float(zoo["angles"][j]))]
    for name, (graph, seconds) in means.items():
        rows.append(row(name, task.accuracy(load_adapter(graph, base, work / name)), seconds))
    start = time.perf_counter()
    pair = neighbour_weights(zoo["angles"], task.angle)
    merged, _ = lora.merge([zoo["raw"][i] for i, _ in pair], [w for _, w in pair])
    seconds = time.perf_counter() - start
    rows.append(row("task_arithmetic", task.accuracy(load_adapter(merged, base, work / "ta")), seconds,
                    neighbours=[[float(zoo["angles"][i]), w] for i, w in pair]))
    return rows


def generated_rows(name: str, samples: list, seconds: float, task, base, zoo: dict, ref: dict, seed: int,
                   work: Path, row) -> list[dict]:
    """A generator's adapters for the task's angle (made in ``seconds`` each), scored with no training,
    then k steps of fine-tuning from the first."""
    from gmn import lora
    from gmn.tasks.conditional import finetune_curve, load_adapter

    accuracies = [task.accuracy(load_adapter(g, base, work / f"{name}-{i}")) for i, g in enumerate(samples)]
    # distance of the update to the nearest training adapter's (GL(r)-invariant; no frame needed)
    nearest = [lora.nearest(g, zoo["raw"], k=1)[0] for g in samples]
    rows = [row(name, statistics.mean(accuracies), seconds, sample_accuracies=accuracies,
                nearest_distance=[d for _, d in nearest], update_norm=[update_norm(g) for g in samples],
                nearest_angle=[float(zoo["angles"][i]) for i, _ in nearest])]
    model = load_adapter(samples[0], base, work / f"{name}-train", trainable=True)
    curve = finetune_curve(model, task, max(KS), seed)
    reached = curve.steps_to(ref["accuracy"])
    rows += [row(f"{name}_k{k}", curve.accuracy[k], seconds + curve.seconds[k], k) for k in KS]
    rows[-1].update(curve=curve.accuracy, steps_to_reference=reached,
                    steps_ratio_to_reference=None if reached is None else reached / max(ref["steps_to_reference"], 1))
    return rows


GENERATORS = ("generated", "generated_raw", "hypernetwork", "hypernetwork_raw", "hypernetwork_zoo_only",
              "multitask_adapter")
ORDER = ("finetune", "finetune_k1", "finetune_k10", "finetune_k100", "retrieval", "mean_products", "mean_canonical",
         "task_arithmetic", *(f"{g}{k}" for g in GENERATORS for k in ("", "_k1", "_k10", "_k100")))


def grouped(rows: list[dict], kind: str) -> dict[str, list[dict]]:
    return {m: [r for r in rows if r["method"] == m and r["held_out"] == kind] for m in ORDER}


def _mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def _seed_spread(rows: list[dict], key: str) -> float:
    """The standard deviation over seeds of the per-seed means (0 with one seed)."""
    per_seed = [_mean([r for r in rows if r["seed"] == s], key) for s in sorted({r["seed"] for r in rows})]
    return statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


def table(rows: list[dict], summary: dict, command: str) -> str:
    lines = [f"# {command}", f"# zoo {summary['zoo']}: {summary['train_adapters']} training adapters, "
             f"{summary['held_out_adapters']} held out (band {summary['band']}, range {summary['train_range']}); "
             f"reference = {summary['reference_steps']} steps of fine-tuning from PEFT's default init; "
             f"{summary['seeds']} seed(s)", f"# compute: {summary['compute']}",
             f"# generator training seconds per seed: {summary['generator_fit_seconds']}", ""]
    for kind in ("interpolation", "extrapolation"):
        lines.append(f"{kind}: mean over tasks {sorted({r['descriptor'] for r in rows if r['held_out'] == kind})} "
                     f"and seeds (sd: of the per-seed means)")
        lines.append(f"{'method':<20}{'accuracy':>10}{'x finetuned':>13}{'sd':>7}{'compute':>11}{'steps':>7}")
        for method, group in grouped(rows, kind).items():
            if group:
                lines.append(f"{method:<20}{_mean(group, 'accuracy'):>10.3f}{_mean(group, 'accuracy_ratio'):>13.3f}"
                             f"{_seed_spread(group, 'accuracy_ratio'):>7.3f}{_mean(group, 'compute_ratio'):>11.2e}"
                             f"{group[0]['steps']:>7}")
        lines.append("")
    return "\n".join(lines + targets(rows) + per_task(rows) + novelty(rows, summary)) + "\n"


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets on interpolated tasks, each said as met or missed, for the flow generator and
    the hypernetwork (both in the canonical frame)."""
    at = grouped(rows, "interpolation")
    ret, ta = (_mean(at[m], "accuracy") for m in ("retrieval", "task_arithmetic"))
    said = {True: "met", False: "MISSED"}
    lines = ["targets (interpolation):"]
    for method in ("generated", "hypernetwork"):
        acc, ratio = _mean(at[method], "accuracy"), _mean(at[method], "accuracy_ratio")
        compute = _mean(at[method], "compute_ratio")
        steps = [r["steps_ratio_to_reference"] for r in at[f"{method}_k100"]]
        steps_mean = statistics.mean(1.0 if s is None else s for s in steps)  # never reached: no saving, counted 1
        lines += [f"  {method}:",
                  f"    >= 0.90 x fine-tuned accuracy: {ratio:.3f} -> {said[ratio >= 0.9]}",
                  f"    compute <= 1/100 of fine-tuning's: {compute:.4f} -> {said[compute <= 0.01]}",
                  f"    beats retrieval ({ret:.3f}) and task arithmetic ({ta:.3f}): {acc:.3f} -> "
                  f"{said[acc > max(ret, ta)]}",
                  f"    fine-tuning from it reaches the reference in <= 1/10 of the steps from default init: "
                  f"{steps_mean:.3f} of them (never reached: {steps.count(None)}) -> {said[steps_mean <= 0.1]}"]
    return lines + [""]


def per_task(rows: list[dict]) -> list[str]:
    methods = ("finetune", "retrieval", "task_arithmetic", "mean_products", "generated", "generated_raw",
               "hypernetwork", "hypernetwork_raw", "hypernetwork_zoo_only", "multitask_adapter")
    lines = ["per task, mean over seeds: accuracy (finetune) and x finetuned (others); steps to the reference "
             "accuracy from the generated init per seed (from default init in brackets)",
             f"{'angle':>7} {'kind':<14}" + "".join(f"{m[:15]:>16}" for m in methods)
             + "  steps: generated; hypernetwork (default init)"]
    for angle in dict.fromkeys(r["descriptor"] for r in rows):
        at = {m: [r for r in rows if r["descriptor"] == angle and r["method"] == m] for m in ORDER}
        cells = [f"{_mean(at['finetune'], 'accuracy'):>16.3f}"]
        cells += [f"{_mean(at[m], 'accuracy_ratio'):>16.3f}" for m in methods[1:]]
        reached = [[r["steps_to_reference"] for r in at[f"{g}_k100"]] for g in ("generated", "hypernetwork")]
        default = [r["steps_to_reference"] for r in at["finetune"]]
        lines.append(f"{angle:>7.1f} {at['finetune'][0]['held_out']:<14}" + "".join(cells)
                     + f"  {reached[0]}; {reached[1]} ({default})")
    return lines + [""]


def novelty(rows: list[dict], summary: dict) -> list[str]:
    lines = [f"novelty: |dW| (update distance) of each generated adapter to its nearest training adapter (angle); "
             f"training adapters adjacent in angle are {summary['neighbour_distance_median']:.3f} apart (median; "
             "quartiles " + ", ".join(f"{q:.3f}" for q in summary["neighbour_distance_quartiles"]) + "); a training "
             f"adapter's own update |dW| is {summary['training_update_norm_median']:.3f} (median)"]
    for kind in ("interpolation", "extrapolation"):
        for method in GENERATORS:
            group = grouped(rows, kind)[method]
            distances = [d for r in group for d in r["nearest_distance"]]
            first = statistics.mean(r["sample_accuracies"][0] / r["finetuned_accuracy"] for r in group)
            norm = statistics.median(n for r in group for n in r["update_norm"])
            lines.append(f"  {kind:<14}{method:<22} nearest |dW| median {statistics.median(distances):.3f} "
                         f"(max {max(distances):.3f}), its own |dW| median {norm:.3f}; the first sample, which the "
                         f"k-step rows start from: {first:.3f} x finetuned")
    for r in rows:
        if r["method"] in GENERATORS:
            lines.append(f"{r['method']:<22}{r['descriptor']:>7.1f} seed {r['seed']}: "
                         + ", ".join(f"{d:.3f} ({a:.1f})" for d, a in zip(r["nearest_distance"], r["nearest_angle"])))
    return lines


SERIES = {"fine-tuning from default init (k, 63, 100 steps)": ("finetune_k1", "finetune_k10", "finetune",
                                                                  "finetune_k100"),
          "generated, canonical frame (+0, 1, 10, 100 steps)": ("generated", "generated_k1", "generated_k10",
                                                                "generated_k100"),
          "generated, raw factors (+0, 1, 10, 100 steps)": ("generated_raw", "generated_raw_k1", "generated_raw_k10",
                                                            "generated_raw_k100"),
          "hypernetwork, canonical frame (+0, 1, 10, 100 steps)": ("hypernetwork", "hypernetwork_k1",
                                                                   "hypernetwork_k10", "hypernetwork_k100")}
POINTS = ("retrieval", "task_arithmetic", "mean_products", "mean_canonical", "hypernetwork_raw",
          "hypernetwork_zoo_only", "multitask_adapter")


def _point(group: list[dict]) -> tuple[float, float]:
    """(compute, accuracy) of a method, compute at least 1e-6 for the log axis (retrieval is ~0)."""
    return max(_mean(group, "compute_ratio"), 1e-6), _mean(group, "accuracy")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, kind in zip(axes, ("interpolation", "extrapolation")):
        at = grouped(rows, kind)
        for label, methods in SERIES.items():
            xs, ys = zip(*(_point(at[m]) for m in methods))
            ax.plot(xs, ys, "o-", label=label)
        for method in POINTS:
            x, y = _point(at[method])
            ax.scatter(x, y, marker="s", color="0.3")
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("compute / fine-tuning's (training seconds; generator training excluded)")
        ax.set_title(f"held-out angles: {kind}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on the held-out task (mean over tasks and seeds)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
