"""What every encoder offers the pipeline.

The split matters for speed: `preprocess` (PIL -> CHW float tensor) runs in DataLoader worker
processes, `encode_tensors` (a batch on the device) in the main one, so the model never waits
for image decoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipatlas.devices import inference_dtype, resolve_device
from clipatlas.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EncoderOptions:
    device: str = "auto"
    dtype: str = "auto"  # float16 on CUDA, float32 elsewhere

    def resolve(self) -> tuple[torch.device, torch.dtype]:
        device = resolve_device(self.device)
        if self.dtype == "auto":
            return device, inference_dtype(device)
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of auto, {', '.join(DTYPES)}")
        if device.type == "cpu" and self.dtype == "float16":
            raise UserError("float16 is slow and inexact on the CPU; use --dtype float32 or bfloat16")
        return device, DTYPES[self.dtype]


class Encoder(ABC):
    """An image encoder: `id` (what the store records), `dim`, preprocess, encode."""

    id: str
    dim: int
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image to a (3, H, W) float32 tensor."""

    def preprocessor(self) -> Callable[[Image.Image], torch.Tensor]:
        """`preprocess` as a picklable callable that holds no model weights (shipped to decode workers)."""
        return self.preprocess

    @abstractmethod
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) on the device, in the model dtype, to (n, dim) embeddings."""

    @torch.inference_mode()
    def encode_tensors(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (n, 3, H, W) to float32 embeddings on the CPU."""
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        return self._forward(pixels).float().cpu()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """RGB images to a float32 (n, dim) array."""
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images[start : start + batch_size]])
            out.append(self.encode_tensors(batch).numpy())
        return np.concatenate(out, axis=0)

    def info(self) -> dict[str, Any]:
        """What the store manifest records about the encoder."""
        return {
            "id": self.id,
            "dim": self.dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
        }
