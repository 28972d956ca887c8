"""Feature icons: the template image's embedding with one feature set to `strength` x its max
activation, decoded with a fixed seed; and the causal check that the icon expresses the feature."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clipatlas._io import SCHEMA_VERSION, atomic_path, atomic_write_json, read_json, sha256_file
from clipatlas.atlas.annotations import set_icon
from clipatlas.errors import UserError
from clipatlas.steer.causal import causal_check
from clipatlas.steer.config import IconConfig
from clipatlas.steer.engine import Steerer, steerer_for

TEMPLATE = Path(__file__).parent / "assets" / "template.png"
ICON_MANIFEST = "icons.json"
VERIFY_REPORT = "verify.json"


def select_features(atlas, spec: str) -> list[int]:
    if spec == "all":
        return list(range(atlas.n_features))
    if spec == "alive":
        return [f for f in range(atlas.n_features) if atlas.feature(f).alive]
    try:
        features = [int(f) for f in spec.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--features takes all, alive or a comma-separated list of ids, got {spec!r}") from None
    for f in features:
        atlas.feature(f)  # raises a UserError naming the valid range
    return features


def icon_embeddings(sae, x: np.ndarray, features: list[int], values: np.ndarray) -> np.ndarray:
    """For each feature f_i: dec(z with z[f_i] = values[i]) + (x - dec(z)), batched."""
    with torch.no_grad():
        x_t = torch.from_numpy(np.array(x, dtype=np.float32))[None]
        z = sae.encode(x_t)
        edited = z.repeat(len(features), 1)
        edited[torch.arange(len(features)), torch.tensor(features)] = torch.from_numpy(values.astype(np.float32))
        return (sae.decode(edited) - sae.decode(z) + x_t).numpy()


def _template(steerer: Steerer, config: IconConfig) -> tuple[np.ndarray, str]:
    ref = config.template or str(TEMPLATE)
    if Path(ref).is_file():
        return steerer.embedding_of(ref), sha256_file(ref)
    return steerer.embedding_of(ref), f"store:{ref}"


def make_icons(workspace, name: str | None = None, config: IconConfig = IconConfig()) -> list[int]:
    """Write icons/<feature>.png for the chosen features and record them in the atlas; resumable.
    Returns the features whose icon was made by this call."""
    steerer = steerer_for(workspace, name)
    atlas, files = steerer.atlas, steerer.atlas.files
    icons_dir = files.icons_dir
    features = select_features(atlas, config.features)
    x, digest = _template(steerer, config)
    identity = config.identity(digest)
    manifest = icons_dir / ICON_MANIFEST
    if not manifest.is_file() or read_json(manifest).get("identity") != identity:
        # New settings: earlier icons no longer match, so all are redone.
        atomic_write_json(manifest, {"identity": identity})
        done = set()
    else:
        done = {int(p.stem) for p in icons_dir.glob("*.png") if p.stem.isdigit()}
    todo = [f for f in features if f not in done]
    decoder = steerer.decoder(config.decoder)
    settings = {"k": 1, **dict(config.settings)} if config.decoder == "retrieval" else dict(config.settings)
    made = []
    for start in tqdm(range(0, len(todo), config.batch_size), desc="icons", unit="batch", disable=not todo):
        batch = todo[start : start + config.batch_size]
        values = config.strength * np.array([atlas.feature(f).max_activation for f in batch])
        decoded = decoder.decode(icon_embeddings(steerer.sae, x, batch, values), seed=config.seed, settings=settings)
        for feature, image in zip(batch, decoded.images):
            path = files.icon(feature)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            set_icon(atlas, feature, path)
            made.append(feature)
    return made


def _icon_embedding(steerer: Steerer, config: IconConfig, x: np.ndarray, feature: int) -> np.ndarray:
    """The embedding of what feature's icon shows."""
    if config.decoder == "retrieval":
        # A retrieval icon is a store image: its store embedding is the exact one, no encoder needed.
        value = config.strength * steerer.atlas.feature(feature).max_activation
        steered = icon_embeddings(steerer.sae, x, [feature], np.array([value]))
        return steerer.store[steerer.decoder("retrieval").decode(steered, settings={"k": 1}).rankings[0][0].row]
    from PIL import Image

    with Image.open(steerer.atlas.files.icon(feature)) as image:
        return np.asarray(steerer.encoder.encode_images([image.convert("RGB")])[0], dtype=np.float32)


def verify_icons(workspace, name: str | None = None, config: IconConfig = IconConfig()) -> dict:
    """Re-embed every icon, encode it, and report the share whose own feature fires most.
    Writes icons/verify.json."""
    steerer = steerer_for(workspace, name)
    atlas, files = steerer.atlas, steerer.atlas.files
    x, _ = _template(steerer, config)
    features = [f for f in select_features(atlas, config.features) if files.icon(f).is_file()]
    if not features:
        raise UserError(
            f"no icons to verify in {files.icons_dir}; make them with: clipatlas icons -w {steerer.workspace.root}"
        )
    checks = []
    for feature in tqdm(features, desc="verify icons", unit="icon"):
        after = _icon_embedding(steerer, config, x, feature)
        checks.append(causal_check(steerer.sae, x, after, feature))
    report = {
        "decoder": config.decoder,
        "strength": config.strength,
        "n_icons": len(checks),
        "top1_share": float(np.mean([c.after_rank == 0 for c in checks])),
        "top10_share": float(np.mean([c.after_rank < 10 for c in checks])),
        "median_rank_before": float(np.median([c.before_rank for c in checks])),
        "median_rank_after": float(np.median([c.after_rank for c in checks])),
        "checks": [dataclasses.asdict(c) for c in checks],
    }
    atomic_write_json(files.icons_dir / VERIFY_REPORT, {"schema_version": SCHEMA_VERSION, **report})
    return report
