"""Settings of the steering commands (import-light: the command line makes its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KANDINSKY_DECODER_ID = "kandinsky-community/kandinsky-2-2-decoder"
KANDINSKY_PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


@dataclass(frozen=True)
class IconConfig:
    features: str = "alive"
    """Which features get an icon: all, alive, or comma-separated ids."""
    decoder: str = "retrieval"
    """retrieval (nearest store image, no GPU) or kandinsky[:PATH_OR_ID]."""
    strength: float = 7.5
    """The feature is set to this many times its max activation."""
    template: str | None = None
    """Template image file or store image id (default: the packaged template)."""
    seed: int = 1
    """Seed of the decoder (every icon starts from the same noise)."""
    batch_size: int = 16
    """Icons decoded per decoder call."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Decoder settings as (key, value) pairs, e.g. (("steps", 12),)."""

    def identity(self, template_digest: str) -> dict:
        """What an icon depends on; icons made under another identity are redone."""
        return {
            "decoder": self.decoder,
            "strength": self.strength,
            "template": template_digest,
            "seed": self.seed,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class GenerateConfig:
    """Text -> Kandinsky 2.2 prior -> edits on the embedding's SAE latents -> decoder."""

    decoder: str = "kandinsky"
    """kandinsky[:PATH_OR_ID]: the decoder that draws the embedding."""
    prior: str = KANDINSKY_PRIOR_ID
    """The Kandinsky 2.2 prior: a hub id or a local path."""
    seed: int = 1
    """Seed of the prior and the decoder (before and after share it)."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Decoder and prior settings: steps, guidance, height, width, prior_steps, prior_guidance."""
