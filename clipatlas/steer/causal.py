"""The causal check: does the image an edit produced express the edited feature?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CausalCheck:
    """Feature `feature` before the edit and in the re-embedded result; rank 0 = the strongest feature,
    rank d_sae = not firing at all (so sparse codes' many zeros do not share a good rank)."""

    feature: int
    before_activation: float
    after_activation: float
    before_rank: int
    after_rank: int


def causal_check(sae, before: np.ndarray, after: np.ndarray, feature: int) -> CausalCheck:
    """How strongly, and at what rank among all features, `feature` fires before and after."""
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(np.stack([before, after]).astype(np.float32))).float().cpu().numpy()
    ranks = np.where(z[:, feature] > 0, (z > z[:, [feature]]).sum(axis=1), z.shape[1])
    return CausalCheck(int(feature), float(z[0, feature]), float(z[1, feature]), int(ranks[0]), int(ranks[1]))
