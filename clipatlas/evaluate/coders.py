"""What the suite codes embeddings with: the SAE itself and the baselines it has to beat.

A coder maps raw-scale embeddings x (B, d) to codes z (B, width) and, where it can, back to a
reconstruction; its unit `directions` (width, d) are what the stability section matches. Every
number of the report is computed from these three by the same code, so SAE and baselines are
measured alike.

The baselines are fit on the same seeded sample of the SAE's own training rows; `k` is the SAE's
mean L0 on its held-out rows, rounded, and `width` its number of latents:

- `pca`: the top k principal components of the centred data; every image uses all k (dense codes).
- `pca-width`: the top min(width, d) components; each image keeps its k largest |coefficients|
  (as wide as the SAE where the embedding's dimension allows, and as sparse).
- `kmeans`: scikit-learn KMeans with min(width, sample rows) centroids (random rows as the initial
  centroids, a few Lloyd iterations). An image is coded by its k nearest centroids (Euclidean),
  with the least-squares coefficients a that best rebuild it from them around the mean:
  x_hat = mean + sum_j a_j (c_j - mean). Its directions are the unit (c_j - mean).
- `random`: a TopK SAE of the same width and k, untrained: unit random decoder rows, the encoder
  their transpose, the decoder bias at the mean. It is the trained SAE's own starting point, so
  the gap to it is what training added.
- `raw`: the embedding's own dimensions, for probing and purity (nothing to rebuild or match).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from clipatlas.sae.sparse import sparse_decode

SAE_CODER = "sae"  # the coder name of the evaluated SAE in every report
RIDGE = 1e-6  # relative ridge of the k-means least squares: near-duplicate centroids stay solvable
LSTSQ_ROWS = 256  # rows per batched least-squares solve: bounds the (rows, k, d) gather


Codes = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class Coder(ABC):
    """One way of coding embeddings. Codes are dense (B, width) tensors for `dense` coders (every
    code non-zero) and otherwise (indices, values), each (B, m), the non-zeros of each row padded
    with index -1 and value 0 (as `SAE.encode_sparse` returns them). `signed`: codes take both
    signs (probing and purity read each latent in both directions); `sign_free`: directions are
    defined up to sign (stability matches |cosine|)."""

    name: str
    description: str
    width: int
    sparsity: int | None = None  # codes per image the coder is given (the SAE's k), where it is given one
    signed: bool = False
    dense: bool = False
    sign_free: bool = False

    @abstractmethod
    def encode(self, x: torch.Tensor) -> Codes:
        """The codes of raw-scale embeddings (B, d)."""

    def decode(self, codes: Codes) -> torch.Tensor | None:
        """The raw-scale reconstruction (B, d), or None where the coder does not rebuild."""
        return None

    def directions(self) -> np.ndarray | None:
        """Unit directions (width, d) that stability matches, or None."""
        return None


def _unit_rows(matrix: torch.Tensor) -> np.ndarray:
    matrix = matrix.detach().float().cpu()
    return (matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def _decode_rows(indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """sum_j values[b, j] * rows[indices[b, j]], padding (index -1) left out."""
    return sparse_decode(indices.clamp_min(0), values * (indices >= 0), rows)


class SAECoder(Coder):
    """A trained (or untrained) SAE module: its own sparse encode and decode."""

    def __init__(self, sae, name: str, description: str):
        self.sae, self.name, self.description = sae.eval(), name, description
        self.width = int(sae.cfg.d_sae)

    @torch.no_grad()
    def encode(self, x):
        return self.sae.encode_sparse(x)

    @torch.no_grad()
    def decode(self, codes):
        return self.sae.decode_sparse(*codes)

    def directions(self):
        return _unit_rows(self.sae.W_dec)


class PCACoder(Coder):
    """Principal components (rows of `components`, unit, by decreasing variance) around `mean`;
    with `keep` < number of components, each image keeps only its `keep` largest |coefficients|."""

    signed = True
    sign_free = True

    def __init__(self, name: str, mean: np.ndarray, components: np.ndarray, keep: int, device: torch.device):
        self.name = name
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.components = torch.as_tensor(components, dtype=torch.float32, device=device)
        self.width = len(components)
        self.keep = self.sparsity = min(keep, self.width)
        self.dense = self.keep == self.width
        sparse = "" if self.dense else f", each image keeping its {self.keep} largest |coefficients|"
        self.description = f"top {self.width} principal components of the training sample{sparse}"

    @torch.no_grad()
    def encode(self, x):
        z = (x.to(self.mean) - self.mean) @ self.components.T
        if self.dense:
            return z
        indices = z.abs().topk(self.keep, dim=1).indices
        return indices, z.gather(1, indices)

    @torch.no_grad()
    def decode(self, codes):
        if self.dense:
            return codes @ self.components + self.mean
        return _decode_rows(*codes, self.components) + self.mean

    def directions(self):
        return self.components.cpu().numpy()


class KMeansCoder(Coder):
    """k nearest centroids, least-squares coefficients around the mean (see the module docstring)."""

    signed = True

    def __init__(self, name: str, mean: np.ndarray, centroids: np.ndarray, k: int, device: torch.device):
        self.name = name
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32, device=device)
        self.atoms = self.centroids - self.mean
        self.half_sq_norms = 0.5 * (self.centroids**2).sum(dim=1)
        self.width = len(centroids)
        self.k = self.sparsity = min(k, self.width)
        self.description = (
            f"{self.width} k-means centroids; each image coded by its {self.k} nearest, "
            "with least-squares coefficients around the mean"
        )

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """(B, k) indices of the nearest centroids: argmin |x - c|^2 = argmax x.c - |c|^2 / 2."""
        return torch.addmm(-self.half_sq_norms, x, self.centroids.T).topk(self.k, dim=1).indices

    @torch.no_grad()
    def encode(self, x):
        x = x.to(self.mean)
        indices = self.nearest(x)
        values = torch.empty(indices.shape, dtype=x.dtype, device=x.device)
        eye = torch.eye(self.k, dtype=torch.float64, device=x.device)
        for start in range(0, len(x), LSTSQ_ROWS):
            index = indices[start : start + LSTSQ_ROWS]
            atoms = self.atoms[index].double()  # (b, k, d)
            gram = atoms @ atoms.transpose(1, 2)
            ridge = RIDGE * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
            target = atoms @ (x[start : start + LSTSQ_ROWS] - self.mean).double().unsqueeze(2)
            solved = torch.linalg.solve(gram + ridge[:, None, None] * eye, target)
            values[start : start + LSTSQ_ROWS] = solved.squeeze(2).to(x.dtype)
        return indices, values

    @torch.no_grad()
    def decode(self, codes):
        return _decode_rows(*codes, self.atoms) + self.mean

    def directions(self):
        return _unit_rows(self.atoms)


class RawCoder(Coder):
    """The embedding's own dimensions."""

    name = "raw"
    signed = True
    dense = True

    def __init__(self, d: int):
        self.width = d
        self.description = f"the embedding's own {d} dimensions (probing and purity only)"

    def encode(self, x):
        return x.float()


# -- fitting -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitData:
    """What a baseline is fit from: a sample of training rows and the SAE's size."""

    x: np.ndarray  # (n, d) float32 training sample
    k: int  # the SAE's held-out L0, rounded (at least 1)
    width: int  # the SAE's number of latents
    input_scale: float  # the SAE's input scale (the random dictionary shares it)
    seed: int
    kmeans_iters: int
    device: torch.device

    @property
    def mean(self) -> np.ndarray:
        return self.x.mean(axis=0, dtype=np.float64)

    @cached_property
    def principal(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, every principal component by decreasing variance): computed once for pca and pca-width."""
        return principal_components(self.x, self.x.shape[1])


def principal_components(x: np.ndarray, n: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), the top n unit principal components (n, d)) from the covariance, accumulated in
    float64 over row blocks. Each component's largest-|entry| is positive (a fixed sign)."""
    mean = x.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), block):
        centred = x[start : start + block].astype(np.float64) - mean
        scatter += centred.T @ centred
    values, vectors = np.linalg.eigh(scatter)
    components = vectors[:, np.argsort(values)[::-1][:n]].T
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    return mean, components * signs[:, None]


def fit_pca(data: FitData) -> Coder:
    n = min(data.k, data.x.shape[1], max(len(data.x) - 1, 1))
    mean, components = data.principal
    return PCACoder("pca", mean, components[:n], n, data.device)


def fit_pca_width(data: FitData) -> Coder:
    n = min(data.width, data.x.shape[1], max(len(data.x) - 1, 1))
    mean, components = data.principal
    return PCACoder("pca-width", mean, components[:n], data.k, data.device)


def fit_kmeans(data: FitData) -> Coder:
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    n_clusters = min(data.width, len(data.x))
    kmeans = KMeans(
        n_clusters, init="random", n_init=1, max_iter=data.kmeans_iters, random_state=data.seed, algorithm="lloyd"
    )
    with warnings.catch_warnings():
        # with about as many centroids as rows, duplicate images leave a few centroids without a
        # cluster of their own: expected here, and those centroids simply stay dead
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        kmeans.fit(data.x)
    return KMeansCoder("kmeans", data.mean, kmeans.cluster_centers_, data.k, data.device)


def fit_random(data: FitData) -> Coder:
    from clipatlas.sae import ARCHITECTURES, make_config

    d = data.x.shape[1]
    cfg = make_config("topk", d_in=d, d_sae=data.width, k=min(data.k, data.width), input_scale=data.input_scale)
    sae = ARCHITECTURES["topk"](cfg)
    sae.reset_parameters(torch.Generator().manual_seed(data.seed))
    with torch.no_grad():
        sae.b_dec.copy_(torch.as_tensor(data.mean * data.input_scale, dtype=torch.float32))
    description = (
        f"untrained TopK SAE: {data.width} random unit directions, k={cfg.k}, encoder = decoder transpose, "
        "decoder bias at the mean"
    )
    coder = SAECoder(sae.to(data.device), "random", description)
    coder.sparsity = cfg.k
    return coder


def fit_raw(data: FitData) -> Coder:
    return RawCoder(data.x.shape[1])


BASELINE_FITS: dict[str, Callable[[FitData], Coder]] = {
    "pca": fit_pca,
    "pca-width": fit_pca_width,
    "kmeans": fit_kmeans,
    "random": fit_random,
    "raw": fit_raw,
}
