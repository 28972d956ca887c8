"""The playground's engine: uploads, their embeddings, recipe validation and generation runs.

Recipes come from the browser as the JSON documents `clipatlas.steer.Recipe` reads, validated
first by `schemas.RecipeIn`. An uploaded image enters a recipe as `"upload:<id>"`, the copy the
server saved under the workspace (named by the upload's hash). The app's `Steerer` is built
with `allow_files=False`, so store images and those uploads are all a request can make it read.
Saved uploads expire: unused for `uploads_max_age_s`, or least recently used beyond `uploads_max_bytes`.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from PIL import Image

from clipatlas._io import atomic_path, atomic_write_bytes, open_npy
from clipatlas.errors import UserError
from clipatlas.steer.decoders import split_decoder_name
from clipatlas.steer.engine import Steerer, png_bytes
from clipatlas.steer.recipe import Recipe
from clipatlas.steer.success import default_strength
from clipatlas.web.schemas import RecipeIn
from clipatlas.workspace import Workspace

DISPLAY_SIZE = 512


class UploadRegistry:
    """Recent uploads by id: a re-encoded PNG to show, the image's embedding, and a full-size PNG
    saved in the workspace (`Workspace.upload(id)`) that recipes use as their input, with its
    embedding beside it, so another process of `serve --workers N` (or a restarted server) reads an
    upload back instead of answering 404. Saved files are deleted when unused for `max_age_s`, or
    least recently used first beyond `max_bytes`."""

    def __init__(self, max_kept: int, workspace: Workspace, max_bytes: int, max_age_s: float):
        self._max_kept = max_kept
        self.workspace = workspace
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, tuple[bytes, np.ndarray]] = collections.OrderedDict()
        self.expire()  # uploads left by an earlier run

    @staticmethod
    def id_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32]

    def add(self, data: bytes, image: Image.Image, embedding: np.ndarray) -> str:
        upload_id = self.id_of(data)
        path = self.workspace.upload(upload_id)
        embedding, embedding_path = np.asarray(embedding, dtype=np.float32), self.workspace.upload_embedding(upload_id)
        if not embedding_path.is_file():
            with atomic_path(embedding_path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, embedding)
        if not path.is_file():  # written last: a reader that finds the image finds its embedding
            atomic_write_bytes(path, png_bytes(image))
        path.touch()  # its last use: expiry deletes the least recently used first
        self._keep(upload_id, image, embedding)
        self.expire(keep=path)
        return upload_id

    def _keep(self, upload_id: str, image: Image.Image, embedding: np.ndarray) -> tuple[bytes, np.ndarray]:
        shown = image.copy()
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        # Re-encoding means the server only ever serves and steers pixels it decoded itself.
        item = (png_bytes(shown), embedding)
        with self._lock:
            self._items[upload_id] = item
            self._items.move_to_end(upload_id)
            while len(self._items) > self._max_kept:
                self._items.popitem(last=False)
        return item

    def _read_back(self, upload_id: str) -> tuple[bytes, np.ndarray] | None:
        """An upload another process (or an earlier run) saved, from the workspace; None if it is gone."""
        try:
            path = self.workspace.upload(upload_id)
            embedding = open_npy(self.workspace.upload_embedding(upload_id), mmap_mode=None)
            with Image.open(path) as saved:
                image = saved.convert("RGB")
        except (OSError, ValueError, UserError):  # never saved, expired, or written by an older version
            return None
        return self._keep(upload_id, image, np.asarray(embedding, dtype=np.float32))

    def expire(self, keep: Path | None = None) -> list[Path]:
        """Delete saved uploads unused for too long, then the least recently used beyond the size budget
        (never `keep`, the one just added); returns the files deleted."""
        now, files = time.time(), []
        for path in self.workspace.uploads_dir.glob("*.png"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted meanwhile by another request
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        files.sort()  # least recently used first
        total, deleted = sum(size for _, size, _ in files), []
        for mtime, size, path in files:
            if path != keep and (now - mtime > self._max_age_s or total > self._max_bytes):
                path.unlink(missing_ok=True)
                path.with_suffix(".npy").unlink(missing_ok=True)  # its embedding (Workspace.upload_embedding)
                total -= size
                deleted.append(path)
        with self._lock:
            for path in deleted:
                self._items.pop(path.stem, None)
        return deleted

    def _get(self, upload_id: str) -> tuple[bytes, np.ndarray]:
        with self._lock:
            item = self._items.get(upload_id)
        if item is None:
            item = self._read_back(upload_id)
        if item is None:
            raise HTTPException(404, f"upload {upload_id} is no longer kept on the server; upload the image again")
        return item

    def png(self, upload_id: str) -> bytes:
        return self._get(upload_id)[0]

    def embedding(self, upload_id: str) -> np.ndarray:
        return self._get(upload_id)[1]


def recipe_images(recipe: Recipe) -> list[str]:
    """Every image a recipe reads: its input and those its transfer and difference edits name."""
    named = [recipe.image]
    for edit in recipe.edits:
        named += [ref for ref in (edit.image, edit.other) if ref is not None]
    return named


def default_decoder(encoder_id: str) -> str:
    """Kandinsky when the workspace was embedded with the encoder its decoder was trained on."""
    return "kandinsky" if encoder_id.startswith("kandinsky-clip") else "retrieval"


class Steering:
    """Validate playground recipes and run them through `clipatlas.steer` on a worker thread."""

    def __init__(self, steerer: Steerer, uploads: UploadRegistry, decoder: str | None = None, sae: str | None = None):
        """`sae`: the SAE name recipes record (None: the workspace's only SAE, as the app was asked)."""
        self.steerer = steerer
        self.sae_name = sae
        self.atlas = steerer.atlas
        self.uploads = uploads
        self.decoder_name = decoder or default_decoder(self.atlas.store.encoder)
        split_decoder_name(self.decoder_name)  # an unknown decoder fails at start-up, not on first use
        # The strength a feature added in the playground starts at, from this SAE's measured steering success.
        self.default_strength = default_strength(self.atlas, self.decoder_name)
        self._encoder_lock = threading.Lock()

    # -- uploads --------------------------------------------------------------------------------
    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The workspace encoder's embedding of an uploaded image.

        The encoder is the one steering loads, so a 2.5 GB CLIP is held once.
        """
        with self._encoder_lock:  # encoders are not guaranteed thread-safe
            try:
                encoder = self.steerer.encoder
            except (UserError, ImportError, LookupError, ValueError, OSError) as exc:  # unknown or unloadable encoder
                encoder_id = self.atlas.store.encoder
                raise HTTPException(
                    409,
                    f"this workspace's encoder {encoder_id!r} cannot embed new images here ({exc}); "
                    "choose an image from the store instead",
                ) from exc
            return np.asarray(encoder.encode_images([image])[0], dtype=np.float32)

    # -- recipes --------------------------------------------------------------------------------
    def validate(self, sent: RecipeIn) -> tuple[Recipe, str]:
        """(recipe, hash) of a playground recipe, or a 422 saying what is wrong with it."""
        # The server, not the page, picks the decoder, its settings and the SAE: a page may not
        # load other weights or ask for a thousand diffusion steps.
        payload = {**sent.to_recipe_dict(), "decoder": self.decoder_name, "settings": {}, "sae": self.sae_name}
        try:
            recipe = Recipe.from_dict(payload)
            for ref in recipe_images(recipe):
                self.steerer.row_of(ref)  # a store image or an upload of this server (the Steerer reads no other file)
        except UserError as exc:
            raise HTTPException(422, f"invalid recipe: {exc}") from exc
        n_features = self.atlas.n_features
        for edit in recipe.edits:
            named = [edit.feature] if edit.feature is not None else list(edit.features or ())
            if any(f >= n_features for f in named):
                raise HTTPException(422, f"edit {edit.op} names feature {max(named)}; this SAE has 0..{n_features - 1}")
        return recipe, recipe.hash

    def run(self, recipe, progress) -> dict[str, Any]:
        """Run one recipe (on the queue's worker thread) and return its before/after PNGs."""
        progress(0.05, f"steering and decoding with {recipe.decoder}")
        started = time.perf_counter()
        result = self.steerer.run(recipe)
        return {
            "images": [result.before_png, result.after_png],
            "decoder": result.decoder,
            "seconds": time.perf_counter() - started,
            "recipe": recipe.to_dict(),
            "before_ranking": self.ranking(result.before_ranking),
            "after_ranking": self.ranking(result.after_ranking),
        }

    def ranking(self, hits) -> list[dict[str, Any]] | None:
        """Retrieval hits as image ids, scores and the edited features' activations (rows are server internals)."""
        if hits is None:
            return None
        top = self.steerer.max_activation
        return [
            {
                "image_id": hit.image_id,
                "score": float(hit.score),
                "cosine": float(hit.cosine),
                "targets": [
                    {
                        "feature": t.feature,
                        "activation": t.activation,
                        "max_activation": float(top[t.feature]),
                        "rank": t.rank if t.activation > 0 else None,
                        "raised": t.raised,
                    }
                    for t in hit.targets
                ],
            }
            for hit in hits
        ]
