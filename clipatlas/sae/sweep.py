"""Sweeps: a TOML grid expanded into one TrainConfig per combination.

name = "sweep"              # run names are NAME-<arch>-x<expansion>-k<k>-l1<l1>-lr<lr>
[base]                      # any TrainConfig field shared by every run
arch = "topk"
steps = 2000
[grid]                      # lists: every combination is trained
k = [16, 32, 64]
expansion = [8, 16]
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any

from clipatlas.errors import UserError
from clipatlas.sae.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

GRID_KEYS = ("arch", "k", "l1", "expansion", "lr")


def _run_name(prefix: str, combo: dict[str, Any]) -> str:
    return "-".join([prefix] + [f"{key}{combo[key]}" for key in GRID_KEYS if key in combo])


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> list[TrainConfig]:
    """TrainConfigs of every grid combination; `overrides` (command-line flags) apply to all."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read sweep file {path}: {exc}") from exc
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {**spec.get("base", {}), **(overrides or {})}
    grid = spec.get("grid", {})
    unknown = (set(base) | set(grid)) - known
    if unknown:
        raise UserError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    bad = [key for key in grid if key not in GRID_KEYS or not isinstance(grid[key], list) or not grid[key]]
    if bad:
        raise UserError(
            f"{path}: [grid] entries must be non-empty lists of {', '.join(GRID_KEYS)}; fix {', '.join(bad)}"
        )
    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[key] for key in keys)):
        combo = dict(zip(keys, values))
        configs.append(TrainConfig(**{**base, **combo, "name": _run_name(spec.get("name", path.stem), combo)}))
    return configs
