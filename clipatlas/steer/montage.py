"""Montage icons: a feature's icon is a collage of real store images (its strongest activating ones), not a
generated picture, chosen by re-encoding candidates with the store's own encoder.

Why a collage can show a feature better than any one image: the encoders pool over the picture, so a grid of
images that all carry feature f keeps f while each tile's other features, which the tiles do not share, are
diluted. Whether it does is measured, not assumed: every candidate is drawn, re-encoded and coded by the SAE,
and the one ranking f highest (ties: f's larger activation) is kept. The candidates are g x g grids
(g = 1 .. `MontageConfig.max_grid`) of the feature's top images in two orders: strongest activation first, and
most dominant first (f's rank in the image's stored code, then activation). Each tile is the image centre-cropped
to a square, as the encoder saw it when the store was embedded. A single image is always a candidate, so a
collage wins only where it ranks the feature higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from clipatlas.errors import UserError
from clipatlas.steer.config import MontageConfig
from clipatlas.steer.decoders import settings_config
from clipatlas.steer.success import own_ranks, sae_codes


def montage_config(settings: dict | None) -> MontageConfig:
    """The montage decoder's settings from `--set KEY=VALUE` pairs."""
    return settings_config(MontageConfig, settings, "montage")


def candidate_rows(orders: Sequence[Sequence[int]], max_grid: int) -> list[tuple[int, ...]]:
    """The store rows of each distinct candidate, row-major: for g = 1 .. max_grid and each order of the
    feature's top images, a g x g grid of the first g*g of them (cycled when there are fewer)."""
    candidates = [
        tuple(int(order[i % len(order)]) for i in range(g * g)) for g in range(1, max_grid + 1) for order in orders
    ]
    return list(dict.fromkeys(candidates))


def top_orders(atlas, codes, feature: int) -> tuple[list[int], list[int]]:
    """The feature's top images (atlas.top_images) strongest first, and most dominant first: by the feature's
    rank in each image's stored code, then activation."""
    top = atlas.top_images(int(feature))
    strongest = [example.row for example in top]
    activations, ranks = codes.stats(np.array(strongest, dtype=np.int64), np.array([feature]))
    dominant = np.lexsort((-activations[:, 0], ranks[:, 0]))
    return strongest, [strongest[i] for i in dominant]


def draw_montage(store, rows: Sequence[int], size: int) -> Image.Image:
    """The collage of `rows` (a square number of them) in a grid about `size` pixels wide, each tile the image
    centre-cropped to a square (what the encoders see of it)."""
    grid = math.isqrt(len(rows))
    tile = size // grid
    sheet = Image.new("RGB", (grid * tile, grid * tile), (255, 255, 255))
    for i, row in enumerate(rows):
        image = ImageOps.fit(store.open_image(int(row)).convert("RGB"), (tile, tile), Image.Resampling.BICUBIC)
        sheet.paste(image, ((i % grid) * tile, (i // grid) * tile))
    return sheet


def icon_encoder(steerer):
    """The store's encoder, or a one-line error saying why icons need it."""
    try:
        return steerer.encoder
    except UserError as exc:
        raise UserError(
            f"these icons are checked by re-encoding them with the store's encoder {steerer.store.encoder!r}, "
            f"which cannot be loaded ({exc}); use --decoder retrieval"
        ) from exc


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
    codes = atlas.image_codes()
    chosen: dict[int, tuple[int, ...]] = {}
    for start in tqdm(range(0, len(features), batch_size), desc="montage candidates", unit="batch"):
        owners, candidates = [], []
        for f in features[start : start + batch_size]:
            orders = top_orders(atlas, codes, int(f))
            for rows in candidate_rows(orders, cfg.max_grid) if orders[0] else []:
                owners.append(int(f))
                candidates.append(rows)
        if candidates:
            embeddings = encoder.encode_images([draw_montage(store, rows, cfg.size) for rows in candidates])
            ranks, activations = own_ranks(sae_codes(steerer.sae, embeddings), np.asarray(owners))
            best: dict[int, tuple[int, float, tuple[int, ...]]] = {}
            for f, rank, activation, rows in zip(owners, ranks, activations, candidates):
                if f not in best or (rank, -activation) < (best[f][0], -best[f][1]):
                    best[f] = (int(rank), float(activation), rows)
            chosen.update({f: rows for f, (_, _, rows) in best.items()})
        if save is not None:
            save(chosen)
    return chosen
