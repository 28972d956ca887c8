"""Settings of export-site, release and import-sae (import-light: the command line makes its flags from them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from clipatlas.atlas.config import check_feature_selection
from clipatlas.errors import UserError


@dataclass(frozen=True)
class SiteConfig:
    features: str = "alive"
    """Features to export: all, alive, top:N (the N most frequent alive ones) or ids (1,5,10-20)."""
    max_images: int = 32
    """Images per feature page (top images first, then the lower quantiles' samples)."""
    tile_size: int = 44
    """Thumbnail side in pixels, packed into one WebP sprite sheet per feature (44 with quality 50: ~9 KB a
    feature of 32 images, so the paper's 163,840 features fit in 2 GB; a smaller atlas can afford 64)."""
    quality: int = 50
    """WebP quality of the sprite sheets (0-100)."""
    chunk_size: int = 64
    """Feature pages per JSON chunk (a page loads only its chunk)."""
    jobs: int = 1
    """Worker processes rendering the chunks (the files are the same for any number)."""

    def __post_init__(self):
        check_feature_selection(self.features)
        for name in ("max_images", "tile_size", "chunk_size", "jobs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.quality <= 100:
            raise UserError(f"--quality must be within 0-100, got {self.quality}")

    def identity(self) -> dict[str, Any]:
        """What the exported files depend on: a re-run with the same identity keeps finished chunks."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "jobs"}


@dataclass(frozen=True)
class ReleaseConfig:
    license: str = "apache-2.0"
    """License of the released weights (the hub's license identifier)."""
    dataset: str = ""
    """Hub id of the dataset the SAE was trained on, for the model card (leave empty if not on the hub)."""
    base_model: str = ""
    """Hub id of the encoder whose embeddings the SAE reads (default: the store's encoder when it is a hub id)."""
    with_atlas: bool = False
    """Also copy the atlas (atlas.sqlite, its arrays and thumbnails) and icons into the release."""


@dataclass(frozen=True)
class ImportConfig:
    format: str = "auto"
    """The source's format: auto (recognised from its files), saelens, saev or overcomplete."""
    input_scale: float = 0.0
    """Factor the peer SAE's training inputs were multiplied by (0: none); clipatlas then takes raw embeddings."""
    k: int = 0
    """Active latents per input of an overcomplete TopK / BatchTopK SAE (its state dict does not hold it)."""
    threshold: float = 0.0
    """Running threshold of an overcomplete BatchTopK SAE (model.running_threshold; 0: a TopK SAE)."""
