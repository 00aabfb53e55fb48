"""Is a generated adapter more than a (noisy) copy? Every training adapter of the zoo on every held-out task.

For each held-out angle of ``benchmarks/conditional_generation.py``, every adapter that trained the
generators is loaded from its own PEFT folder and scored on the task's rotated test digits; the best of
them (chosen with the test set: an upper bound of any retrieval, and of any noisy copy, since noise added
to an adapter does not raise its accuracy beyond the best adapter's) is put beside the methods' accuracies
of the same held-out tasks from ``conditional.json`` (the run that made them, same tasks, same split).

    python benchmarks/conditional_oracle.py --zoo /work/exp/lora/zoo   # conditional_oracle.{txt,json}
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import parse_with_out  # noqa: E402

METHODS = ("finetune", "retrieval", "task_arithmetic", "generated", "multitask_adapter", "hypernetwork")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="lora-zoo", help="the LoRA zoo of conditional.json")
    p.add_argument("--out", default="benchmarks/results/generation")
    args, out = parse_with_out(p)
    torch.set_num_threads(1)
    saved = json.loads((out / "conditional.json").read_text())
    summary, rows = saved["summary"], saved["rows"]
    oracle = best_training_adapters(args.zoo, summary, sorted({r["descriptor"] for r in rows}))
    command = "python benchmarks/conditional_oracle.py " + " ".join(sys.argv[1:])
    (out / "conditional_oracle.json").write_text(json.dumps({"command": command, "oracle": oracle}, indent=1))
    (out / "conditional_oracle.txt").write_text(table(oracle, rows, command))
    print((out / "conditional_oracle.txt").read_text())


def best_training_adapters(zoo: str, summary: dict, angles: list[float]) -> dict:
    """Per held-out angle: the accuracy of every training adapter (scored through its own folder), the
    best one's accuracy and angle."""
    import peft
    from tqdm.auto import tqdm

    from gmn.tasks.conditional import DescriptorSplit, Task
    from gmn.zoo.datasets import load
    from gmn.zoo.lora import _catalogue, zoo_base

    base, _ = zoo_base(zoo)
    data = load("digits")
    split = DescriptorSplit(tuple(summary["band"]), tuple(summary["train_range"]))
    catalogue = _catalogue(Path(zoo), ("angle",))
    train = split.train_indices(torch.tensor([float(r["angle"]) for r in catalogue]))
    tasks = [Task.rotated(data, a) for a in angles]
    scores = {a: [] for a in angles}
    for i in tqdm(train, desc="training adapters", unit="adapter"):
        model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(Path(zoo) / catalogue[i]["path"]))
        for task in tasks:
            scores[task.angle].append((task.accuracy(model), float(catalogue[i]["angle"])))
    return {str(a): {"best": max(s)[0], "best_angle": max(s)[1], "median": statistics.median(x for x, _ in s),
                     "adapters": len(s)} for a, s in scores.items()}


def table(oracle: dict, rows: list[dict], command: str) -> str:
    lines = [f"# {command}", "# best training adapter: every adapter that trained the generators, scored on the "
             "held-out task's test digits through its own PEFT folder, the best chosen with the test set (an upper "
             "bound of retrieval and of a noisy copy); methods: mean over seeds from conditional.json", "",
             f"{'angle':>7} {'kind':<14}{'best train':>11}{'(its angle)':>12}{'median':>8}"
             + "".join(f"{m[:15]:>16}" for m in METHODS)]
    for angle, o in oracle.items():
        at = [r for r in rows if r["descriptor"] == float(angle)]
        mean = {m: statistics.mean(r["accuracy"] for r in at if r["method"] == m) for m in METHODS}
        lines.append(f"{float(angle):>7.1f} {at[0]['held_out']:<14}{o['best']:>11.3f}{o['best_angle']:>12.1f}"
                     f"{o['median']:>8.3f}" + "".join(f"{mean[m]:>16.3f}" for m in METHODS))
    for kind in ("interpolation", "extrapolation"):
        keys = [a for a in oracle if any(r["held_out"] == kind and r["descriptor"] == float(a) for r in rows)]
        best = statistics.mean(oracle[a]["best"] for a in keys)
        hyper = statistics.mean(r["accuracy"] for r in rows if r["held_out"] == kind and r["method"] == "hypernetwork")
        lines.append(f"{kind}: best training adapter {best:.3f} (mean over tasks), hypernetwork {hyper:.3f}: "
                     f"{hyper / best:.3f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
