"""``gmn nearest``: the adapters of a LoRA zoo nearest to a query adapter, in the GL(r) canonical frame."""

from __future__ import annotations

from . import checks


def add_parsers(sub) -> None:
    p = sub.add_parser("nearest", help="the adapters of a LoRA zoo nearest to an adapter folder (distance of the "
                                       "weight updates |s B A - s' B' A'|, invariant to GL(r))")
    p.add_argument("zoo", help="a LoRA zoo (gmn zoo build --preset lora, or gmn zoo import ... --base)")
    p.add_argument("query", help="a PEFT adapter folder of the zoo's base")
    p.add_argument("-k", type=checks.positive_int, default=5, help="how many neighbours")
    p.set_defaults(handler=_nearest)


def _nearest(args) -> int:
    from ..zoo.lora import is_lora_zoo, nearest_adapters, zoo_targets

    if not is_lora_zoo(args.zoo):
        raise ValueError(f"{args.zoo}: not a LoRA zoo (no zoo.json of preset lora); build or import one first")
    found = nearest_adapters(args.zoo, args.query, args.k)
    targets = zoo_targets(args.zoo)
    print(f"{len(found)} adapters of {args.zoo} nearest to {args.query} (|dW|: Frobenius distance of the updates)")
    print(f"{'rank':>4}  {'|dW|':>10}  path  " + "  ".join(targets))
    for rank, (row, distance) in enumerate(found, start=1):
        print(f"{rank:>4}  {distance:>10.6g}  {row['path']}  " + "  ".join(f"{float(row[t]):.4g}" for t in targets))
    return 0
