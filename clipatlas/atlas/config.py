"""The atlas build's settings (import-light: the command line makes its flags from them)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from clipatlas.errors import UserError

FEATURE_SELECTION = re.compile(r"^(all|alive|top:[1-9]\d*|\d+(-\d+)?(\s*,\s*\d+(-\d+)?)*)$")
FEATURE_SELECTION_HELP = "all, alive, top:N (the N most frequent alive features) or ids and ranges (1,5,10-20)"


def check_feature_selection(spec: str) -> str:
    """`spec` stripped, or a UserError: a `--features` value is all, alive, top:N or ids and ranges."""
    spec = spec.strip().strip(",")
    if not FEATURE_SELECTION.match(spec):
        raise UserError(f"--features takes {FEATURE_SELECTION_HELP}; got {spec!r}")
    return spec


@dataclass(frozen=True)
class AtlasConfig:
    top_k: int = 32
    """Top images kept per feature."""
    per_decile: int = 3
    """Sample images per tenth of a feature's activation range."""
    n_coactivating: int = 16
    """Coactivating features listed per feature."""
    n_similar: int = 16
    """Nearest features (by decoder and by encoder cosine) listed per feature."""
    codes_per_image: int = 64
    """Strongest features kept per image (image pages, coactivation)."""
    chunk_size: int = 4096
    """Store rows per encoder call."""
    map_method: Literal["umap", "pca"] = "umap"
    """2-D layout of the features."""
    device: str = "auto"
    """Torch device of the pass: cpu, cuda[:N], or auto (the GPU when there is one)."""
    thumbnails: bool = True
    """Make webp thumbnails of the example images."""
    checkpoint_seconds: float = 30.0
    """Save the pass's progress at most this often."""
    engine: Literal["local", "ray"] = "local"
    """local: one pass in this process; ray: Ray tasks fold ranges of the store into partial results that
    are merged (pip install 'clipatlas[ray]'; every node must read the workspace); the atlas is the same."""
    address: str | None = None
    """With --engine ray: the cluster to join (auto, or ray://HOST:PORT); default: start a local Ray."""
    chunks_per_task: int | None = None
    """With --engine ray: chunks (of chunk_size rows) each Ray task folds (default: 4 tasks per GPU of the
    cluster, per CPU without GPUs; each task's partial result is merged by this process); a killed build
    redoes only the unfinished tasks."""

    def __post_init__(self):
        for name in (
            "top_k",
            "per_decile",
            "n_coactivating",
            "n_similar",
            "codes_per_image",
            "chunk_size",
            "chunks_per_task",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.map_method not in ("umap", "pca"):
            raise UserError(f"map method must be 'umap' or 'pca', not {self.map_method!r}")
        if self.engine not in ("local", "ray"):
            raise UserError(f"--engine must be local or ray, not {self.engine!r}")

    def build_params(self) -> dict[str, Any]:
        """The options that change the result (not how often it checkpoints, thumbnails, nor where it runs)."""
        params = dataclasses.asdict(self)
        for volatile in ("checkpoint_seconds", "thumbnails", "engine", "address", "chunks_per_task"):
            params.pop(volatile)
        return params
