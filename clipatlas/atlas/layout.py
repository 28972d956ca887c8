"""The 2-D feature map: UMAP of the alive features' decoder directions, then k-means clusters."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch

log = logging.getLogger(__name__)

# UMAP needs a neighbourhood graph; below this many features a PCA projection is as informative.
MIN_UMAP_POINTS = 32


def feature_map(directions: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates (n, 2) float32 and cluster ids (n,) int32 of unit-normalised directions (n, d).

    `method` is "umap" or "pca"; both are deterministic for a fixed seed.
    """
    n = len(directions)
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
    unit = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    if method == "umap" and n >= MIN_UMAP_POINTS:
        coords = _umap(unit, seed)
    else:
        coords = _pca(unit)
    return coords.astype(np.float32), _clusters(coords, seed)


def _umap(unit: np.ndarray, seed: int) -> np.ndarray:
    import umap

    log.info("laying out %d features with UMAP", len(unit))
    reducer = umap.UMAP(
        n_neighbors=min(15, len(unit) - 1), min_dist=0.1, metric="cosine", random_state=seed, n_components=2
    )
    with warnings.catch_warnings():
        # A fixed seed makes UMAP single-threaded, as we want: it warns about exactly that.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return reducer.fit_transform(unit)


def _pca(unit: np.ndarray) -> np.ndarray:
    """Projection on the top two principal axes (eigenvectors of the d x d covariance: cheap for n >> d)."""
    centred = torch.from_numpy(unit - unit.mean(axis=0)).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    coords = (centred @ vectors[:, -2:].flip(1)).numpy()
    if coords.shape[1] < 2:  # one-dimensional inputs still get an (n, 2) layout
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    # Fix the sign of each axis so the layout does not flip between LAPACK builds.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(2)]) if len(coords) else np.ones(2)
    return coords * np.where(signs == 0, 1, signs)


def _clusters(coords: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    n = len(coords)
    n_clusters = max(1, min(n, round(math.sqrt(n / 2))))
    if n_clusters == 1:
        return np.zeros(n, np.int32)
    model = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
    return model.fit_predict(coords.astype(np.float64)).astype(np.int32)
