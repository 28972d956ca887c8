"""Honest SAE metrics over a whole evaluation set, accumulated in one streaming pass.

Three different "dead" counts exist, and each is named for what it measures, everywhere:
* dead in training: no activation in the last `dead_window` training inputs (the training bar);
* silent on N held-out rows: never active on the held-out set (`Metrics.silent_fraction`); with
  N x L0 < d_sae it is at least 1 - N x L0 / d_sae whatever the SAE (`silent_floor`), too few
  rows to tell a dead latent from a rare one;
* dead over the store: never active on any stored image (the atlas counts it).

fvu = sum of squared errors / sum of squared deviations from the eval set's per-dimension
mean (numerator and denominator summed over the whole set, not averaged per sample);
explained_variance = 1 - fvu (scikit-learn's variance-weighted explained variance score).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipatlas._io import SchemaError, atomic_path, atomic_write_json, read_json
from clipatlas.devices import resolve_device
from clipatlas.errors import UserError
from clipatlas.sae.config import EvalConfig
from clipatlas.workspace import Workspace

DENSE_THRESHOLD = 0.1  # a latent active on more than this fraction of inputs counts as dense


@dataclass(frozen=True)
class Metrics:
    n_samples: int
    fvu: float
    explained_variance: float
    l0: float
    silent_fraction: float  # latents active on none of the n_samples held-out rows
    dense_fraction: float
    cosine: float
    d_sae: int
    train_fvu: float | None = None  # on as many training rows, where the SAE was trained here

    def __post_init__(self):
        if abs(self.explained_variance - (1 - self.fvu)) > 1e-9:
            raise ValueError(
                f"inconsistent metrics: explained_variance {self.explained_variance} != 1 - fvu {self.fvu}"
            )
        if not (0 <= self.silent_fraction <= 1 and 0 <= self.dense_fraction <= 1 and 0 <= self.l0 <= self.d_sae):
            raise ValueError(f"inconsistent metrics: {self}")

    @property
    def silent_floor(self) -> float:
        """The silent fraction these rows force on any SAE: they activate at most n_samples x L0 latents."""
        return max(0.0, 1.0 - self.n_samples * self.l0 / self.d_sae)

    @property
    def too_few_rows(self) -> bool:
        """Whether the held-out set is too small to tell dead latents from rare ones."""
        return self.silent_floor > 0

    def silent_text(self) -> str:
        """The silent fraction with its name, and a warning when the rows cannot tell."""
        text = f"{self.silent_fraction:.1%} silent on all {self.n_samples:,} held-out rows"
        if self.too_few_rows:
            text += (
                f" (too few rows to tell: {self.n_samples:,} rows x L0 {self.l0:.1f} reach at most "
                f"{self.n_samples * self.l0:,.0f} of {self.d_sae:,} latents; the atlas counts dead over the store)"
            )
        return text

    def warnings(self) -> list[str]:
        """What these numbers say is wrong, each with what to change."""
        found = []
        if self.train_fvu is not None and self.fvu > max(1.5 * self.train_fvu, self.train_fvu + 0.1):
            found.append(
                f"held-out FVU {self.fvu:.3f} is much worse than on training rows ({self.train_fvu:.3f}): the SAE "
                "fits its training images far better than new ones; more images help most, or a smaller --expansion"
            )
        if self.too_few_rows:
            found.append(self.silent_text())
        return found

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "silent_floor": self.silent_floor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        """From a metrics.json (which also holds `sae`, `arch`, `schema_version`, `silent_floor`)."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING]
        if missing:
            raise SchemaError(
                f"metrics of SAE {data.get('sae')!r} lack {', '.join(missing)} (an older clipatlas wrote them); "
                "re-run: clipatlas eval"
            )
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class MetricsAccumulator:
    """Sums that make the metrics exact over any number of batches (float64 throughout)."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sse = 0.0
        self.sum_x = np.zeros(d_in)
        self.sum_x2 = np.zeros(d_in)
        self.active_count = np.zeros(d_sae, dtype=np.int64)
        self.l0_total = 0
        self.cosine_total = 0.0
        self.d_sae = d_sae

    def add(self, x: np.ndarray, x_hat: np.ndarray, active: np.ndarray) -> None:
        """x, x_hat: (B, d) raw scale; active: (B, d_sae) bool."""
        x = x.astype(np.float64)
        x_hat = x_hat.astype(np.float64)
        if not (np.isfinite(x).all() and np.isfinite(x_hat).all()):
            raise UserError(
                "NaN or infinite values in the evaluation inputs or reconstructions; "
                "check the store (clipatlas info) and retrain the SAE"
            )
        self.n += len(x)
        self.sse += float(((x - x_hat) ** 2).sum())
        self.sum_x += x.sum(axis=0)
        self.sum_x2 += (x**2).sum(axis=0)
        self.active_count += active.sum(axis=0)
        self.l0_total += int(active.sum())
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
        self.cosine_total += float(((x * x_hat).sum(axis=1) / np.maximum(norms, 1e-12)).sum())

    def result(self) -> Metrics:
        if self.n == 0:
            raise UserError("no evaluation samples; the store is empty")
        mean = self.sum_x / self.n
        sst = float((self.sum_x2 - self.n * mean**2).sum())
        fvu = self.sse / sst if sst > 0 else math.inf
        frequency = self.active_count / self.n
        return Metrics(
            n_samples=self.n,
            fvu=fvu,
            explained_variance=1 - fvu,
            l0=self.l0_total / self.n,
            silent_fraction=float((self.active_count == 0).mean()),
            dense_fraction=float((frequency > DENSE_THRESHOLD).mean()),
            cosine=self.cosine_total / self.n,
            d_sae=self.d_sae,
        )


@torch.no_grad()
def compute_metrics(sae, batches: Iterable[np.ndarray]) -> Metrics:
    """Metrics of `sae` over raw-scale input batches (each (B, d_in))."""
    acc = MetricsAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    for batch in batches:
        z = sae.encode(torch.as_tensor(batch))
        x_hat = sae.decode(z)
        acc.add(np.asarray(batch), x_hat.float().cpu().numpy(), (z != 0).cpu().numpy())
    return acc.result()


def training_split(cfg_json: dict[str, Any], n_store: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(training rows, held-out rows) of the SAE's training run; None for SAEs trained elsewhere."""
    from clipatlas.sae.training import split_rows

    training = cfg_json.get("training")
    if not training:
        return None
    if training.get("store_count") != n_store:
        raise UserError(
            f"the store now holds {n_store} rows but the SAE was trained when it held "
            f"{training.get('store_count')}; retrain the SAE to evaluate on a consistent split"
        )
    return split_rows(n_store, training["eval_fraction"], training["seed"])


def eval_rows(cfg_json: dict[str, Any], n_store: int) -> np.ndarray:
    """The rows held out when the SAE was trained; all rows for SAEs trained elsewhere."""
    split = training_split(cfg_json, n_store)
    return np.arange(n_store) if split is None else split[1]


def evaluate(workspace: str | Path | Workspace, name: str | None = None, config: EvalConfig | None = None) -> Metrics:
    """Evaluate SAE `name` on its held-out rows and write `metrics.json` beside it.

    For an SAE trained here, the FVU on as many training rows (`train_fvu`) is measured too:
    far below the held-out FVU, it says the SAE fits its training images better than new ones.
    """
    from clipatlas.sae.model import SAE
    from clipatlas.store import Store

    config = config or EvalConfig()
    files = Workspace.of(workspace).sae(name)
    sae = SAE.from_pretrained(files.dir, device=resolve_device(config.device)).eval()
    store = Store.open(Workspace.of(workspace).root)
    if store.d != sae.cfg.d_in:
        raise UserError(f"the store holds {store.d}-d embeddings but SAE {files.name!r} expects {sae.cfg.d_in}-d")

    def metrics_of(rows: np.ndarray) -> Metrics:
        step = config.batch_size
        return compute_metrics(sae, (store.rows(rows[i : i + step]) for i in range(0, len(rows), step)))

    split = training_split(read_json(files.config), len(store))
    if split is None:
        metrics = metrics_of(np.arange(len(store)))
    else:
        train_rows, held_out = split
        sample = np.random.default_rng(0).choice(train_rows, min(len(held_out), len(train_rows)), replace=False)
        metrics = dataclasses.replace(metrics_of(held_out), train_fvu=metrics_of(np.sort(sample)).fvu)
    atomic_write_json(files.metrics, {"sae": files.name, "arch": sae.cfg.arch, **metrics.to_dict()})
    return metrics


def read_all_metrics(ws: Workspace) -> dict[str, dict[str, Any]]:
    """metrics.json of every evaluated SAE in the workspace, by name."""
    files = [ws.sae(name) for name in ws.sae_names()]
    return {f.name: read_json(f.metrics) for f in files if f.metrics.is_file()}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (l0, fvu) points no other point beats on both, sorted by l0."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(ws: Workspace, out: Path | None = None) -> Path:
    """FVU against L0 for every evaluated SAE, with the Pareto front drawn; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_all_metrics(ws)
    if not metrics:
        raise UserError(f"no evaluated SAE in {ws.root}; run: clipatlas eval -w {ws.root}")
    names = list(metrics)
    points = [(metrics[n]["l0"], metrics[n]["fvu"]) for n in names]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (l0, fvu) in zip(names, points):
        ax.scatter(l0, fvu, s=24)
        ax.annotate(
            f"{name} ({metrics[name]['arch']})", (l0, fvu), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("L0 (mean active latents per input)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title(f"SAEs of {ws.root.name}")
    ax.legend()
    fig.tight_layout()
    out = out or ws.saes_dir / "pareto.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out
