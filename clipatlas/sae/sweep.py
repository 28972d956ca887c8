"""Sweeps: a TOML grid expanded into one TrainConfig per combination.

    name = "sweep"        # run names: NAME, then one part per [grid] key in file order:
                          #   arch -> its value, expansion -> x<value>, any other key -> <key><value>
                          #   e.g. sweep-topk-x8-k16
    [base]                # settings shared by every run: any `clipatlas train` flag, with _ for -
    steps = 2000
    [grid]                # lists: every combination is trained
    arch = ["topk", "batchtopk"]
    expansion = [8, 16]
    k = [16, 32]

Keys are the flat settings of `TrainConfig.from_settings`: `arch`, every architecture's
hyper-parameters (`k`, `l1`, `bandwidth`, ...) and the trainer's fields. Runs that share a data
stream (batch size, steps, seed) train together, each batch read once.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from clipatlas.errors import UserError
from clipatlas.sae.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def run_name(prefix: str, combo: dict[str, Any]) -> str:
    """NAME-<arch>-x<expansion>-<key><value>..., in the grid's key order."""
    parts = [prefix]
    for key, value in combo.items():
        text = format(value, "g") if isinstance(value, float) else str(value)
        parts.append(text if key == "arch" else f"x{text}" if key == "expansion" else f"{key}{text}")
    return "-".join(parts)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> list[TrainConfig]:
    """TrainConfigs of every grid combination; `overrides` (command-line flags) apply to all."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read sweep file {path}: {exc}") from exc
    overrides = overrides or {}
    grid = spec.get("grid", {})
    bad = sorted(key for key, values in grid.items() if not isinstance(values, list) or not values)
    if bad:
        raise UserError(f"{path}: [grid] entries are non-empty lists of values; fix {', '.join(bad)}")
    clash = sorted(set(grid) & set(overrides))
    if clash:
        raise UserError(f"{path} sweeps over {', '.join(clash)}; drop the flag(s) or the grid entry")
    base = {**spec.get("base", {}), **overrides}
    prefix = spec.get("name", path.stem)
    configs = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(grid, values))
        try:
            configs.append(TrainConfig.from_settings({**base, **combo, "name": run_name(prefix, combo)}))
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from exc
    return configs
