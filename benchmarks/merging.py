"""Align and merge pairs of models trained from different seeds: the loss and accuracy barrier of
the midpoint path, for naive averaging, gmn weight matching, gmn activation matching (each with
and without REPAIR; BatchNorm networks always get their statistics recomputed, which is REPAIR
for them), beside two peers on the same pairs in the same process: a hand-written Git Re-Basin
permutation spec (weight matching, the paper's algorithm, written here for the MLP, VGG and
ResNet-20 cases) and the ``rebasin`` package (automatic specs from a torchview trace) when it is
installed. Data: scikit-learn's digits (images; their pixels as 8-level tokens for the GPT).

    python benchmarks/merging.py                    # full run (~20 min on 2 cores)
    python benchmarks/merging.py --quick            # x1 widths, fewer epochs
    python benchmarks/merging.py --resnet50         # also time aligning a ResNet-50-sized pair

Writes ``benchmarks/results/merging/merging.{txt,json,png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from tqdm import tqdm

import converters
from gmn.architectures import ResNet50, TinyTransformer, ViT
from gmn.weightspace import merging
from gmn.weightspace.alignment import align
from gmn.zoo import datasets
from gmn.zoo.families import MLPNet

OUT = Path(__file__).parent / "results" / "merging"


# ---- models -------------------------------------------------------------------------------

class VGG(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        w = 16 * k
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.classifier = nn.Linear(2 * w * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "bn" else nn.GroupNorm(1, c)  # GroupNorm(1, C): LayerNorm over (C, H, W)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(norm, cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(norm, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet20(nn.Module):
    """ResNet-20 (3 stages of 3 basic blocks, widths 16k/32k/64k), as in Git Re-Basin."""

    def __init__(self, k: int, norm: str):
        super().__init__()
        w = 16 * k
        self.conv, self.norm = nn.Conv2d(1, w, 3, 1, 1, bias=False), _norm(norm, w)
        blocks, cin = [], w
        for stage, cout in enumerate((w, 2 * w, 4 * w)):
            for i in range(3):
                blocks.append(Block(cin, cout, 2 if stage and i == 0 else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, 10)

    def forward(self, x):
        return self.head(self.blocks(F.relu(self.norm(self.conv(x)))).mean((2, 3)))


class GPT(nn.Module):
    """A small causal transformer over pixel tokens (the ``TinyTransformer`` blocks, causal)."""

    def __init__(self, k: int):
        super().__init__()
        self.net = TinyTransformer(vocab=8, dim=32 * k, depth=2, heads=4, mlp=64 * k, max_len=64)

    def forward(self, tokens):
        return self.net(tokens)


# ---- the hand-written Git Re-Basin peer ---------------------------------------------------

def mlp_spec(model: MLPNet) -> dict[str, tuple]:
    spec, prev = {}, None
    for i in range(len(model.layers)):
        spec[f"layers.{i}.weight"] = (f"P{i}", prev)
        spec[f"layers.{i}.bias"] = (f"P{i}",)
        prev = f"P{i}"
    spec["head.weight"] = (None, prev)
    return spec


def vgg_spec(model: VGG) -> dict[str, tuple]:
    spec, prev = {}, None
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            spec[f"features.{i}.weight"] = (f"P{i}", prev, None, None)
            spec[f"features.{i}.bias"] = (f"P{i}",)
            prev = f"P{i}"
    spec["classifier.weight"] = (None, prev, None)  # viewed as (10, C, 4): flattened channels x positions
    return spec


def resnet_spec(model: ResNet20) -> dict[str, tuple]:
    def norm(name, p):
        return {f"{name}.{k}": (p,) for k in ("weight", "bias", "running_mean", "running_var")}

    stream = "S0"
    spec = {"conv.weight": (stream, None, None, None), **norm("norm", stream)}
    for i, block in enumerate(model.blocks):
        inner = f"B{i}"
        out = f"S{i}" if block.shortcut is not None else stream
        spec[f"blocks.{i}.conv1.weight"] = (inner, stream, None, None)
        spec.update(norm(f"blocks.{i}.norm1", inner))
        spec[f"blocks.{i}.conv2.weight"] = (out, inner, None, None)
        spec.update(norm(f"blocks.{i}.norm2", out))
        if block.shortcut is not None:
            spec[f"blocks.{i}.shortcut.0.weight"] = (out, stream, None, None)
            spec.update(norm(f"blocks.{i}.shortcut.1", out))
        stream = out
    spec["head.weight"] = (None, stream)
    return spec


def _views(state: dict, spec: dict) -> dict:
    out = {}
    for name, axes in spec.items():
        if name not in state:
            continue
        t = state[name].double()
        out[name] = t.view(t.shape[0], -1, 4) if len(axes) == 3 and t.dim() == 2 else t  # 2x2 positions
    return out


def _permuted(t, axes, perms, skip=None):
    for axis, p in enumerate(axes):
        if p is not None and axis != skip:
            t = t.index_select(axis, perms[p])
    return t


def spec_weight_matching(spec: dict, state_a: dict, state_b: dict, iterations: int = 100, seed: int = 0) -> dict:
    """Ainsworth et al.'s weight matching over a hand-written permutation spec."""
    a, b = _views(state_a, spec), _views(state_b, spec)
    sizes = {}
    for name, axes in spec.items():
        for axis, p in enumerate(axes):
            if p is not None and name in a:
                sizes[p] = a[name].shape[axis]
    perms = {p: torch.arange(n) for p, n in sizes.items()}
    users = {p: [(name, axis) for name, axes in spec.items() if name in a
                 for axis, q in enumerate(axes) if q == p and "running" not in name] for p in sizes}
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        progress = False
        for p in rng.permutation(list(sizes)):  # the groups in the order the model first uses them
            n = sizes[p]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in users[p]:
                wa = a[name].movedim(axis, 0).reshape(n, -1)
                wb = _permuted(b[name], spec[name], perms, skip=axis).movedim(axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            cols = torch.as_tensor(cols)
            old = cost[torch.arange(n), perms[p]].sum()
            new = cost[torch.arange(n), cols].sum()
            if new > old + 1e-12:
                perms[p], progress = cols, True
        if not progress:
            break
    out = {}
    for name, t in state_b.items():
        if name in spec:
            v = _views({name: t}, {name: spec[name]})[name].to(t.dtype)
            out[name] = _permuted(v, spec[name], perms).reshape(t.shape)
        else:
            out[name] = t
    return out


def rebasin_package(model_a: nn.Module, model_b: nn.Module, example) -> nn.Module:
    from rebasin import PermutationCoordinateDescent

    model_b = copy.deepcopy(model_b)
    PermutationCoordinateDescent(copy.deepcopy(model_a), model_b, example).rebasin()
    return model_b


# ---- training and measuring ---------------------------------------------------------------

def _tokens(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    levels = torch.bucketize(flat, torch.quantile(flat, torch.linspace(0, 1, 9)[1:-1]))
    return levels.long()


def task(kind: str):
    d = datasets.load("digits")
    if kind == "gpt":
        tr, te = _tokens(d.x_train), _tokens(d.x_test)
        return tr[:, :-1], tr[:, 1:], te[:, :-1], te[:, 1:]
    return d.x_train, d.y_train, d.x_test, d.y_test


def build(kind: str, k: int) -> nn.Module:
    if kind == "mlp":
        return MLPNet(64, 10, 3, 128 * k, "relu", 0.0)
    if kind == "vgg":
        return VGG(k)
    if kind in ("resnet20_bn", "resnet20_ln"):
        return ResNet20(k, kind[-2:])
    if kind == "vit":
        return ViT(image=8, patch=2, channels=1, dim=32 * k, depth=2, heads=4, mlp=64 * k, classes=10)
    if kind == "gpt":
        return GPT(k)
    raise ValueError(kind)


def train(kind: str, k: int, seed: int, epochs: int) -> nn.Module:
    x, y, _, _ = task(kind)
    torch.manual_seed(seed)
    model = build(kind, k)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=gen).split(64):
            logits = model(x[batch])
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[batch].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


#: random orders of coordinate descent each of gmn and the spec are run in (the same seeds)
ORDERS = 8
SPECS = {"mlp": mlp_spec, "vgg": vgg_spec, "resnet20_bn": resnet_spec, "resnet20_ln": resnet_spec}


def measure(kind: str, k: int, epochs: int, points: int, use_rebasin: bool) -> dict:
    x, y, xt, yt = task(kind)
    a, b = train(kind, k, 0, epochs), train(kind, k, 1, epochs)
    example = (x[:2],)
    ga, gb = converters.from_torch(a, example), converters.from_torch(b, example)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in a.modules())
    batches = [(xb,) for xb in x[:512].split(128)] if has_bn else None
    inputs = (x[:512],)
    aligned, seconds = {"naive": gb}, {}
    start = time.perf_counter()
    aligned["gmn weights"] = align(ga, gb)
    seconds["gmn weights"] = time.perf_counter() - start  # cold: the structure's analysis included
    start = time.perf_counter()
    align(ga, gb)
    seconds["gmn weights, structure cached"] = time.perf_counter() - start  # a zoo's second pair
    start = time.perf_counter()
    aligned["gmn activations"] = align(ga, gb, inputs=inputs)
    seconds["gmn activations"] = time.perf_counter() - start
    if kind in SPECS:
        start = time.perf_counter()
        state = spec_weight_matching(SPECS[kind](a), a.state_dict(), b.state_dict())
        seconds["spec (Git Re-Basin)"] = time.perf_counter() - start
        peer = copy.deepcopy(b)
        peer.load_state_dict(state)
        aligned["spec (Git Re-Basin)"] = converters.from_torch(peer, example)
    if use_rebasin:
        try:
            start = time.perf_counter()
            peer = rebasin_package(a, b, x[:8])
            seconds["rebasin package"] = time.perf_counter() - start
            aligned["rebasin package"] = converters.from_torch(peer, example)
        except Exception as err:  # noqa: BLE001 - a peer that fails is reported, not fatal
            seconds["rebasin package"] = f"failed: {type(err).__name__}: {str(err)[:120]}"
    with torch.no_grad():
        reference = converters.functional_call(gb, None, xt).double()
        change = {name: float((converters.functional_call(g, None, xt).double() - reference).abs().max()
                              / reference.abs().max()) for name, g in aligned.items()}
    orders = {}  # the barrier over several orders of coordinate descent, gmn and the spec alike
    if kind in SPECS:
        for seed in range(ORDERS):
            peer = copy.deepcopy(b)
            peer.load_state_dict(spec_weight_matching(SPECS[kind](a), a.state_dict(), b.state_dict(), seed=seed))
            for name, g in (("gmn weights", align(ga, gb, seed=seed)),
                            ("spec (Git Re-Basin)", converters.from_torch(peer, example))):
                path = merging.interpolation_path(ga, g, xt, yt, points, batches, None)
                orders.setdefault(name, []).append(merging.barrier(path)["loss"])
    rows = {}
    for name, g in aligned.items():
        for repaired in (False, True) if not has_bn else (True,):
            path = merging.interpolation_path(ga, g, xt, yt, points, batches, inputs if repaired and not has_bn
                                              else None)
            bar = merging.barrier(path)
            label = name + (" + REPAIR" if repaired and not has_bn else "")
            rows[label] = {"loss_barrier": bar["loss"], "accuracy_barrier": bar["accuracy"], "path": path}
    ends = merging.evaluate(ga, xt, yt), merging.evaluate(gb, xt, yt)
    return {"model": kind, "width": k, "params": int(ga.num_param_edges), "batchnorm": has_bn,
            "endpoints": {"a": ends[0], "b": ends[1]}, "seconds": seconds, "function_change": change, "rows": rows,
            "orders": orders}


def resnet50_pair() -> dict:
    torch.manual_seed(0)
    a = ResNet50(width=64, classes=1000).eval()
    torch.manual_seed(1)
    b = ResNet50(width=64, classes=1000).eval()
    x = (torch.randn(1, 3, 32, 32),)
    ga, gb = converters.from_torch(a, x), converters.from_torch(b, x)
    start = time.perf_counter()
    align(ga, gb)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    align(ga, gb)
    return {"params": int(ga.num_param_edges), "align_seconds": cold, "cached_seconds": time.perf_counter() - start}


def table(results: list[dict], big: dict | None) -> str:
    lines = ["Barriers of the midpoint path on digits test (loss barrier / accuracy barrier; lower is better).",
             "BatchNorm networks: statistics recomputed at every point (REPAIR's correction for them).", ""]
    for r in results:
        (la, aa), (lb, ab) = r["endpoints"]["a"], r["endpoints"]["b"]
        lines.append(f"{r['model']} x{r['width']} ({r['params']:,} params; endpoints acc {aa:.3f} / {ab:.3f}, "
                     f"loss {la:.3f} / {lb:.3f})")
        for name, row in r["rows"].items():
            t = r["seconds"].get(name.replace(" + REPAIR", ""))
            when = f"{t:8.2f} s" if isinstance(t, float) else ("" if t is None else f"  {t}")
            lines.append(f"  {name:<32}{row['loss_barrier']:>9.4f}{row['accuracy_barrier']:>9.4f}  {when}")
        for name, c in r["function_change"].items():
            if c > 1e-4:
                lines.append(f"  ! {name} changed model B's outputs by {c:.2e} (relative): barrier not comparable")
        cached = r["seconds"].get("gmn weights, structure cached")
        if cached is not None:
            lines.append(f"  gmn weights with the structure's analysis cached (a zoo's later pairs): {cached:.2f} s")
        for name, losses in r.get("orders", {}).items():
            lines.append(f"  {name}, {len(losses)} orders of coordinate descent: loss barrier mean "
                         f"{sum(losses) / len(losses):.4f} "
                         f"(min {min(losses):.4f}, max {max(losses):.4f})")
        failed = {k: v for k, v in r["seconds"].items() if isinstance(v, str)}
        for name, why in failed.items():
            lines.append(f"  {name:<32}{why}")
        lines.append("")
    if big:
        lines.append(f"ResNet-50-sized pair ({big['params']:,} params): gmn weight matching in "
                     f"{big['align_seconds']:.1f} s ({big['cached_seconds']:.1f} s with the structure's analysis "
                     "cached)")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for r in results for n in r["rows"]}, key=lambda n: (n.replace(" + REPAIR", ""), n))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(results)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [r["rows"].get(name, {}).get("loss_barrier", np.nan) for r in results]
        ax.bar(np.arange(len(results)) + i * width, ys, width, label=name)
    ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{r['model']}\nx{r['width']}" for r in results])
    ax.set_ylabel("test-loss barrier")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,vgg,resnet20_bn,resnet20_ln,vit,gpt")
    p.add_argument("--widths", default="1,4")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--quick", action="store_true", help="x1 widths, 6 epochs, 5 points")
    p.add_argument("--resnet50", action="store_true", help="also time aligning a ResNet-50-sized pair")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    if args.quick:
        args.widths, args.epochs, args.points = "1", 6, 5
    try:
        import rebasin  # noqa: F401
        use_rebasin = True
    except ImportError:
        use_rebasin = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, int(k)) for k in args.widths.split(",") for m in args.models.split(",")]
    results = []
    for kind, k in tqdm(jobs, desc="pairs"):
        results.append(measure(kind, k, args.epochs, args.points, use_rebasin))
    big = resnet50_pair() if args.resnet50 else None
    text = table(results, big)
    print(text)
    (out / "merging.txt").write_text(text + "\n")
    (out / "merging.json").write_text(json.dumps({"results": results, "resnet50": big}, indent=1))
    plot(results, out / "merging.png")


if __name__ == "__main__":
    main()
