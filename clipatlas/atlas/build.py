"""`build_atlas`: the store and a trained SAE in, `saes/<name>/atlas/` out.

Order of work: the streaming pass (checkpointed, resumable), then relations, map, labels and
thumbnails from its results, then the database, written to a temporary file and renamed
over `atlas.sqlite` in one step. Everything is deterministic, so a killed build re-run
produces the same database as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipatlas._io import atomic_path, sha256_file
from clipatlas.atlas import db, lens, relations, stream
from clipatlas.atlas.layout import feature_map
from clipatlas.atlas.query import LENS_SOURCES, Atlas, Label
from clipatlas.atlas.thumbs import make_thumbnails
from clipatlas.errors import UserError
from clipatlas.workspace import Workspace

log = logging.getLogger(__name__)

VOCAB_FROM_CAPTIONS = 5000


@dataclass(frozen=True)
class AtlasConfig:
    top_k: int = 32  # top images kept per feature
    per_decile: int = 3  # quantile samples per tenth of the activation range
    n_coactivating: int = 16
    n_similar: int = 16
    codes_per_image: int = 64  # strongest features kept per image (features_of_image, coactivation)
    chunk_size: int = 4096  # store rows per encoder call
    map_method: str = "umap"  # or "pca"
    device: str = "cpu"
    thumbnails: bool = True
    checkpoint_seconds: float = 30.0
    vocab_file: str | None = None  # words for CLIP text-tower labels; default: the store's caption words

    def __post_init__(self):
        for field in ("top_k", "per_decile", "n_coactivating", "n_similar", "codes_per_image", "chunk_size"):
            if getattr(self, field) < 1:
                raise UserError(f"atlas option {field} must be at least 1, got {getattr(self, field)}")
        if self.map_method not in ("umap", "pca"):
            raise UserError(f"map method must be 'umap' or 'pca', not {self.map_method!r}")
        if self.vocab_file is not None and not Path(self.vocab_file).is_file():
            raise UserError(
                f"vocabulary file {self.vocab_file} does not exist; give a text file with one entry per line"
            )

    def build_params(self) -> dict[str, Any]:
        """The options that change the result (not how often it checkpoints or makes thumbnails)."""
        params = dataclasses.asdict(self)
        for volatile in ("checkpoint_seconds", "thumbnails"):
            params.pop(volatile)
        return params


def build_atlas(
    workspace: str | Path | Workspace,
    name: str | None = None,
    top_k: int | None = None,
    *,
    config: AtlasConfig | None = None,
) -> Atlas:
    """Build (or resume building) the atlas of SAE `name`; returns the opened `Atlas`."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    config = config or AtlasConfig()
    if top_k is not None:
        config = dataclasses.replace(config, top_k=top_k)
    sae_dir = ws.sae_dir(name)
    store, sae = _open_inputs(ws, sae_dir, config.device)
    device = torch.device(config.device)

    atlas_dir = sae_dir / "atlas"
    build_id = _build_id(store, sae_dir, config)
    work_dir = atlas_dir / f".build-{build_id}"
    _remove_stale(atlas_dir, ".build-", keep=work_dir.name)
    work_dir.mkdir(parents=True, exist_ok=True)

    n_features = int(sae.cfg.d_sae)
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
    arrays_dir = atlas_dir / f"arrays-{build_id}"
    codes = stream.load_codes(work_dir, len(store), config.chunk_size)
    _save_arrays(
        arrays_dir,
        {
            "codes_indptr": codes[0],
            "codes_features": codes[1],
            "codes_values": codes[2],
            "hist": state.hist.cpu().numpy(),
        },
    )

    tables = _feature_tables(store, sae, state, codes, config, device)
    image_ids = store.metadata.column("image_id").to_pylist()
    example_rows = sorted(set(tables["examples_rows"]))
    thumbs = (
        make_thumbnails(store, [(row, image_ids[row]) for row in example_rows], atlas_dir) if config.thumbnails else {}
    )
    _write_database(
        atlas_dir,
        tables,
        thumbs,
        meta={
            "encoder": store.encoder,
            "sae": sae_dir.name,
            "n_features": n_features,
            "n_images": len(store),
            "top_k": config.top_k,
            "codes_per_image": config.codes_per_image,
            "hist_edges": json.dumps(stream.HIST_EDGES.tolist()),
            "arrays_dir": arrays_dir.name,
            "build_id": build_id,
            "sae_sha256": sha256_file(sae_dir / "sae.safetensors"),
            "config": json.dumps(config.build_params(), sort_keys=True),
        },
    )
    _remove_stale(atlas_dir, "arrays-", keep=arrays_dir.name)
    shutil.rmtree(work_dir)
    return Atlas.open(ws, sae_dir.name)


def _open_inputs(ws: Workspace, sae_dir: Path, device: str):
    """The store and the SAE, checked against each other."""
    from clipatlas.sae import SAE
    from clipatlas.store import Store

    store = Store.open(ws.root)
    if len(store) == 0:
        raise UserError(
            f"the store in {ws.root} is empty; embed images first with: clipatlas embed SOURCE -w {ws.root}"
        )
    sae = SAE.from_pretrained(sae_dir, device=device).eval()
    if not all(torch.isfinite(param).all() for param in sae.parameters()):
        raise UserError(
            f"SAE {sae_dir.name!r} has NaN or Inf weights (a diverged training run); "
            "retrain it with a lower learning rate"
        )
    if int(sae.cfg.d_in) != store.d:
        raise UserError(
            f"SAE {sae_dir.name!r} takes {sae.cfg.d_in}-d inputs but the store holds {store.d}-d embeddings; "
            "train an SAE on this store"
        )
    return store, sae


def _build_id(store, sae_dir: Path, config: AtlasConfig) -> str:
    """Hash of everything the result depends on: store shards, SAE weights, options."""
    identity = {
        "shards": [s["emb_sha256"] for s in store.manifest["shards"]],
        "metadata": [s["meta_sha256"] for s in store.manifest["shards"]],
        "sae": sha256_file(sae_dir / "sae.safetensors"),
        "cfg": (sae_dir / "cfg.json").read_text(),
        "config": config.build_params(),
        "schema": db.ATLAS_SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _remove_stale(atlas_dir: Path, prefix: str, keep: str) -> None:
    if atlas_dir.is_dir():
        for path in atlas_dir.iterdir():
            if path.name.startswith(prefix) and path.name != keep and path.is_dir():
                shutil.rmtree(path)


def _save_arrays(arrays_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    arrays_dir.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with atomic_path(arrays_dir / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array)


def _feature_tables(store, sae, state, codes, config: AtlasConfig, device: torch.device) -> dict[str, Any]:
    """Rows for every database table except thumbnails, from the pass and the SAE weights."""
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

    labels = _lens_labels(store, decoder_np[alive], alive, top_rows, config)
    return {
        "features": features,
        "examples": examples,
        "examples_rows": [e[4] for e in examples],
        "coactivating": coactivating,
        "similar": similar,
        "labels": [
            (label.feature, label.source, label.text, json.dumps(label.score, sort_keys=True)) for label in labels
        ],
    }


def _lens_labels(
    store, directions: np.ndarray, alive: np.ndarray, top_rows: np.ndarray, config: AtlasConfig
) -> list[Label]:
    captions = store.metadata.column("caption").to_pylist()
    captions_of_feature = {int(f): [captions[r] for r in top_rows[f] if r >= 0] for f in alive}
    labels = lens.caption_labels(captions_of_feature)
    if len(alive):
        labels = lens.encoder_lens_labels(store.encoder, directions, alive, _vocabulary(captions, config)) + labels
    return labels


def _vocabulary(captions: list[str | None], config: AtlasConfig) -> list[str]:
    if config.vocab_file:
        return [line.strip() for line in Path(config.vocab_file).read_text().splitlines() if line.strip()]
    counts = Counter(w for caption in captions for w in lens.caption_words(caption))
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:VOCAB_FROM_CAPTIONS]]


def _write_database(atlas_dir: Path, tables: dict[str, Any], thumbs: dict[str, str], meta: dict[str, Any]) -> None:
    """Write atlas.sqlite under a temporary name and rename it into place; keep icons and
    labeller labels of the previous build."""
    target = atlas_dir / db.DB_NAME
    kept_icons, kept_labels = _kept_rows(target, meta["sae_sha256"])
    with atomic_path(target) as tmp:  # an empty file is a valid empty sqlite database
        conn = db.connect(tmp, readonly=False)
        # A private temporary file, fsynced and renamed by atomic_path: no journal needed.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        try:
            with conn:
                db.create_schema(conn)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in sorted(meta.items())])
                conn.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tables["features"])
                conn.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?)", tables["examples"])
                conn.executemany("INSERT INTO coactivating VALUES (?, ?, ?, ?, ?)", tables["coactivating"])
                conn.executemany("INSERT INTO similar VALUES (?, ?, ?, ?, ?)", tables["similar"])
                conn.executemany(
                    "INSERT INTO labels (feature, source, text, score) VALUES (?, ?, ?, ?)",
                    tables["labels"] + kept_labels,
                )
                conn.executemany("INSERT INTO icons VALUES (?, ?)", kept_icons)
                conn.executemany("INSERT INTO thumbnails VALUES (?, ?)", sorted(thumbs.items()))
        finally:
            conn.close()


def _kept_rows(previous: Path, sae_sha256: str) -> tuple[list[tuple], list[tuple]]:
    """Icons and labeller labels of the previous atlas, if it described the same SAE weights."""
    if not previous.is_file():
        return [], []
    conn = db.connect(previous, readonly=True)
    try:
        same_sae = conn.execute("SELECT value FROM meta WHERE key = 'sae_sha256'").fetchone()
        if same_sae is None or same_sae[0] != sae_sha256:
            log.info("the SAE was retrained since the last atlas: its icons and labels are not carried over")
            return [], []
        icons = [tuple(r) for r in conn.execute("SELECT feature, path FROM icons ORDER BY feature")]
        placeholders = ",".join("?" * len(LENS_SOURCES))
        labels = [
            tuple(r)
            for r in conn.execute(
                f"SELECT feature, source, text, score FROM labels WHERE source NOT IN ({placeholders}) ORDER BY id",
                LENS_SOURCES,
            )
        ]
    except sqlite3.DatabaseError as exc:
        log.warning("previous atlas database unreadable (%s); its icons and labels are not carried over", exc)
        return [], []
    finally:
        conn.close()
    return icons, labels
