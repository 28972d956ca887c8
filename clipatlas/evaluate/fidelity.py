"""Downstream fidelity: the encoder's own task run on the reconstruction instead of the embedding
(the image analogue of a language model's "loss recovered").

- `ImageNetAgreement` (encoders with an ImageNet head, EfficientNet): the share of held-out images
  whose top-1 class is the same from x_hat as from x, and KL(p(x) || p(x_hat)) in nats. The same KL
  with every embedding replaced by the training mean (`kl_mean`) is the zero point:
  `kl_recovered` = 1 - kl / kl_mean (1: the head cannot tell x_hat from x; 0: no better than the mean).
- `ZeroShot` (CLIP encoders with a text tower): zero-shot classification of the labelled held-out
  images over the label column's classes ("a photo of a {class}"), from x and from x_hat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clipatlas.errors import UserError

ZERO_SHOT_TEMPLATE = "a photo of a {}"


class ImageNetAgreement:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: np.ndarray):
        self.weight, self.bias = weight.float(), bias.float()
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[None]
        self.n = self.agree = 0
        self.kl = self.kl_mean = 0.0

    def _log_probs(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(x.device), self.bias.to(x.device)
        return torch.log_softmax(x.float() @ weight.T + bias, dim=1)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, rows: np.ndarray) -> None:
        p, q = self._log_probs(x), self._log_probs(x_hat)
        m = self._log_probs(self.mean.to(x.device))
        self.n += len(x)
        self.agree += int((p.argmax(dim=1) == q.argmax(dim=1)).sum())
        self.kl += float((p.exp() * (p - q)).sum())
        self.kl_mean += float((p.exp() * (p - m)).sum())

    def result(self) -> dict[str, Any]:
        kl, kl_mean = self.kl / self.n, self.kl_mean / self.n
        return {
            "imagenet_top1_agreement": self.agree / self.n,
            "imagenet_kl": kl,
            "imagenet_kl_mean": kl_mean,
            "imagenet_kl_recovered": 1 - kl / kl_mean if kl_mean > 0 else None,
        }


class ZeroShot:
    def __init__(self, text_embeddings: np.ndarray, labels: np.ndarray):
        text = torch.as_tensor(np.asarray(text_embeddings), dtype=torch.float32)
        self.text = text / text.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.labels = labels
        self.n = self.correct = self.correct_original = self.agree = 0

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        unit = x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (unit @ self.text.to(x.device).T).argmax(dim=1).cpu()

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, rows: np.ndarray) -> None:
        labels = self.labels[rows]
        mask = torch.from_numpy(labels >= 0)
        if not mask.any():
            return
        truth = torch.from_numpy(labels[labels >= 0]).long()
        original, rebuilt = self._predict(x[mask.to(x.device)]), self._predict(x_hat[mask.to(x.device)])
        self.n += len(truth)
        self.correct += int((rebuilt == truth).sum())
        self.correct_original += int((original == truth).sum())
        self.agree += int((rebuilt == original).sum())

    def result(self) -> dict[str, Any]:
        if not self.n:
            return {}
        return {
            "zero_shot_accuracy": self.correct / self.n,
            "zero_shot_accuracy_original": self.correct_original / self.n,
            "zero_shot_agreement": self.agree / self.n,
            "zero_shot_images": self.n,
        }


class FidelityTasks:
    """The encoder's task heads, loaded once per evaluation run; `sinks()` makes fresh accumulators."""

    def __init__(self, encoder_id: str, labels, device: str):
        from clipatlas.interp.data import NO_ENCODER

        self.notes: list[str] = []
        self.head = None
        self.text = None
        self.labels = labels
        if encoder_id == NO_ENCODER:
            self.notes.append(f"the store's encoder ({encoder_id}) has no task head")
            return
        from clipatlas.encoders import load_encoder

        try:
            encoder = load_encoder(encoder_id, device=device)
        except (UserError, OSError, ValueError) as exc:
            self.notes.append(f"cannot load the store's encoder {encoder_id!r} for its task heads ({exc})")
            return
        if hasattr(encoder, "imagenet_head"):
            weight, bias, _ = encoder.imagenet_head()
            self.head = (weight, bias)
        if hasattr(encoder, "text_embeddings"):
            if labels is None:
                self.notes.append("zero-shot fidelity needs a label column")
            else:
                prompts = [ZERO_SHOT_TEMPLATE.format(c) for c in labels.classes]
                self.text = np.asarray(encoder.text_embeddings(prompts), dtype=np.float32)
        if self.head is None and self.text is None:
            self.notes.append(f"the store's encoder ({encoder_id}) has neither an ImageNet head nor a text tower")

    @property
    def available(self) -> bool:
        return self.head is not None or self.text is not None

    def sinks(self, mean: np.ndarray) -> list:
        """Fresh accumulators for one coder's pass; `mean` is the zero point of the KL."""
        sinks: list = []
        if self.head is not None:
            sinks.append(ImageNetAgreement(*self.head, mean))
        if self.text is not None:
            sinks.append(ZeroShot(self.text, self.labels.codes))
        return sinks
