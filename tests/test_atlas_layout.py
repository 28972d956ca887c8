"""The feature map, on constructed inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from clipatlas.atlas.layout import MIN_UMAP_POINTS, feature_map


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
