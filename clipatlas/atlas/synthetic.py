"""A synthetic atlas written through the atlas schema, for the web benchmark and tests.

It has the shape of a real one (feature rows, top and quantile examples, neighbours, labels,
histograms, per-image codes, thumbnails, a store) at any size, without training an SAE of
163,840 latents first. Values are random but consistent: top examples are sorted, neighbour
scores descend, every example image has a thumbnail and a store row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from clipatlas._io import atomic_path
from clipatlas.atlas import db
from clipatlas.atlas.types import CHANCE
from clipatlas.errors import UserError
from clipatlas.store import write_store
from clipatlas.workspace import SAEFiles, Workspace

WORDS = (
    "cat dog bird fish car truck boat plane tree flower mushroom apple banana house bridge tower road river "
    "mountain beach cloud sun moon star snow fire water glass metal wood stone red green blue yellow striped "
    "spotted round square face hand eye wheel window door book clock lamp chair table shoe hat ball"
).split()
HIST_BINS = 100
HIST_EDGES = (10.0 ** (-5 + np.arange(HIST_BINS + 1) / 10)).tolist()


@dataclass(frozen=True)
class SyntheticAtlasConfig:
    n_features: int = 512
    n_images: int = 256
    d: int = 32
    top_k: int = 16
    deciles: int = 10
    neighbours: int = 8
    codes_per_image: int = 16
    n_clusters: int = 32
    alive_fraction: float = 0.9
    thumb_size: int = 48
    seed: int = 0
    sae_name: str = "synthetic"
    encoder: str = "synthetic"  # the encoder id the atlas and store record

    def __post_init__(self):
        if self.n_images < self.top_k + self.deciles or self.n_images < self.codes_per_image:
            raise UserError(
                f"a synthetic atlas needs at least {max(self.top_k + self.deciles, self.codes_per_image)} "
                f"images for its examples and codes, got {self.n_images}"
            )
        if self.n_features < max(self.neighbours, self.codes_per_image) / self.alive_fraction:
            raise UserError(
                f"a synthetic atlas needs more features than {self.n_features} for "
                f"{self.neighbours} neighbours and {self.codes_per_image} codes per image"
            )


def write_synthetic_atlas(root: str | Path, cfg: SyntheticAtlasConfig = SyntheticAtlasConfig()) -> Workspace:
    """Write a store, an SAE directory and a built-looking atlas for it under `root`."""
    ws = Workspace(root)
    rng = np.random.default_rng(cfg.seed)
    image_ids = [f"img{i:06d}" for i in range(cfg.n_images)]
    files = ws.sae(cfg.sae_name, must_exist=False)
    thumbs = _write_thumbnails(files.atlas_dir, image_ids, cfg.thumb_size, rng)
    # The thumbnails double as the store's image files, so decoders can open store images.
    write_store(
        ws.root,
        rng.standard_normal((cfg.n_images, cfg.d)).astype(np.float32),
        [{"image_id": i, "uri": str(files.atlas_dir / thumbs[i]), "source": "synthetic"} for i in image_ids],
        encoder=cfg.encoder,
    )
    _write_sae(files, cfg)
    arrays = f"{db.ARRAYS_PREFIX}synthetic"
    alive = rng.random(cfg.n_features) < cfg.alive_fraction
    _write_arrays(files.atlas_dir / arrays, cfg, alive, rng)
    meta = {
        "n_features": cfg.n_features,
        "n_images": cfg.n_images,
        "arrays_dir": arrays,
        "hist_edges": json.dumps(HIST_EDGES),
        "encoder": cfg.encoder,
        "top_k": cfg.top_k,
        "codes_per_image": cfg.codes_per_image,
        "build_id": f"synthetic-{cfg.seed}",
    }
    db.write_database(
        files.atlas_db, meta, {**_tables(cfg, image_ids, alive, rng), "thumbnails": sorted(thumbs.items())}
    )
    return ws


def _write_sae(files: SAEFiles, cfg: SyntheticAtlasConfig) -> None:
    """A random TopK SAE of the atlas's size, so `features_of_embedding` works on uploads."""
    import torch

    from clipatlas.sae import ARCHITECTURES, make_config

    torch.manual_seed(cfg.seed)
    sae_cfg = make_config(
        "topk", d_in=cfg.d, d_sae=cfg.n_features, k=min(cfg.codes_per_image, cfg.n_features), encoder=cfg.encoder
    )
    ARCHITECTURES["topk"](sae_cfg).save_pretrained(files.dir)


def _write_thumbnails(atlas_dir: Path, image_ids: list[str], size: int, rng: np.random.Generator) -> dict[str, str]:
    """{image id: its thumbnail's path inside the atlas folder}."""
    thumbs = {}
    for image_id in tqdm(image_ids, desc="thumbnails", leave=False):
        colour = tuple(int(c) for c in rng.integers(40, 230, 3))
        image = Image.new("RGB", (size, size), colour)
        image.paste(tuple(255 - c for c in colour), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        thumbs[image_id] = f"{db.THUMBS_DIR}/{image_id}.webp"
        with atomic_path(atlas_dir / thumbs[image_id]) as tmp:
            image.save(tmp, format="WEBP")
    return thumbs


def _write_arrays(arrays_dir: Path, cfg: SyntheticAtlasConfig, alive: np.ndarray, rng: np.random.Generator) -> None:
    hist = np.zeros((cfg.n_features, HIST_BINS), np.int32)
    centre = rng.integers(40, 60, cfg.n_features)
    for offset in range(-6, 7):
        hist[np.arange(cfg.n_features), centre + offset] = rng.integers(0, 50, cfg.n_features) * (7 - abs(offset))
    hist[~alive] = 0
    k = cfg.codes_per_image
    live = np.flatnonzero(alive)
    features = np.stack([rng.choice(live, k, replace=False) for _ in range(cfg.n_images)])
    values = -np.sort(-rng.gamma(2.0, 1.0, (cfg.n_images, k)), axis=1)
    indptr = np.arange(0, (cfg.n_images + 1) * k, k, dtype=np.int64)
    codes = (indptr, features.astype(np.int32).ravel(), values.astype(np.float32).ravel())
    db.save_arrays(arrays_dir, {db.HIST_ARRAY: hist, **dict(zip(db.CODE_ARRAYS, codes))})


def _tables(cfg: SyntheticAtlasConfig, image_ids: list[str], alive: np.ndarray, rng: np.random.Generator) -> dict:
    """Rows of every table but thumbnails, drawn in a fixed order so a seed gives one atlas."""
    n = cfg.n_features
    count = np.where(alive, rng.integers(1, cfg.n_images, n), 0)
    max_act = np.where(alive, rng.lognormal(1.0, 0.5, n), 0.0)
    cluster = rng.integers(0, cfg.n_clusters, n)
    centres = rng.normal(0, 10, (cfg.n_clusters, 2))
    xy = centres[cluster] + rng.normal(0, 1.2, (n, 2))
    features = [
        (i, int(alive[i]), int(count[i]), count[i] / cfg.n_images, max_act[i], max_act[i] * 0.3)
        + ((xy[i, 0], xy[i, 1], int(cluster[i])) if alive[i] else (None, None, None))
        for i in range(n)
    ]
    live = np.flatnonzero(alive)
    examples = list(_examples(live, max_act, cfg, image_ids, rng))
    coactivating = list(_neighbours(live, cfg.neighbours, None, rng))
    similar = [row for kind in ("decoder", "encoder") for row in _neighbours(live, cfg.neighbours, kind, rng)]
    # Scored labels, as `clipatlas label` and `clipatlas score` write them: a random third of
    # them do not beat their baseline and chance (those features stay unnamed; readers derive it from the values).
    labels, scores = [], []
    for label_id, i in enumerate(live.tolist(), start=1):
        text = f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]}"
        labels.append((label_id, i, "captions", text, "", "", "", "{}"))
        value, baseline = float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.4, 0.6))
        beats = int(value > max(baseline, CHANCE["auroc"]) and rng.random() > 0.33)
        value = value if beats else min(value, baseline)
        scores.append(
            (i, label_id, "detection", "captions", "synthetic", "auroc", value, baseline, 20, beats, None, "{}")
        )
    return {
        "features": features,
        "examples": examples,
        "coactivating": coactivating,
        "similar": similar,
        "labels": labels,
        "scores": scores,
    }


def _examples(live, max_act, cfg, image_ids, rng):
    for i in tqdm(live, desc="examples", leave=False):
        rows = rng.choice(len(image_ids), cfg.top_k + cfg.deciles, replace=False)
        top = max_act[i] * np.sort(rng.uniform(0.6, 1.0, cfg.top_k))[::-1]
        top[0] = max_act[i]
        for rank in range(cfg.top_k):
            yield int(i), "top", rank, None, int(rows[rank]), image_ids[rows[rank]], float(top[rank])
        for decile in range(cfg.deciles):
            row = int(rows[cfg.top_k + decile])
            yield (
                int(i),
                "quantile",
                decile,
                decile,
                row,
                image_ids[row],
                float(max_act[i] * (decile + 0.5) / cfg.deciles),
            )


def _neighbours(live, count, kind, rng):
    for i in live:
        others = rng.choice(live, count, replace=False)
        scores = np.sort(rng.uniform(0.05, 0.95, count))[::-1]
        for rank, (other, score) in enumerate(zip(others, scores)):
            if kind is None:
                yield int(i), rank, int(other), int(rng.integers(1, 100)), float(score)
            else:
                yield int(i), kind, rank, int(other), float(score)
