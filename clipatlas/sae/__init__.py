"""Sparse autoencoders: architectures, training, metrics (see docs/ARCHITECTURE.md)."""

from clipatlas.sae.metrics import Metrics, compute_metrics, evaluate, plot_pareto
from clipatlas.sae.model import (
    ARCHITECTURES,
    SAE,
    BatchTopKConfig,
    JumpReLUConfig,
    ReLUConfig,
    SAEConfig,
    SAEFormatError,
    TopKConfig,
    config_from_dict,
    make_config,
)
from clipatlas.sae.training import TrainConfig, train, train_many

__all__ = [
    "Metrics",
    "TrainConfig",
    "compute_metrics",
    "evaluate",
    "plot_pareto",
    "train",
    "train_many",
    "ARCHITECTURES",
    "BatchTopKConfig",
    "JumpReLUConfig",
    "ReLUConfig",
    "SAE",
    "SAEConfig",
    "SAEFormatError",
    "TopKConfig",
    "config_from_dict",
    "make_config",
]
