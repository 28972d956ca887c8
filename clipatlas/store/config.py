"""The embedding run's settings (import-light: the command line makes its flags from them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from clipatlas.encoders import DEFAULT_ENCODER
from clipatlas.errors import UserError
from clipatlas.sources.decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class EmbedConfig:
    encoder: str = DEFAULT_ENCODER
    """kandinsky-clip[:PATH], hf:PATH_OR_ID, or efficientnet-lite0 (works offline)."""
    batch_size: int = 64
    """Images per model call."""
    device: str = "auto"
    """cpu, cuda[:N], or auto (the GPU when there is one)."""
    dtype: str = "auto"
    """The model's compute dtype: float32, float16, bfloat16, or auto (float16 on a GPU, float32 on the CPU)."""
    store_dtype: Literal["float16", "float32"] = "float16"
    """Dtype of the stored embeddings."""
    shard_size: int = 10_000
    """Embeddings per shard file."""
    limit: int | None = None
    """Embed at most this many inputs."""
    workers: int | None = None
    """Image decoding processes (default: up to 4, one per core)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Skip images with more pixels than this (decompression bombs)."""
    labels_from: str | None = None
    """Store a class label per image: 'folder' (the name of the folder holding it) or a CSV file
    with path,label columns; images already stored get it too, without re-embedding."""
    engine: Literal["local", "ray"] = "local"
    """local: this process and its decode workers; ray: decode in Ray tasks and encode in a pool of Ray
    actors (pip install 'clipatlas[ray]'); both write the same store and resume the same way."""
    address: str | None = None
    """With --engine ray: the cluster to join (auto: the one this machine belongs to, or ray://HOST:PORT);
    default: start a local Ray on this machine."""
    ray_encoders: int = 1
    """With --engine ray: encoder actors in the pool (each takes one GPU when the cluster has GPUs)."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise UserError("--limit must be zero or more")
        if self.workers is not None and self.workers < 0:
            raise UserError("--workers must be zero or more")
        if self.engine not in ("local", "ray"):
            raise UserError(f"--engine must be local or ray, not {self.engine!r}")
        if self.ray_encoders < 1:
            raise UserError("--ray-encoders must be at least 1")

    @property
    def worker_count(self) -> int:
        return min(4, os.cpu_count() or 1) if self.workers is None else self.workers
