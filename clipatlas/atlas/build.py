"""`build_atlas`: the store and a trained SAE in, `saes/<name>/atlas/` out.

Order of work: the streaming pass (checkpointed, resumable), then relations, map and
thumbnails from its results, then the database, written to a temporary file and renamed
over `atlas.sqlite` in one step. Everything is deterministic, so a killed build re-run
produces the same database as one that was never interrupted. Labels are not made here: the
interp stage (`clipatlas label`, `clipatlas score`) writes them with their scores, and a rebuild
for the same SAE weights keeps them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipatlas._io import sha256_file
from clipatlas.atlas import db, relations, stream
from clipatlas.atlas.config import AtlasConfig
from clipatlas.atlas.layout import feature_map
from clipatlas.atlas.query import Atlas
from clipatlas.atlas.thumbs import make_thumbnails
from clipatlas.devices import resolve_device
from clipatlas.errors import UserError
from clipatlas.workspace import SAEFiles, Workspace

log = logging.getLogger(__name__)


def build_atlas(workspace: str | Path | Workspace, name: str | None = None, config: AtlasConfig | None = None) -> Atlas:
    """Build (or resume building) the atlas of SAE `name`; returns the opened `Atlas`."""
    ws = Workspace.of(workspace)
    config = config or AtlasConfig()
    files = ws.sae(name)
    device = resolve_device(config.device)
    store, sae = _open_inputs(ws, files, device)
    sae_sha256 = sha256_file(files.weights)  # read once: at the paper's size the weights are 1.7 GB

    atlas_dir = files.atlas_dir
    build_id = _build_id(store, files, sae_sha256, config)
    work_dir = atlas_dir / f".build-{build_id}"
    _remove_stale(atlas_dir, ".build-", keep=work_dir.name)
    work_dir.mkdir(parents=True, exist_ok=True)

    n_features = int(sae.cfg.d_sae)
    if config.engine == "ray":
        from clipatlas.atlas.ray_pass import run_stream_on_ray

        state = run_stream_on_ray(store, sae, work_dir=work_dir, config=config, device=device)
        sae = sae.to(device)
    else:
        state = stream.run_stream(
            store,
            sae.encode_sparse,
            n_features,
            work_dir=work_dir,
            top_k=config.top_k,
            codes_per_image=config.codes_per_image,
            chunk_size=config.chunk_size,
            device=device,
            checkpoint_seconds=config.checkpoint_seconds,
        )
    arrays_dir = atlas_dir / f"{db.ARRAYS_PREFIX}{build_id}"
    codes = stream.load_codes(work_dir, len(store), config.chunk_size)
    db.save_arrays(arrays_dir, {**dict(zip(db.CODE_ARRAYS, codes)), db.HIST_ARRAY: state.hist.cpu().numpy()})

    tables = _feature_tables(store, sae, state, codes, config, device)
    image_ids = store.metadata.column("image_id").to_pylist()
    example_rows = sorted({example[4] for example in tables["examples"]})
    thumbs = (
        make_thumbnails(store, [(row, image_ids[row]) for row in example_rows], atlas_dir) if config.thumbnails else {}
    )
    kept = _kept_rows(files.atlas_db, sae_sha256)
    meta = {
        "encoder": store.encoder,
        "sae": files.name,
        "n_features": n_features,
        "n_images": len(store),
        "top_k": config.top_k,
        "codes_per_image": config.codes_per_image,
        "hist_edges": json.dumps(stream.HIST_EDGES.tolist()),
        "arrays_dir": arrays_dir.name,
        "build_id": build_id,
        "sae_sha256": sae_sha256,
        "config": json.dumps(config.build_params(), sort_keys=True),
    }
    tables = {**tables, **kept, "thumbnails": sorted(thumbs.items())}
    db.write_database(files.atlas_db, meta, tables)
    _remove_stale(atlas_dir, db.ARRAYS_PREFIX, keep=arrays_dir.name)
    shutil.rmtree(work_dir)
    return Atlas.open(ws, files.name)


def _open_inputs(ws: Workspace, files: SAEFiles, device: torch.device):
    """The store and the SAE, checked against each other."""
    from clipatlas.sae import SAE
    from clipatlas.store import Store

    store = Store.open(ws.root)
    if len(store) == 0:
        raise UserError(
            f"the store in {ws.root} is empty; embed images first with: clipatlas embed SOURCE -w {ws.root}"
        )
    sae = SAE.from_pretrained(files.dir, device=device).eval()
    if not all(torch.isfinite(param).all() for param in sae.parameters()):
        raise UserError(
            f"SAE {files.name!r} has NaN or Inf weights (a diverged training run); "
            "retrain it with a lower learning rate"
        )
    if int(sae.cfg.d_in) != store.d:
        raise UserError(
            f"SAE {files.name!r} takes {sae.cfg.d_in}-d inputs but the store holds {store.d}-d embeddings; "
            "train an SAE on this store"
        )
    return store, sae


def _build_id(store, files: SAEFiles, sae_sha256: str, config: AtlasConfig) -> str:
    """Hash of everything the result depends on: store shards, SAE weights, options."""
    identity = {
        "shards": [s["emb_sha256"] for s in store.manifest["shards"]],
        "metadata": [s["meta_sha256"] for s in store.manifest["shards"]],
        "sae": sae_sha256,
        "cfg": files.config.read_text(),
        "config": config.build_params(),
        "schema": db.ATLAS_SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _remove_stale(atlas_dir: Path, prefix: str, keep: str) -> None:
    if atlas_dir.is_dir():
        for path in atlas_dir.iterdir():
            if path.name.startswith(prefix) and path.name != keep and path.is_dir():
                shutil.rmtree(path)


def _feature_tables(store, sae, state, codes, config: AtlasConfig, device: torch.device) -> dict[str, Any]:
    """Rows of the tables the build makes (features, examples, relations), from the pass and the SAE."""
    indptr, code_features, code_values = codes
    count = state.count.cpu().numpy()
    total = state.total.cpu().numpy()
    max_act = state.max.cpu().numpy().astype(np.float64)
    alive = np.flatnonzero(count > 0)
    n_features = len(count)
    with torch.no_grad():
        decoder = sae.W_dec.detach().to(device).float()
        encoder = sae.W_enc.detach().to(device).float().T
    decoder_np = decoder.cpu().numpy()

    coords, clusters = feature_map(decoder_np[alive], method=config.map_method)
    features = []
    position = {int(f): j for j, f in enumerate(alive)}
    for f in range(n_features):
        j = position.get(f)
        xy = (float(coords[j, 0]), float(coords[j, 1]), int(clusters[j])) if j is not None else (None, None, None)
        mean = float(total[f] / count[f]) if count[f] else 0.0
        features.append(
            (f, int(count[f] > 0), int(count[f]), float(count[f] / len(store)), float(max_act[f]), mean, *xy)
        )

    top_values = state.top_values.cpu().numpy()
    top_rows = state.top_rows.cpu().numpy()
    examples = []
    image_ids = store.metadata.column("image_id").to_pylist()
    for f, rank in zip(*np.nonzero(top_rows >= 0)):
        row = int(top_rows[f, rank])
        examples.append((int(f), "top", int(rank), None, row, image_ids[row], float(top_values[f, rank])))
    q_feature, q_decile, q_row, q_value = relations.quantile_samples(
        indptr, code_features, code_values, max_act, config.per_decile
    )
    rank_in_feature = np.arange(len(q_feature)) - np.searchsorted(q_feature, q_feature)
    for f, rank, decile, row, value in zip(q_feature, rank_in_feature, q_decile, q_row, q_value):
        examples.append((int(f), "quantile", int(rank), int(decile), int(row), image_ids[row], float(value)))

    coactivating = list(
        zip(
            *(
                column.tolist()
                for column in relations.coactivation(indptr, code_features, n_features, config.n_coactivating)
            )
        )
    )
    similar = []
    for kind, directions in (("decoder", decoder), ("encoder", encoder)):
        others, cosines = relations.cosine_neighbours(directions, alive, config.n_similar)
        for f, rank in np.ndindex(*others.shape):
            similar.append((f, kind, rank, int(others[f, rank]), float(cosines[f, rank])))

    return {"features": features, "examples": examples, "coactivating": coactivating, "similar": similar}


# What later stages added, kept across rebuilds for the same SAE weights (label ids included,
# so the scores still point at their labels).
KEPT_TABLES = {
    "icons": "SELECT feature, path FROM icons ORDER BY feature",
    "labels": "SELECT id, feature, source, text, model, prompt_version, description, evidence FROM labels ORDER BY id",
    "scores": "SELECT * FROM scores ORDER BY rowid",
}


def _kept_rows(previous: Path, sae_sha256: str) -> dict[str, list[tuple]]:
    """Icons, labels and scores of the previous atlas, if it described the same SAE weights."""
    if not previous.is_file():
        return {}
    try:
        db.migrate(previous)  # an atlas of an older schema: its labels in today's columns
        conn = db.connect(previous, readonly=True)
    except sqlite3.DatabaseError as exc:
        log.warning("previous atlas database unreadable (%s); its icons and labels are not carried over", exc)
        return {}
    try:
        same_sae = conn.execute("SELECT value FROM meta WHERE key = 'sae_sha256'").fetchone()
        if same_sae is None or same_sae[0] != sae_sha256:
            log.info("the SAE was retrained since the last atlas: its icons and labels are not carried over")
            return {}
        return {table: [tuple(r) for r in conn.execute(sql)] for table, sql in KEPT_TABLES.items()}
    except sqlite3.DatabaseError as exc:
        log.warning("previous atlas database unreadable (%s); its icons and labels are not carried over", exc)
        return {}
    finally:
        conn.close()
