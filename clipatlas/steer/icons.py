"""Feature icons: the template's embedding with one feature set to `strength` x its max activation,
decoded with a fixed seed; and the causal check that each icon expresses its feature.

Retrieval icons are store images chosen by the edit-aware ranking (plus `dominant_weight`, a bonus
when the feature is the image's strongest latent) and assigned one image per feature where the store
allows it, for all alive features at once (`assign_images`): every feature that is the strongest latent
of some image gets such an image, as many features as possible get an image of their own among those
where they are in the top `top_latents`, and any feature left keeps its own best image. The assignment
is saved in icons.json, so resumed runs and `verify_icons` use the very images shown. Montage icons
(`montage.py`) are collages of each feature's top store images, chosen by re-encoding candidates; no edit.
Each icon records what it was made from, and a re-run remakes exactly the icons whose inputs changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from clipatlas._io import SCHEMA_VERSION, atomic_path, atomic_write_json, read_json, sha256_file
from clipatlas.atlas.annotations import set_icon
from clipatlas.errors import UserError
from clipatlas.steer.causal import CausalCheck
from clipatlas.steer.config import IconConfig
from clipatlas.steer.decoders import DECODERS, contact_sheet, retrieval_config
from clipatlas.steer.edits import set_embeddings
from clipatlas.steer.engine import Steerer, steerer_for
from clipatlas.steer.montage import choose_montages, draw_montage, icon_encoder, montage_config
from clipatlas.steer.ranking import Guide
from clipatlas.steer.success import DefaultStrength, own_ranks, strength_for

ICON_RANKING = {"k": 1, "dominant_weight": 2.0}  # retrieval settings of icons, under the user's own
ASSIGNMENT = "maximum matching, strongest-latent rows kept, v1"  # part of the retrieval icons' identity
# part of the montage icons' identity
MONTAGE_CHOICE = "best re-encoded rank of g x g grids of the top images, strongest and most dominant first, v2"
NO_EDIT = DefaultStrength(0.0, "none: montage icons are collages of each feature's top store images, not edits", False)
FREQUENT_IMAGES = 10  # verify also reports the icons of features firing on at least this many images
ICON_KEY = "clipatlas-icon"  # PNG text chunk: the hash of what the icon was made from
MEAN_TEMPLATE = "mean"
TOP1_TARGET = 0.9  # share of icons whose own feature fires most
DISTINCT_TARGET = 0.8  # share of distinct icons
_EMBED_BATCH = 1024  # steered embeddings made at once while assigning


@dataclass(frozen=True)
class IconRun:
    """What `make_icons` did: the features whose icon it made, how many up-to-date icons it kept,
    the strength and where it came from, the share of distinct icons, and warnings to print."""

    made: list[int]
    kept: int
    strength: DefaultStrength
    n_icons: int
    distinct_share: float
    warnings: list[str]


def template_embedding(steerer: Steerer, ref: str) -> tuple[np.ndarray, str]:
    """(embedding, digest) of the template: the store's mean embedding, a store image or an image file."""
    if ref == MEAN_TEMPLATE:
        store = steerer.store
        total = np.zeros(store.d, dtype=np.float64)
        for _, batch in store.iter_batches(65536):
            total += batch.sum(axis=0, dtype=np.float64)
        return (total / max(len(store), 1)).astype(np.float32), f"mean:{steerer.atlas.build_id}"
    if Path(ref).expanduser().is_file() and steerer.row_of(ref) is None:
        return steerer.embedding_of(ref), f"file:{sha256_file(Path(ref).expanduser())}"
    return steerer.embedding_of(ref), f"store:{ref}"


Plan = dict[int, tuple[int, ...]]  # {feature: the store rows its icon shows, row-major}


@dataclass(frozen=True)
class StoreImageIcons:
    """An icon decoder whose icons show store images: `resolve` gives its full settings (part of the identity),
    `plan(steerer, config, template, strength, features, planned, save) -> Plan` chooses the rows of every icon
    not in `planned` (`save(plan)` checkpoints), `draw(store, rows, settings)` draws one icon and `picture(settings)`
    is what its drawing depends on besides the rows.
    `steered`: the icons depend on the template and strength (an edit chooses them); `exact`: an icon is one
    store image whose stored embedding verify may read instead of re-encoding the file."""

    resolve: Callable[[dict], dict]
    plan: Callable[..., Plan]
    draw: Callable[[object, tuple[int, ...], dict], Image.Image]
    picture: Callable[[dict], list]
    version: str
    steered: bool
    exact: bool


def _retrieval_plan(steerer, config, x, strength, features, planned: Plan, save) -> Plan:
    if all(f in planned for f in features):
        return planned
    return {**planned, **{f: (row,) for f, row in _assignment(steerer, config, x, strength, features).items()}}


def _montage_plan(steerer, config, x, strength, features, planned: Plan, save) -> Plan:
    counts = steerer.atlas.feature_table().count
    todo = [f for f in features if f not in planned and counts[f] > 0]  # a silent feature has no image to show
    if not todo:
        return planned
    settings = dict(config.settings)
    chosen = choose_montages(steerer, todo, settings, config.batch_size, save=lambda done: save({**planned, **done}))
    return {**planned, **chosen}


STORE_IMAGE_ICONS: dict[str, StoreImageIcons] = {
    "retrieval": StoreImageIcons(
        resolve=lambda settings: dataclasses.asdict(retrieval_config({**ICON_RANKING, **settings})),
        plan=_retrieval_plan,
        draw=lambda store, rows, settings: contact_sheet(store, rows, settings["tile"]),
        picture=lambda settings: [settings["tile"]],
        version=ASSIGNMENT,
        steered=True,
        exact=True,
    ),
    "montage": StoreImageIcons(
        resolve=lambda settings: dataclasses.asdict(montage_config(settings)),
        plan=_montage_plan,
        draw=lambda store, rows, settings: draw_montage(store, rows, settings["size"]),
        picture=lambda settings: ["centre-cropped tiles", settings["size"]],
        version=MONTAGE_CHOICE,
        steered=False,
        exact=False,
    ),
}


def store_image_icons(decoder: str) -> StoreImageIcons | None:
    """The icon decoder showing store images named `decoder`, or None for a generator (refuses unknown names)."""
    base, sep, _ = decoder.partition(":")
    if base in STORE_IMAGE_ICONS:
        if sep:
            raise UserError(f"the {base} icon decoder takes no path; write --decoder {base}")
        return STORE_IMAGE_ICONS[base]
    if base not in DECODERS:
        raise UserError(f"unknown icon decoder {decoder!r}; choose one of: {', '.join(STORE_IMAGE_ICONS)}, kandinsky")
    return None


def _identity(steerer: Steerer, config: IconConfig, maker, strength: float, template: str | None) -> dict:
    """What every icon depends on; icons made under another identity are remade."""
    steered = maker is None or maker.steered
    return {
        "decoder": config.decoder,
        **({"strength": strength, "template": template, "template_ref": config.template} if steered else {}),
        **({"seed": config.seed} if steered else {}),
        "settings": maker.resolve(dict(config.settings)) if maker else dict(config.settings),
        "atlas_build": steerer.atlas.build_id,
        **({"assignment": maker.version} if maker else {}),
    }


def _planned(manifest: dict) -> Plan:
    """The manifest's {feature: rows} (one row per feature, as written before montages, reads as itself)."""
    rows = manifest.get("rows", [])
    return {f: tuple(r) if isinstance(r, list) else (r,) for f, r in zip(manifest.get("features", []), rows)}


def _icon_input(steerer: Steerer, identity: dict, maker, planned: Plan, feature: int) -> str:
    """A hash of what one icon's picture is made from: an icon of store images is their tiles (whatever chose
    them); a generated one depends on everything in the identity and its feature."""
    if maker is not None and feature in planned:
        ids = steerer.store.metadata.column("image_id")
        rows = planned[feature]
        item = [*maker.picture(identity["settings"]), *(str(ids[r]) for r in rows)]
    else:
        item = [identity, feature]
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:32]


def _icon_key(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            return image.text.get(ICON_KEY)
    except (OSError, ValueError):
        return None


def _save_icon(path: Path, image: Image.Image, key: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(ICON_KEY, key)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def assign_images(candidates: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], n_rows: int) -> dict[int, int]:
    """One store row per feature, from each feature's candidates (rows, scores, the feature's rank in each
    row), for as many features as the store allows: a maximum bipartite matching (Hopcroft-Karp) in which a
    feature that is the strongest latent of some row may only take such a row (these sets are disjoint:
    a row has one strongest latent), so every such feature gets one; then each feature moves to its
    best-scoring free row. Features left without a row are left out (the caller gives them their best)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    features = list(candidates)
    allowed = {}
    for f in features:
        rows, _, ranks = candidates[f]
        allowed[f] = ranks == 0 if (ranks == 0).any() else np.ones(len(rows), dtype=bool)
    columns = [candidates[f][0][allowed[f]] for f in features]
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in columns])])
    indices = np.concatenate(columns) if columns else np.zeros(0, np.int64)
    graph = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(features), n_rows))
    matched = maximum_bipartite_matching(graph, perm_type="column")
    chosen = {f: int(r) for f, r in zip(features, matched) if r >= 0}
    owner = {r: f for f, r in chosen.items()}
    for f in features:  # a strongest-latent feature left out takes its best such row from whoever has it
        rows, scores, ranks = candidates[f]
        if f not in chosen and (ranks == 0).any():
            row = int(rows[ranks == 0][np.argmax(scores[ranks == 0])])
            chosen.pop(owner.get(row), None)  # the same number of features keeps a row of its own
            chosen[f], owner[row] = row, f
    taken = np.zeros(n_rows, dtype=bool)
    taken[list(chosen.values())] = True
    for f in sorted(chosen):
        rows, scores, _ = candidates[f]
        free = allowed[f] & (~taken[rows] | (rows == chosen[f]))
        best = int(rows[free][np.argmax(scores[free])])
        taken[chosen[f]], taken[best] = False, True
        chosen[f] = best
    return chosen


def _assignment(steerer: Steerer, config: IconConfig, x: np.ndarray, strength: float, features: list[int]):
    """{feature: store row} of retrieval icons for all alive features plus `features`."""
    cfg = retrieval_config({**ICON_RANKING, **dict(config.settings)})
    ranker = steerer.decoder("retrieval").ranker
    table = steerer.atlas.feature_table()
    everyone = sorted(set(np.flatnonzero(table.alive).tolist()) | set(features))

    def steered(batch: list[int]) -> np.ndarray:
        return set_embeddings(steerer.sae, x, batch, strength * table.max_activation[batch])

    candidates = {}
    for start in tqdm(range(0, len(everyone), _EMBED_BATCH), desc="icon candidates", unit="batch"):
        batch = everyone[start : start + _EMBED_BATCH]
        for f, y in zip(batch, steered(batch)):
            candidates[f] = ranker.candidates(y, Guide(raised=(f,), source=x), cfg)
    chosen = assign_images(candidates, len(steerer.store))
    left = [f for f in everyone if f not in chosen]
    for start in range(0, len(left), _EMBED_BATCH):  # no free image shows them: their own best image, shared
        batch = left[start : start + _EMBED_BATCH]
        for f, y in zip(batch, steered(batch)):
            chosen[f] = int(ranker.rank(y, Guide(raised=(f,), source=x), cfg, 1).rows[0])
    return chosen


def make_icons(workspace, name: str | None = None, config: IconConfig = IconConfig()) -> IconRun:
    """Write icons/<feature>.png for the chosen features and record them in the atlas; resumable, and a
    re-run remakes only the icons whose inputs changed."""
    steerer = steerer_for(workspace, name)
    atlas, files = steerer.atlas, steerer.atlas.files
    features = atlas.select_features(config.features).tolist()
    maker = store_image_icons(config.decoder)
    if maker is None or maker.steered:
        strength = strength_for(steerer, config.decoder, config.strength)
        x, template = template_embedding(steerer, config.template)
    else:
        strength, x, template = NO_EDIT, None, None
    identity = _identity(steerer, config, maker, strength.value, template)
    manifest = read_json(files.icon_manifest) if files.icon_manifest.is_file() else {}
    planned = _planned(manifest) if manifest.get("identity") == identity else {}

    def save(plan: Plan) -> None:
        rows = [list(r) for r in plan.values()]
        content = {"schema_version": SCHEMA_VERSION, "identity": identity, "features": list(plan), "rows": rows}
        atomic_write_json(files.icon_manifest, content)

    if maker is not None:
        planned = maker.plan(steerer, config, x, strength.value, features, planned, save)
    save(planned)
    keys = {f: _icon_input(steerer, identity, maker, planned, f) for f in features if maker is None or f in planned}
    todo = [f for f in keys if _icon_key(files.icon(f)) != keys[f]]
    made = []
    for start in tqdm(range(0, len(todo), config.batch_size), desc="icons", unit="batch", disable=not todo):
        batch = todo[start : start + config.batch_size]
        if maker is not None:
            settings = identity["settings"]
            images = [maker.draw(steerer.store, planned[f], settings) for f in batch]
        else:
            values = strength.value * atlas.feature_table().max_activation[batch]
            steered = set_embeddings(steerer.sae, x, batch, values)
            images = (
                steerer.decoder(config.decoder).decode(steered, seed=config.seed, settings=dict(config.settings)).images
            )
        for feature, image in zip(batch, images):
            _save_icon(files.icon(feature), image, keys[feature])
            set_icon(atlas, feature, files.icon(feature))
            made.append(feature)
    alive = [f for f in keys if atlas.feature_table().alive[f]]
    distinct = _distinct_share([files.icon(f) for f in alive])
    return IconRun(made, len(keys) - len(todo), strength, len(alive), distinct, icon_warnings(distinct, len(alive)))


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _distinct_share(paths: list[Path]) -> float:
    """Share of distinct pictures among these icon files (files with identical pixels count once)."""
    if not paths:
        return 1.0
    digests = set()
    for path in paths:
        with Image.open(path) as image:  # pixels, not file bytes: each file also carries its own key
            digests.add(hashlib.sha256(image.tobytes()).digest())
    return len(digests) / len(paths)


def icon_warnings(distinct_share: float, n_icons: int, top1_share: float | None = None, ceiling: float | None = None):
    """Lines to print when icons fall short of their targets, each saying what it means and what to do."""
    warnings = []
    if n_icons and distinct_share < DISTINCT_TARGET:
        warnings.append(
            f"warning: only {distinct_share:.1%} of the {n_icons} alive features' icons are distinct images "
            f"(target {DISTINCT_TARGET:.0%}): many features share a picture. With retrieval the store has too few "
            "images that show each feature; try another --template or add images to the store"
        )
    if top1_share is not None and top1_share < TOP1_TARGET:
        reason = (
            f"; on this store at most {ceiling:.0%} can, since only that share of these features is the strongest "
            "latent of any store image"
            if ceiling is not None
            else ""
        )
        warnings.append(
            f"warning: {top1_share:.0%} of the icons activate their own feature most (target {TOP1_TARGET:.0%}){reason}"
        )
    return warnings


def verify_icons(workspace, name: str | None = None, features: str = "alive") -> dict:
    """The causal check of the icons actually made (read from icons.json, retrieval images by their store
    rows, generated ones re-embedded): how often the icon's own feature fires most, is in its top 5, or
    fires at the largest fraction of its max activation; how many icons are distinct; and the rank-0
    ceiling of retrieval on this store. Writes icons/verify.json and returns the report."""
    steerer = steerer_for(workspace, name)
    atlas, files = steerer.atlas, steerer.atlas.files
    hint = f"make them with: clipatlas icons -w {steerer.workspace.root}"
    if not files.icon_manifest.is_file():
        raise UserError(f"no icons to verify in {files.icons_dir}; {hint}")
    manifest = read_json(files.icon_manifest)
    identity = manifest["identity"]
    maker = store_image_icons(identity["decoder"])
    planned = _planned(manifest)
    chosen = [
        f
        for f in atlas.select_features(features).tolist()
        if (maker is None or f in planned)
        and _icon_key(files.icon(f)) == _icon_input(steerer, identity, maker, planned, f)
    ]
    if not chosen:
        raise UserError(f"no up-to-date icons to verify in {files.icons_dir}; {hint}")
    # Icons made without an edit are compared with the store's mean embedding.
    x, _ = template_embedding(steerer, identity.get("template_ref", MEAN_TEMPLATE))
    if maker is not None and maker.exact:  # the icon is one store image: its store embedding is exact
        produced = steerer.store.rows(np.array([planned[f][0] for f in chosen]))
    else:  # the very files written, re-encoded
        encoder = icon_encoder(steerer)
        produced = np.concatenate(
            [
                encoder.encode_images([_read_rgb(files.icon(f)) for f in chosen[s : s + 64]])
                for s in tqdm(range(0, len(chosen), 64), desc="re-encoding icons", unit="batch")
            ]
        )
    distinct = _distinct_share([files.icon(f) for f in chosen])
    report = icon_report(steerer, identity, x, np.asarray(chosen), produced, distinct)
    atomic_write_json(files.icon_verify_report, {"schema_version": SCHEMA_VERSION, **report})
    return report


def icon_report(steerer: Steerer, identity: dict, x, features: np.ndarray, produced: np.ndarray, distinct: float):
    """The causal check of icons whose embeddings are `produced` (one row per feature) against template `x`."""
    sae, table = steerer.sae, steerer.atlas.feature_table()
    with torch.no_grad():
        z_template = sae.encode(torch.from_numpy(x[None].astype(np.float32))).float().numpy()[0]
        z = np.concatenate(
            [
                sae.encode(torch.from_numpy(produced[s : s + 1024])).float().numpy()
                for s in range(0, len(produced), 1024)
            ]
        )
    rows = np.arange(len(features))
    rank, own = own_ranks(z, features)
    before, _ = own_ranks(np.broadcast_to(z_template, z.shape), features)
    level = z / np.where(table.max_activation > 0, table.max_activation, np.inf)[None]
    normalised_rank = np.where(own > 0, (level > level[rows, features][:, None]).sum(axis=1), z.shape[1])
    maker = store_image_icons(identity["decoder"])
    # Only icons that are single store images are capped by the store's strongest latents.
    exact = maker is not None and maker.exact
    ceiling = float(np.isin(features, steerer.atlas.image_codes().strongest()).mean()) if exact else None
    top1 = float((rank == 0).mean())
    frequent = table.count[features] >= FREQUENT_IMAGES
    checks = [
        CausalCheck(int(f), float(z_template[f]), float(own[i]), int(before[i]), int(rank[i]))
        for i, f in enumerate(features)
    ]
    return {
        "decoder": identity["decoder"],
        "strength": identity.get("strength"),
        "template": identity.get("template_ref"),
        "n_icons": len(features),
        "top1_share": top1,
        "top1_target": TOP1_TARGET,
        "top1_ceiling": ceiling,
        "top5_share": float((rank < 5).mean()),
        "top10_share": float((rank < 10).mean()),
        "normalised_top1_share": float((normalised_rank == 0).mean()),
        "distinct_share": distinct,
        "distinct_target": DISTINCT_TARGET,
        "median_rank_before": float(np.median(before)),
        "median_rank_after": float(np.median(rank)),
        "frequent": {
            "min_images": FREQUENT_IMAGES,
            "n_icons": int(frequent.sum()),
            "top1_share": float((rank[frequent] == 0).mean()) if frequent.any() else None,
            "top5_share": float((rank[frequent] < 5).mean()) if frequent.any() else None,
        },
        "warnings": icon_warnings(distinct, len(features), top1, ceiling),
        "checks": [dataclasses.asdict(c) for c in checks],
    }
