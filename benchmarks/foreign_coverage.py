"""What the foreign-architecture suite (``tests/foreign``) converts, what it pins and why.

For every architecture nobody in this project wrote (Hugging Face families built offline from
configs, PEFT-wrapped models, classic PyTorch nets), perturbed as in the tests: whether it
converts (or the error it gets), graph size, how many hidden neurons are pinned, the share of
hidden neurons that move under 3 random symmetries, the largest float64 output change those
symmetries cause on the traced input and on 3 fresh ones (soundness: ~1e-16 unless the model
computes in float32 inside), and the ops whose pins remain. Prints a table and writes JSON.
``GMN_EXTENDED=1`` includes the slow routing variants.

    python benchmarks/foreign_coverage.py [--only gpt2 lstm] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

FOREIGN = Path(__file__).resolve().parents[1] / "tests" / "foreign"
sys.path.insert(0, str(FOREIGN))


def families() -> dict[str, str]:
    """Model name -> its section of the catalogue (decoders, encoders, vision, ...)."""
    out, section = {}, "?"
    for line in (FOREIGN / "catalogue.py").read_text().splitlines():
        if m := re.match(r"\s{4}# ([\w /-]+)$", line):
            section = m.group(1)
        elif m := re.match(r'\s{4}"(\w+)": \(', line):
            out.setdefault(m.group(1), section)
    return out


def measure(name: str, family: str) -> dict:
    import pytest
    from harness import fresh_inputs, rebuilt, rel_err, run
    from test_foreign import _build

    import converters
    from converters import NodeType
    from gmn import symmetry

    row = {"model": name, "family": family}
    try:
        model, x = _build(name)
        g = converters.from_torch(model, x)
    except converters.ConversionError as err:
        return {**row, "error": str(err)}
    except pytest.skip.Exception as why:  # the suite's own skips (configs this version cannot build)
        return {**row, "error": f"not built: {why}"}
    hidden = g.node_type == int(NodeType.HIDDEN)
    pinned = hidden & (g.node_index >= 0)
    y = run(model, x)
    moved, worst, fresh = torch.zeros_like(hidden), 0.0, 0.0
    for seed in range(3):
        g2, pi, _ = symmetry.random_symmetry(g, seed=seed, return_maps=True)
        other = rebuilt(model, g2)
        worst = max(worst, rel_err(run(other, x), y))
        inputs = fresh_inputs(x, seed)  # a symmetry holds for every input, not only the traced one
        fresh = max(fresh, rel_err(run(other, inputs), run(model, inputs)))
        moved |= pi != torch.arange(g.num_nodes)
    ops = Counter(reason.split(" in ")[0].split(":")[0] for reason in g.param_index.pins)
    return {**row, "edges": int(g.edge_index.size(1)), "hidden": int(hidden.sum()), "pinned": int(pinned.sum()),
            "moved": float((moved & hidden).sum() / hidden.sum().clamp(min=1)), "max_rel_change": worst,
            "fresh_rel_change": fresh, "pinned_by": dict(ops)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="model names (default: the whole suite)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    from catalogue import HF, PEFT
    from classic import CLASSIC

    warnings.filterwarnings("ignore")
    fam = families()
    names = [(n, fam.get(n, "?")) for n in HF] + [(n, "peft") for n in PEFT] + [(n, "classic torch") for n in CLASSIC]
    if args.only:
        names = [(n, f) for n, f in names if n in args.only]
    rows = [measure(n, f) for n, f in tqdm(names, desc="foreign models", unit="model")]
    lines = [f"{'family':>14} {'model':>30} {'edges':>9} {'hidden':>7} {'pinned':>7} {'moved':>6} "
             f"{'max change':>10} {'fresh':>8}  pinned by"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['family']:>14} {r['model']:>30}  refused: {r['error'][:150]}")
            continue
        why = ", ".join(f"{op} x{k}" for op, k in sorted(r["pinned_by"].items())) or "-"
        lines.append(f"{r['family']:>14} {r['model']:>30} {r['edges']:>9,} {r['hidden']:>7,} {r['pinned']:>7,} "
                     f"{r['moved']:>6.0%} {r['max_rel_change']:>10.1e} {r['fresh_rel_change']:>8.1e}  {why}")
    ok = [r for r in rows if "error" not in r]
    lines.append(f"\n{len(ok)} of {len(rows)} convert; {sum(r['pinned'] == 0 for r in ok)} with no hidden neuron "
                 f"pinned; largest symmetry output change {max((r['max_rel_change'] for r in ok), default=0):.1e} "
                 f"(traced input), {max((r['fresh_rel_change'] for r in ok), default=0):.1e} (fresh inputs)")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.only:
        (out / "foreign_coverage.txt").write_text(text + "\n")
        (out / "foreign_coverage.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
