"""Text to image with feature rules: the Kandinsky 2.2 prior turns a prompt into an image
embedding, SAE edits change it (ban a feature, boost another), the decoder draws it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipatlas.devices import inference_dtype, resolve_device
from clipatlas.errors import UserError
from clipatlas.steer.config import KANDINSKY_PRIOR_ID, GenerateConfig
from clipatlas.steer.decoders import KandinskyDecoder, split_decoder_name
from clipatlas.steer.edits import Edit, steer_embedding
from clipatlas.steer.engine import png_bytes, steerer_for

PRIOR_DEFAULTS = {"prior_steps": 25, "prior_guidance": 4.0}


@dataclass(frozen=True)
class GenerateResult:
    """The prompt's image without the rules (before) and with them (after), same seeds."""

    before: np.ndarray
    after: np.ndarray
    before_png: bytes
    after_png: bytes


@functools.lru_cache(maxsize=1)
def load_prior_pipeline(path_or_id: str = KANDINSKY_PRIOR_ID):
    from diffusers import KandinskyV22PriorPipeline

    device = resolve_device("auto")
    try:
        prior = KandinskyV22PriorPipeline.from_pretrained(path_or_id, dtype=inference_dtype(device))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the Kandinsky 2.2 prior from {path_or_id!r} ({exc}); pass a local copy with --prior PATH"
        ) from exc
    prior.set_progress_bar_config(disable=True)
    return prior.to(device)


def prompt_embedding(prior, prompt: str, seed: int, steps: int, guidance: float) -> tuple[np.ndarray, np.ndarray]:
    """(image embedding of `prompt`, the prior's negative = zero-image embedding), raw CLIP scale."""
    if not prompt.strip():
        raise UserError("give a non-empty prompt")
    out = prior(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator(device="cpu").manual_seed(seed),
    )
    return (out.image_embeds[0].float().cpu().numpy(), out.negative_image_embeds[0].float().cpu().numpy())


def generate(
    workspace, prompt: str, edits: Sequence[Edit], name: str | None = None, config: GenerateConfig | None = None
) -> GenerateResult:
    """Prompt -> prior embedding -> edits on its SAE latents -> Kandinsky decoder."""
    config = config or GenerateConfig()
    base, path = split_decoder_name(config.decoder)
    if base != "kandinsky":
        raise UserError("generate draws with the Kandinsky decoder; use --decoder kandinsky[:PATH_OR_ID]")
    settings, seed = dict(config.settings), config.seed
    prior_opts = {key: settings.pop(key, default) for key, default in PRIOR_DEFAULTS.items()}
    steerer = steerer_for(workspace, name)
    x, negative = prompt_embedding(
        load_prior_pipeline(config.prior),
        prompt,
        seed,
        int(prior_opts["prior_steps"]),
        float(prior_opts["prior_guidance"]),
    )
    edited = steer_embedding(steerer.sae, x, list(edits), steerer.context())
    drawer = KandinskyDecoder(path or KandinskyDecoder.default_id, negative)
    images = drawer.decode(np.stack([x, edited]), seed=seed, settings=settings).images
    return GenerateResult(x, edited, png_bytes(images[0]), png_bytes(images[1]))


def write_result(result: GenerateResult, out: Path, before: Path | None = None) -> None:
    from clipatlas._io import atomic_write_bytes

    atomic_write_bytes(out, result.after_png)
    if before is not None:
        atomic_write_bytes(before, result.before_png)
