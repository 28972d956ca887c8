"""The playground's engine: uploads, their embeddings, recipe validation and generation runs.

Recipes come from the browser as the JSON documents `clipatlas.steer.Recipe` reads. An
uploaded image enters a recipe as `"upload:<id>"`; the server swaps in the path of the copy it
saved under the workspace (named by the upload's hash), so no path in a request ever reaches
the filesystem.
"""

from __future__ import annotations

import collections
import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from PIL import Image

from clipatlas._io import atomic_write_bytes
from clipatlas.errors import UserError
from clipatlas.steer.decoders import split_decoder_name
from clipatlas.steer.engine import Steerer
from clipatlas.steer.recipe import Recipe
from clipatlas.steer.success import default_strength

UPLOAD_PREFIX = "upload:"
DISPLAY_SIZE = 512
MAX_EDITS = 1024


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class UploadRegistry:
    """Recent uploads by id: a re-encoded PNG to show, the image's embedding, and a full-size PNG
    saved under `directory` (named by the upload's hash) that recipes use as their input."""

    def __init__(self, max_kept: int, directory: Path):
        self._max_kept = max_kept
        self.directory = directory
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, tuple[bytes, np.ndarray]] = collections.OrderedDict()

    @staticmethod
    def id_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32]

    def add(self, data: bytes, image: Image.Image, embedding: np.ndarray) -> str:
        upload_id = self.id_of(data)
        if not self.path(upload_id).is_file():
            atomic_write_bytes(self.path(upload_id), png_bytes(image))
        shown = image.copy()
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        with self._lock:
            # Re-encoding means the server only ever serves and steers pixels it decoded itself.
            self._items[upload_id] = (png_bytes(shown), np.asarray(embedding, dtype=np.float32))
            self._items.move_to_end(upload_id)
            while len(self._items) > self._max_kept:
                self._items.popitem(last=False)
        return upload_id

    def _get(self, upload_id: str) -> tuple[bytes, np.ndarray]:
        with self._lock:
            item = self._items.get(upload_id)
        if item is None:
            raise HTTPException(404, f"upload {upload_id} is no longer kept on the server; upload the image again")
        return item

    def path(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.png"

    def png(self, upload_id: str) -> bytes:
        return self._get(upload_id)[0]

    def embedding(self, upload_id: str) -> np.ndarray:
        return self._get(upload_id)[1]


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
    def validate(self, payload: Any):
        """(recipe, hash) of a playground recipe, or a 422 saying what is wrong with it."""
        if not isinstance(payload, dict):
            raise HTTPException(422, "a recipe is a JSON object with an image, edits, a decoder and a seed")
        # The server, not the page, picks the decoder, its settings and the SAE: a page may not
        # load other weights or ask for a thousand diffusion steps.
        payload = {**self.confine_inputs(payload), "decoder": self.decoder_name, "settings": {}, "sae": self.sae_name}
        try:
            recipe = Recipe.from_dict(payload)
        except (UserError, ValueError, TypeError, KeyError) as exc:
            raise HTTPException(422, f"invalid recipe: {exc}") from exc
        if len(recipe.edits) > MAX_EDITS:
            raise HTTPException(422, f"a recipe may stack at most {MAX_EDITS} edits, this one has {len(recipe.edits)}")
        n_features = self.atlas.n_features
        for edit in recipe.edits:
            if edit.feature is not None and not 0 <= edit.feature < n_features:
                raise HTTPException(
                    422, f"edit {edit.op} names feature {edit.feature}; this SAE has 0..{n_features - 1}"
                )
        return recipe, recipe.hash

    def confine_inputs(self, value: Any) -> Any:
        """Swap `upload:<id>` for the saved upload's path; refuse any other string that names a file.

        Recipes replayed from the command line may name paths (images, decoder weights); recipes
        sent to the server may name only store image ids, this server's uploads and plain names.
        """
        if isinstance(value, dict):
            return {k: self.confine_inputs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.confine_inputs(v) for v in value]
        if isinstance(value, str) and value.startswith(UPLOAD_PREFIX):
            upload_id = value[len(UPLOAD_PREFIX) :]
            path = self.uploads.path(upload_id) if upload_id.isalnum() else None
            if path is None or not path.is_file():
                raise HTTPException(422, f"upload {upload_id!r} is not on this server; upload the image again")
            return str(path)
        if isinstance(value, str) and ("/" in value or "\\" in value):
            raise HTTPException(
                422, f"recipes sent to the server name images by store id or upload, not by path ({value!r})"
            )
        return value

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
