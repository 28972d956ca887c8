"""clipatlas: find, explain and steer the features inside image embeddings."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so `import clipatlas` does not import torch.
    if name == "SAE":
        from clipatlas.sae import SAE

        return SAE
    raise AttributeError(name)
