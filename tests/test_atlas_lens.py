"""Lens labels and the feature map, on constructed inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from clipatlas.atlas import lens
from clipatlas.atlas.layout import MIN_UMAP_POINTS, feature_map


def orthonormal(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, rows)))
    return q.T.astype(np.float32)


def test_head_labels_name_the_class_a_direction_raises():
    weight = orthonormal(10, 16)
    names = [f"class{i}" for i in range(10)]
    directions = np.stack([2 * weight[3], weight[7] + 0.5 * weight[1]])
    labels = lens.head_labels(weight, names, directions, np.array([40, 41]))
    assert [(label.feature, label.source, label.text) for label in labels] == [
        (40, "imagenet", "class3"),
        (41, "imagenet", "class7"),
    ]
    assert labels[0].score["logit"][0] == pytest.approx(2.0, abs=1e-5)
    assert labels[1].score["terms"][:2] == ["class7", "class1"]
    assert len(labels[1].score["terms"]) == lens.TOP_TERMS


def test_text_labels_pick_the_nearest_vocabulary_entry():
    text = orthonormal(6, 8, seed=1) * 5  # unnormalised text embeddings
    vocab = ["cat", "dog", "tree", "car", "sky", "sea"]
    directions = np.stack([text[4] * 0.1, text[0] + text[2] * 0.3])
    labels = lens.text_labels(text, vocab, directions, np.array([0, 1]))
    assert [label.text for label in labels] == ["sky", "cat"]
    assert labels[0].score["cosine"][0] == pytest.approx(1.0, abs=1e-5)
    assert labels[1].score["terms"][1] == "tree"


def test_caption_labels_keep_recurring_words_only():
    captions = {
        3: ["A red traffic light.", "traffic light at night", "the traffic light is red", None, "a cat"],
        4: ["only one caption"],
        5: ["dog", "cat", "bird", "fish"],
    }
    labels = {label.feature: label for label in lens.caption_labels(captions)}
    assert set(labels) == {3}
    assert labels[3].text == "light, traffic, red"
    assert labels[3].score == {"words": {"light": 3, "traffic": 3, "red": 2}, "captioned": 4}
    assert lens.caption_words("The photo of an emoji: Traffic-Light!") == {"traffic", "light"}


def test_pca_map_handles_tiny_sets():
    for n in (0, 1, 2, 5):
        coords, clusters = feature_map(np.random.default_rng(n).standard_normal((n, 4)), method="umap")
        assert coords.shape == (n, 2) and clusters.shape == (n,) and np.isfinite(coords).all()


def two_groups(n_each: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 24))
    return np.concatenate([c + 0.05 * rng.standard_normal((n_each, 24)) for c in centres])


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_map_separates_groups_and_is_deterministic(method):
    points = two_groups(MIN_UMAP_POINTS // 2 + 4)
    coords, clusters = feature_map(points, method=method)
    again, _ = feature_map(points, method=method)
    np.testing.assert_array_equal(coords, again)
    half = len(points) // 2
    assert not set(clusters[:half]) & set(clusters[half:]), "a cluster mixes the two groups"
    spread = max(coords[:half].std(axis=0).max(), coords[half:].std(axis=0).max())
    assert np.linalg.norm(coords[:half].mean(axis=0) - coords[half:].mean(axis=0)) > 3 * spread


class FakeEncoder:
    """Stands in for an encoder that offers both lenses (EfficientNet head, CLIP text tower)."""

    def __init__(self, weight, vocab_embeddings):
        self.weight, self.vocab_embeddings = weight, vocab_embeddings

    def imagenet_head(self):
        return self.weight, np.zeros(len(self.weight)), [f"class{i}" for i in range(len(self.weight))]

    def text_embeddings(self, vocab):
        return self.vocab_embeddings[: len(vocab)]


def test_encoder_lens_labels_use_whatever_the_encoder_offers(monkeypatch):
    import clipatlas.encoders
    from clipatlas.errors import UserError

    basis = orthonormal(8, 16, seed=2)
    encoder = FakeEncoder(basis[:4], basis[4:])
    monkeypatch.setattr(clipatlas.encoders, "load_encoder", lambda name: encoder, raising=False)
    directions = np.stack([basis[2] + basis[5], basis[1] + basis[6]])  # head part + text part
    labels = lens.encoder_lens_labels("fake", directions, np.array([7, 9]), ["w0", "w1", "w2", "w3"])
    assert [(label.feature, label.source, label.text) for label in labels] == [
        (7, "imagenet", "class2"),
        (9, "imagenet", "class1"),
        (7, "clip-text", "w1"),
        (9, "clip-text", "w2"),
    ]

    def unavailable(name):
        raise UserError(f"unknown encoder {name}")

    monkeypatch.setattr(clipatlas.encoders, "load_encoder", unavailable, raising=False)
    assert lens.encoder_lens_labels("gone", directions, np.array([7, 9]), ["w0"]) == []
    assert lens.encoder_lens_labels(lens.NO_ENCODER, directions, np.array([7, 9]), ["w0"]) == []
