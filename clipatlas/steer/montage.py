"""Montage icons: a feature's icon is a collage of real store images (its strongest activating ones), not a
generated picture, chosen by re-encoding candidates with the store's own encoder.

Why a collage can show a feature better than any one image: the encoders pool over the picture, so a grid of
images that all carry feature f keeps f while each tile's other features, which the tiles do not share, are
diluted. Whether it does is measured, not assumed: every candidate (g x g grids of the feature's g*g
strongest images, g = 1 .. `MontageConfig.max_grid`) is drawn, re-encoded and coded by the SAE, and the one
ranking f highest (ties: f's larger activation) is kept. A single image (g = 1) is always a candidate, so a
collage wins only where it ranks the feature higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipatlas.errors import UserError
from clipatlas.steer.config import MontageConfig
from clipatlas.steer.decoders import contact_sheet, settings_config


def montage_config(settings: dict | None) -> MontageConfig:
    """The montage decoder's settings from `--set KEY=VALUE` pairs."""
    return settings_config(MontageConfig, settings, "montage")


def candidate_rows(top_rows: Sequence[int], max_grid: int) -> list[tuple[int, ...]]:
    """The store rows of each candidate, row-major: a g x g grid of the g*g strongest images (strongest
    first; cycled when there are fewer) for g = 1 .. max_grid."""
    return [tuple(int(top_rows[i % len(top_rows)]) for i in range(g * g)) for g in range(1, max_grid + 1)]


def draw_montage(store, rows: Sequence[int], size: int) -> Image.Image:
    """The collage of `rows` (a square number of them) in a grid about `size` pixels wide."""
    return contact_sheet(store, rows, size // math.isqrt(len(rows)))


def icon_encoder(steerer):
    """The store's encoder, or a one-line error saying why icons need it."""
    try:
        return steerer.encoder
    except UserError as exc:
        raise UserError(
            f"these icons are checked by re-encoding them with the store's encoder {steerer.store.encoder!r}, "
            f"which cannot be loaded ({exc}); use --decoder retrieval"
        ) from exc


def own_ranks(z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, activation) of features[i] in code z[i]: rank 0 = the strongest latent; z.shape[1] = silent."""
    own = z[np.arange(len(features)), features]
    return np.where(own > 0, (z > own[:, None]).sum(axis=1), z.shape[1]), own


def choose_montages(
    steerer,
    features: Sequence[int],
    settings: dict | None = None,
    batch_size: int = 16,
    save: Callable[[dict[int, tuple[int, ...]]], None] | None = None,
) -> dict[int, tuple[int, ...]]:
    """{feature: store rows of its icon, row-major} for the features that fire on some store image: the
    candidate whose re-encoded code ranks the feature highest (ties: its larger activation). `save` gets the
    choices made so far after every batch of `batch_size` features (a killed run resumes from them)."""
    cfg = montage_config(settings)
    encoder, store, atlas = icon_encoder(steerer), steerer.store, steerer.atlas
    chosen: dict[int, tuple[int, ...]] = {}
    for start in tqdm(range(0, len(features), batch_size), desc="montage candidates", unit="batch"):
        owners, candidates = [], []
        for f in features[start : start + batch_size]:
            top = [example.row for example in atlas.top_images(int(f))]
            for rows in candidate_rows(top, cfg.max_grid) if top else []:
                owners.append(int(f))
                candidates.append(rows)
        if candidates:
            embeddings = encoder.encode_images([draw_montage(store, rows, cfg.size) for rows in candidates])
            with torch.no_grad():
                z = steerer.sae.encode(torch.from_numpy(np.asarray(embeddings, np.float32))).float().numpy()
            ranks, activations = own_ranks(z, np.asarray(owners))
            best: dict[int, tuple[int, float, tuple[int, ...]]] = {}
            for f, rank, activation, rows in zip(owners, ranks, activations, candidates):
                if f not in best or (rank, -activation) < (best[f][0], -best[f][1]):
                    best[f] = (int(rank), float(activation), rows)
            chosen.update({f: rows for f, (_, _, rows) in best.items()})
        if save is not None:
            save(chosen)
    return chosen
