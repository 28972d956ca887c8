"""`clipatlas evaluate`: which sections and baselines to run, and how (import-light: no torch)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from clipatlas.errors import UserError

SECTIONS = ("reconstruction", "fidelity", "probing", "purity", "stability", "interpretability", "steering")
BASELINES = ("pca", "pca-width", "kmeans", "random", "raw")
# Settings that change how a run goes, not its numbers.
RUN_CONDITIONS = ("suite", "compare", "train_stability", "batch_size", "device")


def _names(value: Any, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """A tuple of names from a tuple or a comma-separated string; `all` is every known one, `none` none."""
    if isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    value = tuple(value)
    if value == ("all",):
        return known
    if value in ((), ("none",)):
        return ()
    unknown = [v for v in value if v not in known]
    if unknown:
        raise UserError(f"{flag}: unknown {', '.join(unknown)}; choose from all, none, {', '.join(known)}")
    return tuple(v for v in known if v in value)


def _ints(value: Any, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise UserError(f"{flag} takes comma-separated whole numbers, got {value!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes whole numbers of at least 1, got {value!r}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class EvaluateConfig:
    """The vision SAE suite: its sections, its baselines, and the rows they use."""

    suite: tuple[str, ...] = SECTIONS
    """Sections to run, comma-separated: reconstruction, fidelity, probing, purity, stability,
    interpretability, steering (or all)."""
    baselines: tuple[str, ...] = BASELINES
    """Baselines coded by the same code beside each SAE, comma-separated: pca, pca-width, kmeans, random, raw
    (or all, none)."""
    label_column: str | None = None
    """Store metadata column holding each image's class (default: `label` where the store has it)."""
    compare: bool = False
    """Also put every evaluated SAE and its baselines side by side in one table, with Pareto plots
    (FVU and probe F1 against L0) in W/eval/."""
    train_stability: bool = False
    """Stability: when no evaluated or stored SAE differs from this one only by its seed, train one that does."""
    max_train_rows: int = 20_000
    """Training rows (a seeded sample) that fit the baselines and the probes and enter purity; every
    held-out row is always used."""
    probe_ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Sizes of the sparse probes: logistic regression on the k latents best at telling a class apart."""
    purity_k: int = 16
    """Purity@k: the top k images of each latent."""
    min_class_rows: int = 5
    """Probe a class only when it has at least this many training rows (and 2 held-out rows)."""
    kmeans_iters: int = 3
    """Iterations of Lloyd's algorithm for the k-means baseline (scikit-learn KMeans, random initial centroids)."""
    seed: int = 0
    """Seed of the training-row sample, the random dictionary and the k-means initialisation."""
    batch_size: int = 4096
    """Rows per model call."""
    device: str = "auto"
    """cpu, cuda[:N], or auto (the GPU when there is one)."""

    def __post_init__(self):
        object.__setattr__(self, "suite", _names(self.suite, SECTIONS, "--suite"))
        object.__setattr__(self, "baselines", _names(self.baselines, BASELINES, "--baselines"))
        object.__setattr__(self, "probe_ks", _ints(self.probe_ks, "--probe-ks"))
        for name in ("max_train_rows", "purity_k", "min_class_rows", "kmeans_iters", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.suite:
            raise UserError(f"--suite names no section; choose from all, {', '.join(SECTIONS)}")

    def identity(self) -> dict[str, Any]:
        """What the numbers depend on: a re-run with an equal identity reuses finished sections."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUN_CONDITIONS}
        return json.loads(json.dumps(settings))
