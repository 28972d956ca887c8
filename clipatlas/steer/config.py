"""Settings of the steering commands (import-light: the command line makes its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from clipatlas.atlas.config import check_feature_selection
from clipatlas.errors import UserError

KANDINSKY_DECODER_ID = "kandinsky-community/kandinsky-2-2-decoder"
KANDINSKY_PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


@dataclass(frozen=True)
class IndexConfig:
    """The store's retrieval index: exact cosine over every row (RAM: the store's size), or an approximate
    FAISS index (an inverted file of `nlist` k-means cells holding 8-bit quantised unit rows; a query scans
    `nprobe` cells, then re-scores its `shortlist` candidates exactly from the store)."""

    kind: Literal["auto", "exact", "ivf"] = "auto"
    """exact, ivf (needs pip install 'clipatlas[ann]'), or auto: ivf from min_rows rows (when FAISS is
    installed), exact below."""
    min_rows: int = 200_000
    """With kind auto: stores with fewer rows use the exact search."""
    nlist: int | None = None
    """Cells of the inverted file (default: sqrt(rows), at least 16)."""
    nprobe: int = 24
    """Cells scanned per query: more is slower and finds more of the exact neighbours."""
    shortlist: int = 256
    """Candidates per query re-scored exactly (and, for an edit, ranked with the edit-aware mix)."""
    train_rows: int = 65_536
    """Store rows (a seeded sample) the k-means cells are trained on."""

    def __post_init__(self):
        if self.kind not in ("auto", "exact", "ivf"):
            raise UserError(f"index kind must be auto, exact or ivf, not {self.kind!r}")
        for name in ("min_rows", "nprobe", "shortlist", "train_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.nlist is not None and self.nlist < 1:
            raise UserError("--nlist must be at least 1")

    def build_params(self) -> dict[str, Any]:
        """What the saved index depends on (nprobe and shortlist are chosen per query)."""
        return {"nlist": self.nlist, "train_rows": self.train_rows}


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of the retrieval decoder (`--set KEY=VALUE`), which shows the store images that best show an
    edited embedding y. For the features the edits raised (R) and switched off (O), store image c scores

        cos(y, x_c) + mean over f in R of [activation_weight * min(z_f(c) / max_f, 1)
                                           + rank_weight * (f among c's top_latents strongest latents)
                                           + dominant_weight * (f is c's strongest latent)]
                    - mean over f in O of [activation_weight * min(z_f(c) / max_f, 1)
                                           + rank_weight * (f among c's top_latents strongest latents)]

    and for an edited embedding the unedited image and its near-duplicates are never shown. With both
    weights 0 it is plain cosine retrieval. The defaults are measured (bench/RESULTS.md, "Steering success")."""

    k: int = 16
    """Images shown, best first, as a contact sheet."""
    tile: int = 128
    """Size of a contact sheet's tiles in pixels."""
    activation_weight: float = 0.1
    """Weight of a target feature's activation in a candidate, in units of its max activation (capped at 1)."""
    rank_weight: float = 1.0
    """Bonus when a target feature is among the candidate's top_latents strongest latents."""
    top_latents: int = 5
    """How many of a candidate's strongest latents earn rank_weight."""
    dominant_weight: float = 0.0
    """Bonus when a target feature is the candidate's strongest latent (icons use 2)."""
    duplicate_cosine: float = 0.995
    """Store images at least this cosine-similar to the unedited image count as it: never shown for an edit."""

    def __post_init__(self):
        for name in ("k", "tile", "top_latents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or int(value) != value:
                raise UserError(f"retrieval setting {name!r} is a whole number >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("activation_weight", "rank_weight", "dominant_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise UserError(f"retrieval setting {name!r} is a number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0 < self.duplicate_cosine <= 1:
            raise UserError(f"retrieval setting 'duplicate_cosine' is in (0, 1], got {self.duplicate_cosine!r}")


@dataclass(frozen=True)
class MontageConfig:
    """Settings of the montage icon decoder (`clipatlas icons --decoder montage --set KEY=VALUE`). A feature's
    candidates are g x g grids (g = 1 .. max_grid) of its top activating store images, taken strongest first
    and, separately, most dominant first (its rank in each image's code, then activation); each is drawn at
    `size` pixels, re-encoded by the store's encoder and coded by the SAE, and the candidate ranking the
    feature highest (ties: its larger activation) is the icon. Measured in bench/RESULTS.md ("Icons")."""

    size: int = 224
    """Side of the icon in pixels (the EfficientNet and CLIP encoders see 224)."""
    max_grid: int = 2
    """Largest grid tried: 1 = single images only, 2 = also 2x2 collages (3x3 tiles were too small to help)."""

    def __post_init__(self):
        for name in ("size", "max_grid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or int(value) != value:
                raise UserError(f"montage setting {name!r} is a whole number >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.size < 8 * self.max_grid:
            raise UserError(f"montage size {self.size} is too small for {self.max_grid}x{self.max_grid} grids")


@dataclass(frozen=True)
class IconConfig:
    features: str = "alive"
    """Which features get an icon: all, alive, top:N (the N most frequent alive ones) or ids (1,5,10-20)."""
    decoder: str = "retrieval"
    """retrieval (a store image, no GPU), montage (a collage of the feature's top store images, checked by
    re-encoding it; needs the store's encoder) or kandinsky[:PATH_OR_ID]."""
    strength: float | None = None
    """The feature is set to this many times its max activation (default: the smallest strength at which
    this SAE's measured steering success reaches its target; measured on first use)."""
    template: str = "mean"
    """mean (the store's mean embedding: in distribution, never an icon itself; templates compared in
    bench/RESULTS.md), a store image id, or an image file."""
    seed: int = 1
    """Seed of the decoder (every icon starts from the same noise)."""
    batch_size: int = 16
    """Icons decoded per decoder call."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Decoder settings as (key, value) pairs, e.g. (("steps", 12),)."""

    def __post_init__(self):
        check_feature_selection(self.features)


@dataclass(frozen=True)
class SuccessConfig:
    """How the steering success curve is measured: single `set` edits on a seeded sample of alive features,
    each applied to images where the feature does not fire, decoded, re-embedded and checked."""

    decoder: str = "retrieval"
    """The decoder measured: retrieval or kandinsky[:PATH_OR_ID] (which generates two images per edit)."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Decoder settings as (key, value) pairs (e.g. (("rank_weight", 0),) measures plain cosine)."""
    strengths: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0)
    """Edit strengths, in units of each feature's max activation."""
    n_features: int = 500
    """Features sampled (alive, firing on at least min_images images); all of them when fewer."""
    sources_per_feature: int = 3
    """Images each feature is set on, drawn from those where it does not fire."""
    min_images: int = 10
    """Only features firing on at least this many store images are sampled."""
    top: int = 5
    """An edit succeeds when the result is not the source and the feature is among its `top` strongest latents."""
    target: float = 0.8
    """The success rate the default strength must reach."""
    seed: int = 0
    """Seed of the feature and source sample."""
    batch_size: int = 64
    """Edits decoded per decoder call."""


@dataclass(frozen=True)
class GenerateConfig:
    """Text -> Kandinsky 2.2 prior -> edits on the embedding's SAE latents -> decoder."""

    decoder: str = "kandinsky"
    """kandinsky[:PATH_OR_ID]: the decoder that draws the embedding."""
    prior: str = KANDINSKY_PRIOR_ID
    """The Kandinsky 2.2 prior: a hub id or a local path."""
    seed: int = 1
    """Seed of the prior and the decoder (before and after share it)."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Decoder and prior settings: steps, guidance, height, width, prior_steps, prior_guidance."""
