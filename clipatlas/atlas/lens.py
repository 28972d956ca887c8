"""Labels that need no language model ("lens" labels).

* `imagenet`: a decoder direction pushed through the encoder's ImageNet classifier head
  (EfficientNet): the classes whose logits the direction raises most.
* `clip-text`: the vocabulary entries whose text embedding is most cosine-similar to the
  decoder direction (CLIP encoders that ship a text tower).
* `captions`: the words that recur in the captions of the feature's top images.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from clipatlas.atlas.types import Label

log = logging.getLogger(__name__)

TOP_TERMS = 5
NO_ENCODER = "synthetic"  # the encoder id of stores made from arrays (write_store's default)
STOPWORDS = frozenset(
    "a an and are as at be by for from has in is it its of on or that the this to was were with without "
    "image photo picture png jpg jpeg svg stamp emoji icon".split()
)


def head_labels(
    weight: np.ndarray, class_names: Sequence[str], directions: np.ndarray, features: np.ndarray
) -> list[Label]:
    """For each feature, the classes whose logit its decoder direction raises most (bias ignored:
    a direction changes logits by weight @ direction)."""
    logits = directions @ np.asarray(weight, dtype=np.float32).T  # (n, classes)
    return _top_terms(logits, class_names, features, "imagenet", "logit")


def text_labels(
    text_embeddings: np.ndarray, vocab: Sequence[str], directions: np.ndarray, features: np.ndarray
) -> list[Label]:
    """For each feature, the vocabulary entries nearest its decoder direction by cosine."""
    text = np.asarray(text_embeddings, dtype=np.float32)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    unit = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    return _top_terms(unit @ text.T, vocab, features, "clip-text", "cosine")


def _top_terms(
    scores: np.ndarray, names: Sequence[str], features: np.ndarray, source: str, score_name: str
) -> list[Label]:
    labels = []
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_TERMS]
    for feature, row_scores, best in zip(features, scores, top):
        terms = [names[j] for j in best]
        labels.append(
            Label(
                int(feature),
                source,
                terms[0],
                {"terms": terms, score_name: [round(float(row_scores[j]), 5) for j in best]},
            )
        )
    return labels


def caption_words(caption: str | None) -> set[str]:
    if not caption:
        return set()
    return {w for w in re.findall(r"[a-z]+", caption.lower()) if len(w) > 2 and w not in STOPWORDS}


def caption_labels(captions_of_feature: dict[int, list[str | None]], min_share: float = 0.3) -> list[Label]:
    """Words found in at least `min_share` (and at least two) of a feature's captioned top images."""
    labels = []
    for feature, captions in sorted(captions_of_feature.items()):
        word_sets = [caption_words(c) for c in captions if c]
        if len(word_sets) < 2:
            continue
        counts = Counter(w for words in word_sets for w in words)
        needed = max(2, min_share * len(word_sets))
        common = sorted(((n, w) for w, n in counts.items() if n >= needed), key=lambda item: (-item[0], item[1]))[
            :TOP_TERMS
        ]
        if common:
            labels.append(
                Label(
                    feature,
                    "captions",
                    ", ".join(w for _, w in common),
                    {"words": {w: n for n, w in common}, "captioned": len(word_sets)},
                )
            )
    return labels


def encoder_lens_labels(
    encoder_id: str, directions: np.ndarray, features: np.ndarray, vocab: Sequence[str]
) -> list[Label]:
    """ImageNet-head and text-tower labels from the store's encoder, where it offers them."""
    if encoder_id == NO_ENCODER:
        return []
    from clipatlas.encoders import load_encoder
    from clipatlas.errors import UserError

    try:
        encoder = load_encoder(encoder_id)
    except (UserError, OSError, ValueError) as exc:
        log.info("no encoder lens labels: cannot load encoder %r (%s)", encoder_id, exc)
        return []
    labels: list[Label] = []
    if hasattr(encoder, "imagenet_head"):
        weight, _bias, class_names = encoder.imagenet_head()
        labels += head_labels(_numpy(weight), class_names, directions, features)
    if hasattr(encoder, "text_embeddings") and vocab:
        labels += text_labels(_numpy(encoder.text_embeddings(list(vocab))), vocab, directions, features)
    return labels


def _numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy()
    return np.asarray(array, dtype=np.float32)
