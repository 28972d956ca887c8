"""CLIP image encoders through transformers (`CLIPVisionModelWithProjection`).

Two folder layouts are understood, for a hub id or a local path:

* the Kandinsky 2.2 prior layout: `image_encoder/` + `image_processor/` (and `text_encoder/` +
  `tokenizer/`, which give the text tower used for vocabulary labels);
* a plain CLIP checkpoint: the model config (+ `preprocessor_config.json`) at the top level.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipatlas.encoders.base import Encoder, EncoderOptions
from clipatlas.errors import UserError

log = logging.getLogger(__name__)

KANDINSKY_PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


def _subfolder(path_or_id: str, name: str) -> str | None:
    """`name` when the repo or folder uses the Kandinsky layout, else None (top level)."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return name if (local / name).is_dir() else None
    return name  # hub ids: only the Kandinsky layout is assumed for remote repos of this kind


def _load_processor(path_or_id: str, image_size: int):
    from transformers import CLIPImageProcessor

    subfolder = _subfolder(path_or_id, "image_processor")
    try:
        return CLIPImageProcessor.from_pretrained(path_or_id, subfolder=subfolder or "")
    except (OSError, ValueError):
        # A bare vision checkpoint: CLIP's standard preprocessing at the model's resolution.
        log.warning("no image processor config in %s; using CLIP's default preprocessing at %d px", path_or_id, image_size)
        return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


class ClipVisionEncoder(Encoder):
    def __init__(self, encoder_id: str, path_or_id: str, options: EncoderOptions = EncoderOptions()):
        from transformers import CLIPVisionModelWithProjection

        self.id = encoder_id
        self.path_or_id = path_or_id
        self.device, self.dtype = options.resolve()
        subfolder = _subfolder(path_or_id, "image_encoder")
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(path_or_id, subfolder=subfolder or "", dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load a CLIP vision model from {path_or_id!r} ({exc}). Give a local folder in the Kandinsky "
                "prior layout (image_encoder/, image_processor/) or a CLIP checkpoint, e.g. after "
                f"`huggingface-cli download {KANDINSKY_PRIOR_ID} --local-dir PRIOR` use --encoder hf:PRIOR"
            ) from exc
        self.model = model.eval().to(self.device)
        self.dim = int(model.config.projection_dim)
        self.processor = _load_processor(path_or_id, int(model.config.image_size))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


class ClipEncoderWithText(ClipVisionEncoder):
    """A CLIP image encoder whose repo also ships the text tower, for vocabulary labels."""

    def __init__(self, encoder_id: str, path_or_id: str, options: EncoderOptions = EncoderOptions()):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        super().__init__(encoder_id, path_or_id, options)
        self.text_model = CLIPTextModelWithProjection.from_pretrained(
            path_or_id, subfolder=_subfolder(path_or_id, "text_encoder") or "", dtype=self.dtype).eval().to(self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(path_or_id, subfolder=_subfolder(path_or_id, "tokenizer") or "")

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Projected text embeddings (n, dim), in the same space as the image embeddings."""
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
            embeds = self.text_model(**tokens.to(self.device)).text_embeds
            out.append(embeds.float().cpu().numpy())
        return np.concatenate(out, axis=0)


def has_text_tower(path_or_id: str) -> bool:
    local = Path(path_or_id).expanduser()
    if not local.is_dir():
        return False  # never probe the hub: loading stays offline-friendly
    return ((local / "text_encoder").is_dir() and (local / "tokenizer").is_dir()) or (
        (local / "tokenizer_config.json").is_file() and _is_full_clip_config(local))


def _is_full_clip_config(local: Path) -> bool:
    import json

    try:
        return "text_config" in json.loads((local / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_clip(encoder_id: str, path_or_id: str, options: EncoderOptions) -> ClipVisionEncoder:
    cls = ClipEncoderWithText if has_text_tower(path_or_id) else ClipVisionEncoder
    return cls(encoder_id, path_or_id, options)
