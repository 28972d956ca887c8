"""Run recipes against a workspace: resolve images, apply edits, decode before and after."""

from __future__ import annotations

import functools
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipatlas.atlas import Atlas
from clipatlas.errors import UserError
from clipatlas.sources import ImageDecodeError, open_uri
from clipatlas.steer.decoders import Hit, make_decoder, zero_image_embedding
from clipatlas.steer.edits import SteerContext, checked_embedding, edit_latents, embedding_from_latents
from clipatlas.steer.ranking import Guide
from clipatlas.steer.recipe import Recipe
from clipatlas.steer.success import EditCheck, check_edits
from clipatlas.workspace import Workspace

UPLOAD_PREFIX = "upload:"  # an image uploaded to the playground, kept in the workspace by its id


def png_bytes(image: Image.Image) -> bytes:
    # zlib level 1, not Pillow's 6: the web server encodes two per generation, and a retrieval generation
    # then takes 24-30 ms of CPU instead of 35-38 (bench/RESULTS.md), for images 41% bigger (28 vs 20 KB).
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class SteerResult:
    """Before (the unedited embedding) and after (the edited one), decoded with the same seed."""

    recipe_hash: str
    decoder: str
    before: np.ndarray  # (d,) raw encoder scale
    after: np.ndarray
    before_png: bytes
    after_png: bytes
    before_ranking: list[Hit] | None = None  # retrieval decoder only
    after_ranking: list[Hit] | None = None
    guide: Guide | None = None  # the features the edits raised and removed (None: no edit)


class Steerer:
    """Steering over one opened atlas: its SAE, store, encoder and decoders, each loaded once."""

    def __init__(self, atlas: Atlas, *, allow_files: bool = True):
        """`allow_files`: recipes may name any image file (the command line, where the user typed it); without
        it (the web server) only store images and this workspace's uploads (`upload:<id>`)."""
        self.atlas = atlas
        self.allow_files = allow_files
        self.workspace = self.atlas.workspace
        self.store = self.atlas.store
        self.sae = self.atlas.sae
        self._encoder = None
        self._decoders: dict[str, object] = {}
        self._lock = threading.Lock()

    # -- inputs ------------------------------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            try:
                from clipatlas.encoders import load_encoder
            except ImportError as exc:
                raise UserError(
                    f"image files need the encoders stage to embed them ({exc}); name images by store image id instead"
                ) from exc
            self._encoder = load_encoder(self.store.encoder, device="auto")
        return self._encoder

    def negative_embedding(self) -> np.ndarray:
        return zero_image_embedding(self.encoder)

    def embedding_of(self, ref: str) -> np.ndarray:
        """A store image id, `sha256:HEX` of a stored image, or an image file embedded now."""
        row = self.row_of(ref)
        if row is not None:
            return np.array(self.store[row], dtype=np.float32)  # writable: torch.from_numpy shares it
        return np.asarray(self.encoder.encode_images([self.image_of(ref)])[0], dtype=np.float32)

    def row_of(self, ref: str) -> int | None:
        """The store row `ref` names, None for an image file `file_of` allows; else a UserError."""
        if ref.startswith("sha256:"):
            digests = self.store.metadata.column("sha256").to_pylist()
            if ref[7:] not in digests:
                raise UserError(f"no stored image has {ref}")
            return digests.index(ref[7:])
        try:
            return self.store.row_of(ref)
        except KeyError:
            if self.file_of(ref) is not None:
                return None
        if self.allow_files:
            raise UserError(f"{ref!r} is neither a store image id, an upload nor an image file")
        # The same words whether or not a file of that name exists: the answer reveals nothing of the disk.
        raise UserError(
            f"{ref!r} is not a store image id nor an image uploaded to this server; "
            "choose a store image, or upload the image again"
        )

    def file_of(self, ref: str) -> Path | None:
        """The image file `ref` names, if it may be read: `upload:<id>` of this workspace, or, only with
        `allow_files`, any file. The one place that decides which files a recipe reads."""
        if ref.startswith(UPLOAD_PREFIX):
            try:
                path = self.workspace.upload(ref[len(UPLOAD_PREFIX) :])
            except UserError:
                return None
        elif self.allow_files:
            path = Path(ref).expanduser()
        else:
            return None
        return path if path.is_file() else None

    def image_of(self, ref: str) -> Image.Image:
        row = self.row_of(ref)
        if row is not None:
            return self.store.open_image(row).convert("RGB")
        try:
            return open_uri(str(self.file_of(ref)))  # as `embed` reads it: EXIF-upright, alpha on white
        except ImageDecodeError as exc:
            raise UserError(f"cannot read image {ref} ({exc})") from exc

    def context(self) -> SteerContext:
        def latents_of(ref: str) -> torch.Tensor:
            x = torch.from_numpy(self.embedding_of(ref))[None]
            with torch.no_grad():
                return self.sae.encode(x)[0]

        return SteerContext(latents_of=latents_of, max_activation=lambda f: self.atlas.feature(f).max_activation)

    # -- running ---------------------------------------------------------------------------------
    def decoder(self, spec: str):
        with self._lock:
            if spec not in self._decoders:
                self._decoders[spec] = make_decoder(spec, self)
            return self._decoders[spec]

    @functools.cached_property
    def max_activation(self) -> np.ndarray:
        return self.atlas.feature_table().max_activation

    def edit(self, recipe: Recipe, x: np.ndarray) -> tuple[np.ndarray, Guide | None]:
        """The recipe's edited embedding of `x`, and its guide (None when the recipe has no edits)."""
        x = checked_embedding(self.sae, x)
        if not recipe.edits:
            return x, None
        z, z_edited = edit_latents(self.sae, x, recipe.edits, self.context())
        guide = Guide.of_edit(z.float().cpu().numpy(), z_edited.float().cpu().numpy(), x, self.max_activation)
        return embedding_from_latents(self.sae, x, z, z_edited), guide

    def steer(self, recipe: Recipe, x: np.ndarray | None = None) -> np.ndarray:
        """The edited embedding of the recipe's image (or of `x` when given)."""
        return self.edit(recipe, self.embedding_of(recipe.image) if x is None else x)[0]

    def run(self, recipe: Recipe) -> SteerResult:
        decoder = self.decoder(recipe.decoder)
        before = self.embedding_of(recipe.image)
        after, guide = self.edit(recipe, before)
        init = [self.image_of(recipe.image)] * 2 if "img2img" in recipe.decoder else None
        decoded = decoder.decode(
            np.stack([before, after]),
            seed=recipe.seed,
            settings=recipe.settings_dict,
            init_images=init,
            guides=[None, guide],
        )
        rankings = decoded.rankings or [None, None]
        return SteerResult(
            recipe.hash,
            decoder.name,
            before,
            after,
            png_bytes(decoded.images[0]),
            png_bytes(decoded.images[1]),
            rankings[0],
            rankings[1],
            guide,
        )

    def verify(self, recipe: Recipe, result: SteerResult) -> list[EditCheck]:
        """Check each set/add target feature in what the recipe produced (`success.EditCheck`).

        Retrieval: the image shown first is a store image, so its store embedding is exact, and it is
        compared with the input. A generator: the before and after images (same seed) are both re-embedded
        by the store's encoder, so only the edit differs between them."""
        if result.after_ranking is not None:
            before = result.before
            produced = np.array(self.store[result.after_ranking[0].row], dtype=np.float32)
        else:
            images = [Image.open(io.BytesIO(png)).convert("RGB") for png in (result.before_png, result.after_png)]
            before, produced = np.asarray(self.encoder.encode_images(images), dtype=np.float32)
        targets = np.array([edit.feature for edit in recipe.edits if edit.op in ("set", "add")], dtype=np.int64)
        if not len(targets):
            return []
        z, z_edited = edit_latents(self.sae, checked_embedding(self.sae, result.before), recipe.edits, self.context())
        edited = (z_edited != z).cpu().numpy()
        return check_edits(
            self.sae,
            np.tile(before, (len(targets), 1)),
            np.tile(produced, (len(targets), 1)),
            targets,
            np.tile(edited, (len(targets), 1)),
            self.max_activation[targets],
        )


@functools.lru_cache(maxsize=4)
def _steerer(root: Path, name: str, sae_mtime: float) -> Steerer:
    return Steerer(Atlas.open(root, name))


def steerer_for(workspace: str | Path | Workspace, name: str | None = None) -> Steerer:
    """A cached `Steerer` per workspace and SAE (commands that steer many times share one);
    a retrained SAE gets a fresh one."""
    ws = Workspace.of(workspace)
    files = ws.sae(name)
    return _steerer(ws.root, files.name, files.weights.stat().st_mtime if files.weights.exists() else 0.0)


def run_recipe(workspace: str | Path | Workspace, recipe: Recipe, name: str | None = None) -> SteerResult:
    """Run `recipe` on the workspace's SAE `name` (default: the recipe's, else the only one)."""
    return steerer_for(workspace, name or recipe.sae).run(recipe)
