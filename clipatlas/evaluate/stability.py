"""Stability: does training again with another seed find the same directions?

Two dictionaries of the same kind are matched one to one by the Hungarian algorithm on the cosine
of their directions (`scipy.optimize.linear_sum_assignment`, maximising the total cosine): the SAE
and another trained like it with another seed (an evaluated `--name` pair, any such SAE of the
workspace, or one that `--train-stability` trains), and each baseline and the same baseline fit
with the next seed on that other SAE's training rows. Reported: the mean matched cosine and the
share of matched pairs above 0.7. PCA directions are defined up to sign, so PCA matches |cosine|.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from clipatlas._io import read_json
from clipatlas.errors import UserError
from clipatlas.workspace import SAEFiles, Workspace

THRESHOLD = 0.7
HIST_BINS = 20
MATCH_BLOCK = 2048  # rows of the cosine matrix computed at once


def match_directions(a: np.ndarray, b: np.ndarray, sign_free: bool = False) -> np.ndarray:
    """Cosines of the Hungarian matching of the rows of `a` to the rows of `b` (unit rows), one per
    row of the smaller; the matching maximises their sum (|cosine| where `sign_free`)."""
    from scipy.optimize import linear_sum_assignment

    # The solver works in float64 and would negate a copy to maximise: the negated costs are written
    # into one float64 array block by block, so the matching holds one (n x n) array, not three.
    cost = np.empty((len(a), len(b)))
    b_t = torch.from_numpy(np.ascontiguousarray(b, np.float32)).T
    for start in range(0, len(a), MATCH_BLOCK):
        block = torch.from_numpy(np.ascontiguousarray(a[start : start + MATCH_BLOCK], np.float32)) @ b_t
        cost[start : start + MATCH_BLOCK] = -(block.abs_() if sign_free else block).numpy()
    rows, cols = linear_sum_assignment(cost)
    return -cost[rows, cols]


def summarise(matched: np.ndarray, partner: str) -> dict[str, Any]:
    counts, _ = np.histogram(np.clip(matched, -1, 1), bins=HIST_BINS, range=(-1, 1))
    return {
        "partner": partner,
        "matched": len(matched),
        "mean_cosine": float(matched.mean()),
        "share_above_0.7": float((matched > THRESHOLD).mean()),
        "hist": counts.tolist(),
    }


def match_all(
    pairs: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, bool]]], threads: int
) -> dict[str, np.ndarray]:
    """`match_directions` of every pair, each made by its callable (a refit) inside the same task:
    threads overlap one pair's fit with another's matching (the solver releases the GIL)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {name: pool.submit(lambda make=make: match_directions(*make())) for name, make in pairs.items()}
        return {name: future.result() for name, future in futures.items()}


# -- the second SAE --------------------------------------------------------------------------------
def _training(files: SAEFiles):
    from clipatlas.sae import TrainConfig

    training = read_json(files.config).get("training")
    try:
        return TrainConfig.from_dict(training) if training else None
    except UserError:  # written by an older clipatlas: its settings cannot be rebuilt
        return None


def _same_but_seed(a, b) -> bool:
    def strip(cfg):
        return {k: v for k, v in cfg.identity().items() if k not in ("name", "seed")}

    return a.seed != b.seed and strip(a) == strip(b)


def find_partner(ws: Workspace, name: str, evaluated: list[str]) -> SAEFiles | None:
    """An SAE trained like `name` but with another seed: among the evaluated SAEs first, then the
    workspace's others (such as one `train_partner` made before)."""
    mine = _training(ws.sae(name))
    if mine is None:
        return None
    for other in dict.fromkeys([*evaluated, *ws.sae_names(hidden=True)]):
        if other != name:
            theirs = _training(ws.sae(other))
            if theirs is not None and _same_but_seed(mine, theirs):
                return ws.sae(other)
    return None


def train_partner(ws: Workspace, name: str) -> SAEFiles:
    """Train (or reuse) `.NAME-seedS`: the SAE `name` again with the next seed. Resumes like `train`."""
    from clipatlas.sae import train

    mine = _training(ws.sae(name))
    if mine is None:
        raise UserError(
            f"SAE {name!r} has no training settings this clipatlas can rebuild (trained elsewhere or by an older "
            "version), so it cannot be trained again with another seed; evaluate it with --name beside an SAE "
            "trained like it"
        )
    # Hidden (a leading "."): the partner must not make `name` stop being the workspace's one SAE.
    partner = dataclasses.replace(mine, name=f".{name}-seed{mine.seed + 1}", seed=mine.seed + 1)
    return SAEFiles(train(ws, partner))
