"""Decoders turn (edited) embeddings into images. A registry maps names to factories:

- `retrieval`: the store images that best show each embedding (for an edit: `ranking.EditRanker`'s
  mix of cosine and the edited features' activations), as a ranked list and a contact sheet.
  Works for any encoder, needs no GPU.
- `kandinsky[:PATH_OR_ID]`: diffusers `KandinskyV22Pipeline` (image_embeds -> image).
- `kandinsky-img2img[:PATH_OR_ID]`: `KandinskyV22Img2ImgPipeline`, keeping the input's layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipatlas.atlas.thumbs import thumbnail_image
from clipatlas.atlas.types import ImageCodes
from clipatlas.devices import inference_dtype, resolve_device
from clipatlas.errors import UserError
from clipatlas.steer.ann import retrieval_index
from clipatlas.steer.config import KANDINSKY_DECODER_ID, RetrievalConfig
from clipatlas.steer.ranking import CosineIndex, EditRanker, Guide

# The seed system's Cog predictor: 512 px, 12 steps, guidance 4, fp16, seed 1.
KANDINSKY_DEFAULTS = {"steps": 12, "guidance": 4.0, "height": 512, "width": 512, "strength": 0.5}
NOT_CLIP_ENCODERS = ("efficientnet",)
TILES_KEPT = 1024  # contact-sheet tiles a retrieval decoder keeps drawn


@dataclass(frozen=True)
class TargetActivation:
    """A feature an edit changed, as it fires in a shown image: its activation, its rank in the image's
    stored code (0 = strongest; `NOT_IN_CODE` when absent) and whether the edit raised or removed it."""

    feature: int
    activation: float
    rank: int
    raised: bool


@dataclass(frozen=True)
class Hit:
    """A shown store image: `score` ranked it (the cosine, or the edit-aware mix for an edited embedding)."""

    row: int
    image_id: str
    score: float
    cosine: float
    targets: tuple[TargetActivation, ...] = ()


@dataclass(frozen=True)
class Decoded:
    """One image per input embedding; retrieval also gives its ranked hits and the hits' store rows."""

    images: list[Image.Image]
    rankings: list[list[Hit]] | None = None


# -- retrieval -------------------------------------------------------------------------------------
def nearest_rows(store, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines), each (B, k) best first: an exact cosine search over the store."""
    return CosineIndex(store).search(queries, k)


def _tile(store, row: int, size: int) -> Image.Image:
    try:
        image = store.open_image(row).convert("RGB")
    except Exception:  # synthetic stores and moved files have no pixels; show the id instead
        image = Image.new("RGB", (size, size), (200, 200, 200))
        ImageDraw.Draw(image).text((4, size // 2 - 6), str(store.meta(row)["image_id"])[:18], fill=(40, 40, 40))
    image = thumbnail_image(image, size)
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def contact_sheet(
    store, rows: Sequence[int], tile: int, draw_tile: Callable[[Any, int, int], Image.Image] = _tile
) -> Image.Image:
    """The images of `rows` in a near-square grid, best first (left to right, top to bottom).
    `draw_tile(store, row, size)`: one tile (a cache of them may stand in)."""
    cols = max(1, math.ceil(math.sqrt(len(rows))))
    lines = max(1, math.ceil(len(rows) / cols))
    sheet = Image.new("RGB", (cols * tile, lines * tile), (255, 255, 255))
    for i, row in enumerate(rows):
        sheet.paste(draw_tile(store, int(row), tile), ((i % cols) * tile, (i // cols) * tile))
    return sheet


def settings_config(cls, settings: dict[str, Any] | None, decoder: str):
    """A decoder's settings dataclass `cls` from `settings` (unknown keys refused in one line)."""
    settings = dict(settings or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UserError(f"decoder {decoder!r} has no settings {unknown}; it takes {known}")
    return cls(**settings)


def retrieval_config(settings: dict[str, Any] | None) -> RetrievalConfig:
    """The retrieval decoder's settings from a recipe's `settings`."""
    return settings_config(RetrievalConfig, settings, "retrieval")


class RetrievalDecoder:
    """The store images that best show each embedding (`RetrievalConfig`): for an edited embedding with a
    `Guide`, ranked by the edit-aware mix of `ranking.EditRanker`, never the unedited image; without one,
    by cosine. Its image is a contact sheet of the ranked images; `k` == 1 gives the single best image."""

    name = "retrieval"

    def __init__(self, store, codes: ImageCodes, max_activation: np.ndarray):
        self.store = store
        self._codes = codes
        self._max_activation = np.asarray(max_activation, dtype=np.float32)
        self._ranker: EditRanker | None = None
        self._lock = threading.Lock()
        # Recipes from one image share most of their sheets' images (its unedited sheet is the same for
        # every edit): each tile is read and scaled once (a 128-pixel tile is 48 KiB).
        self._tiles = functools.lru_cache(maxsize=TILES_KEPT)(_tile)

    @property
    def ranker(self) -> EditRanker:
        with self._lock:  # the web's worker threads share one decoder: build the index once
            if self._ranker is None:
                self._ranker = EditRanker(retrieval_index(self.store), self._codes, self._max_activation)
            return self._ranker

    def rank(
        self, embeddings: np.ndarray, guides: Sequence[Guide | None] | None = None, settings: dict | None = None
    ) -> list[list[Hit]]:
        """The ranked hits of each embedding (no images drawn)."""
        cfg = retrieval_config(settings)
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        guides = list(guides) if guides is not None else [None] * len(embeddings)
        ids = self.store.metadata.column("image_id")
        rankings = []
        for y, guide in zip(embeddings, guides):
            if guide is None:
                rows, cosines = self.ranker.index.search(y[None], cfg.k)
                rankings.append(
                    [Hit(int(r), str(ids[int(r)]), float(c), float(c)) for r, c in zip(rows[0], cosines[0])]
                )
                continue
            ranked = self.ranker.rank(y, guide, cfg, cfg.k)
            rankings.append(
                [
                    Hit(
                        int(row),
                        str(ids[int(row)]),
                        float(score),
                        float(cosine),
                        tuple(
                            TargetActivation(f, float(act), int(rank), f in guide.raised)
                            for f, act, rank in zip(guide.targets, acts, ranks)
                        ),
                    )
                    for row, score, cosine, acts, ranks in zip(
                        ranked.rows, ranked.scores, ranked.cosines, ranked.activations, ranked.ranks
                    )
                ]
            )
        return rankings

    def decode(
        self,
        embeddings: np.ndarray,
        *,
        seed: int = 1,
        settings: dict[str, Any] | None = None,
        init_images: Sequence[Image.Image] | None = None,
        guides: Sequence[Guide | None] | None = None,
    ) -> Decoded:
        rankings = self.rank(embeddings, guides, settings)
        tile = retrieval_config(settings).tile
        return Decoded(
            [contact_sheet(self.store, [hit.row for hit in hits], tile, self._tiles) for hits in rankings], rankings
        )

    def result_embeddings(
        self, embeddings: np.ndarray, *, guides=None, settings=None, seed: int = 1, init_images=None, encode=None
    ) -> np.ndarray:
        """The store embedding of the image shown first for each embedding (exact: no re-encoding)."""
        settings = {**(settings or {}), "k": 1}
        return self.store.rows(np.array([hits[0].row for hits in self.rank(embeddings, guides, settings)]))


def parse_settings(pairs: list[str]) -> tuple[tuple[str, float], ...]:
    """Decoder settings from `KEY=NUMBER` strings (`--set steps=12`), sorted by key."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")  # no "=" leaves value empty, which fails to parse below
        try:
            settings[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UserError(f"bad decoder setting {pair!r}; write KEY=NUMBER, e.g. steps=12") from None
    return tuple(sorted(settings.items()))


def _options(defaults: dict[str, Any], settings: dict[str, Any] | None, decoder: str) -> dict[str, Any]:
    settings = dict(settings or {})
    unknown = set(settings) - set(defaults)
    if unknown:
        raise UserError(f"decoder {decoder!r} has no settings {sorted(unknown)}; it takes {sorted(defaults)}")
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"decoder setting {key!r} must be a positive number, got {value!r}")
    return {**defaults, **settings}


# -- Kandinsky 2.2 ---------------------------------------------------------------------------------
def zero_image_embedding(encoder) -> np.ndarray:
    """The encoder's embedding of an all-zero input tensor: Kandinsky's negative image embedding
    (its prior pipeline feeds `torch.zeros(1, 3, size, size)` to the image encoder)."""
    probe = encoder.preprocess(Image.new("RGB", (8, 8)))
    with torch.no_grad():
        return np.asarray(encoder.encode_tensors(torch.zeros((1, *probe.shape)))[0], dtype=np.float32)


@functools.lru_cache(maxsize=2)
def load_kandinsky_pipeline(path_or_id: str = KANDINSKY_DECODER_ID, img2img: bool = False):
    """The decoder pipeline in fp16 on CUDA (CPU offload when the GPU is small), fp32 on CPU."""
    from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline

    device = resolve_device("auto")
    dtype = inference_dtype(device)
    pipeline_class = KandinskyV22Img2ImgPipeline if img2img else KandinskyV22Pipeline
    try:
        pipe = pipeline_class.from_pretrained(path_or_id, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the Kandinsky 2.2 decoder from {path_or_id!r} ({exc}); pass a local "
            f"copy with --decoder kandinsky:PATH, or use --decoder retrieval (no GPU needed)"
        ) from exc
    if device.type == "cuda" and torch.cuda.get_device_properties(0).total_memory < 16 * 2**30:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class KandinskyDecoder:
    """Kandinsky 2.2 decoder; `negative` is `zero_image_embedding` of the workspace's encoder."""

    default_id = KANDINSKY_DECODER_ID

    def __init__(self, path_or_id: str, negative: np.ndarray, img2img: bool = False):
        self.img2img = img2img
        self.name = ("kandinsky-img2img" if img2img else "kandinsky") + (
            "" if path_or_id == KANDINSKY_DECODER_ID else f":{path_or_id}"
        )
        self.pipe = load_kandinsky_pipeline(path_or_id, img2img)
        self.negative = np.asarray(negative, dtype=np.float32)
        expected = self.pipe.unet.config.encoder_hid_dim
        if self.negative.shape != (expected,):
            raise UserError(
                f"the Kandinsky decoder takes {expected}-dim CLIP image embeddings, this workspace's "
                f"encoder gives {self.negative.shape[-1]}; embed with --encoder kandinsky-clip or "
                "steer with --decoder retrieval"
            )

    def decode(
        self,
        embeddings: np.ndarray,
        *,
        seed: int = 1,
        settings: dict[str, Any] | None = None,
        init_images: Sequence[Image.Image] | None = None,
        guides: Sequence[Guide | None] | None = None,
    ) -> Decoded:
        """One generated image per embedding (`guides` are for decoders that choose among stored images)."""
        opts = _options(KANDINSKY_DEFAULTS, settings, "kandinsky")
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if embeddings.shape[1] != self.negative.shape[0]:
            raise UserError(f"the decoder takes {self.negative.shape[0]}-dim embeddings, got {embeddings.shape[1]}")
        device = self.pipe._execution_device
        dtype = self.pipe.unet.dtype
        n = len(embeddings)
        # One generator per image, all with the same seed: every image starts from the same noise,
        # so before/after pairs and icons differ only by their embeddings.
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(n)]
        kwargs: dict[str, Any] = dict(
            image_embeds=torch.from_numpy(embeddings).to(device, dtype),
            negative_image_embeds=torch.from_numpy(np.tile(self.negative, (n, 1))).to(device, dtype),
            num_inference_steps=int(opts["steps"]),
            guidance_scale=float(opts["guidance"]),
            height=int(opts["height"]),
            width=int(opts["width"]),
            generator=generators,
            output_type="pil",
        )
        if self.img2img:
            if init_images is None or len(init_images) != n:
                raise UserError("kandinsky-img2img needs the input image; give an image file or a store image")
            if opts["strength"] > 1:
                raise UserError(
                    f"img2img strength is in (0, 1] (how much of the input to repaint), got {opts['strength']}"
                )
            kwargs.update(image=list(init_images), strength=float(opts["strength"]))
        return Decoded(list(self.pipe(**kwargs).images))

    def result_embeddings(
        self, embeddings: np.ndarray, *, guides=None, settings=None, seed: int = 1, init_images=None, encode=None
    ) -> np.ndarray:
        """The generated images re-embedded by `encode` (the store's encoder: list of images -> (n, d))."""
        images = self.decode(embeddings, seed=seed, settings=settings, init_images=init_images).images
        return np.asarray(encode(images), dtype=np.float32)


# -- registry ----------------------------------------------------------------------------------------
DecoderFactory = Callable[[str | None, Any], Any]


def _kandinsky_factory(img2img: bool) -> DecoderFactory:
    def make(arg: str | None, ctx) -> KandinskyDecoder:
        if ctx.store.encoder.startswith(NOT_CLIP_ENCODERS):
            # Same width (1280) as ViT-bigG, so no size check would catch it: the images would be noise.
            raise UserError(
                f"Kandinsky draws CLIP ViT-bigG image embeddings; this store holds {ctx.store.encoder} "
                "embeddings. Use --decoder retrieval, or embed with --encoder kandinsky-clip"
            )
        return KandinskyDecoder(arg or KANDINSKY_DECODER_ID, ctx.negative_embedding(), img2img=img2img)

    return make


DECODERS: dict[str, DecoderFactory] = {
    "retrieval": lambda arg, ctx: RetrievalDecoder(
        ctx.store, ctx.atlas.image_codes(), ctx.atlas.feature_table().max_activation
    ),
    "kandinsky": _kandinsky_factory(img2img=False),
    "kandinsky-img2img": _kandinsky_factory(img2img=True),
}


def split_decoder_name(spec: str) -> tuple[str, str | None]:
    """'kandinsky:/models/k22' -> ('kandinsky', '/models/k22'); raises UserError on unknown names."""
    base, sep, arg = spec.partition(":")
    if base not in DECODERS:
        raise UserError(
            f"unknown decoder {spec!r}; choose one of: retrieval, kandinsky[:PATH_OR_ID], "
            "kandinsky-img2img[:PATH_OR_ID]"
        )
    if base == "retrieval" and sep:
        raise UserError("the retrieval decoder takes no path; write --decoder retrieval")
    return base, (arg or None)


def make_decoder(spec: str, ctx):
    """A decoder by registry name; `ctx` (a `Steerer`) gives `.store`, `.atlas` and `.negative_embedding()`."""
    base, arg = split_decoder_name(spec)
    return DECODERS[base](arg, ctx)
