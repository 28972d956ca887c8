"""Training defaults against a small sweep, on a store of the user's own size.

    .venv/bin/python bench/defaults.py -w WORKSPACE [--quick]

Trains the SAE `clipatlas train -w WORKSPACE` would train (every setting derived from the store's
size), then a small sweep around it, and prints, for each: the settings, held-out FVU, FVU on as
many training rows, L0 and the share of latents dead over the whole store. The defaults pass when
their held-out FVU is within 20% of the sweep's best and fewer than 30% of their latents are dead
over the store (issue 18).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipatlas.sae import SAE, EvalConfig, TrainConfig, evaluate, train  # noqa: E402
from clipatlas.store import Store  # noqa: E402
from clipatlas.workspace import Workspace  # noqa: E402

SWEEP = [
    {"expansion": 2, "epochs": 25},
    {"expansion": 2, "epochs": 50},
    {"expansion": 4, "epochs": 50},
    {"batch_size": 128},
    {"epochs": 100},
    {"k": 32},
    {"lr": 4e-4},
]


def dead_over_store(ws: Workspace, name: str, store: Store) -> float:
    sae = SAE.from_pretrained(ws.sae(name).dir).eval()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for _, batch in store.iter_batches(4096):
            fired |= (sae.encode(torch.from_numpy(batch)) > 0).any(dim=0)
    return float(1 - fired.float().mean())


def run(ws: Workspace, store: Store, name: str, settings: dict) -> dict:
    started = time.perf_counter()
    cfg = TrainConfig.from_settings({"name": name, **settings})
    train(ws, cfg)
    metrics = evaluate(ws, name, EvalConfig())
    trained = json.loads(ws.sae(name).config.read_text())["training"]
    return {
        "name": name,
        "settings": {k: trained[k] for k in ("batch_size", "epochs", "expansion", "lr")}
        | {"k": trained["sae"].get("k")},
        "fvu": metrics.fvu,
        "train_fvu": metrics.train_fvu,
        "l0": metrics.l0,
        "dead_over_store": dead_over_store(ws, name, store),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="only the defaults and the first two sweep points")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ws = Workspace(args.workspace)
    store = Store.open(ws.root)
    rows = [run(ws, store, "defaults", {})]
    for i, change in enumerate(SWEEP[:2] if args.quick else SWEEP):
        rows.append(run(ws, store, f"sweep{i}", change))
    best = min(r["fvu"] for r in rows)
    print("| run | batch | epochs | expansion | k | lr | held-out FVU | training-rows FVU | L0 | dead over store |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["settings"]
        print(
            f"| {r['name']} | {s['batch_size']} | {s['epochs']:g} | {s['expansion']:g} | {s['k']} | {s['lr']:g} "
            f"| {r['fvu']:.3f} | {r['train_fvu']:.3f} | {r['l0']:.1f} | {r['dead_over_store']:.1%} |"
        )
    defaults = rows[0]
    passed = defaults["fvu"] <= 1.2 * best and defaults["dead_over_store"] < 0.3
    print(
        f"\ndefaults: held-out FVU {defaults['fvu']:.3f} vs best {best:.3f} ({defaults['fvu'] / best - 1:+.0%}), "
        f"{defaults['dead_over_store']:.1%} dead over the store: {'PASS' if passed else 'FAIL'} "
        f"(store {len(store):,} rows, {np.mean([r['seconds'] for r in rows]):.0f} s per run)"
    )


if __name__ == "__main__":
    main()
