"""Sparse autoencoders: architectures, training, metrics (see docs/ARCHITECTURE.md).

The configs are imported at once (the command line builds its flags from them); the modules
that need torch load on first use, so `clipatlas --help` stays fast.
"""

from clipatlas.sae.config import (
    ARCH_CONFIGS,
    BatchTopKConfig,
    EvalConfig,
    JumpReLUConfig,
    ReLUConfig,
    SAEConfig,
    SAEFormatError,
    TopKConfig,
    TrainConfig,
    config_from_dict,
    make_config,
)

_LAZY = {
    "ARCHITECTURES": "model",
    "SAE": "model",
    "Metrics": "metrics",
    "compute_metrics": "metrics",
    "evaluate": "metrics",
    "plot_pareto": "metrics",
    "train": "training",
    "train_many": "training",
}

__all__ = [
    "ARCH_CONFIGS",
    "BatchTopKConfig",
    "EvalConfig",
    "JumpReLUConfig",
    "ReLUConfig",
    "SAEConfig",
    "SAEFormatError",
    "TopKConfig",
    "TrainConfig",
    "config_from_dict",
    "make_config",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"clipatlas.sae.{_LAZY[name]}"), name)
    raise AttributeError(name)
