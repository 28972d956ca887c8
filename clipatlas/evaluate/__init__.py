"""The vision SAE suite (`clipatlas evaluate`): reconstruction, downstream fidelity, sparse probing,
purity, stability, label scores and steering, for an SAE and the baselines it has to beat, in one
report (see `clipatlas.evaluate.suite` and docs/ARCHITECTURE.md).

The config is imported at once (the command line builds its flags from it); the suite loads torch
and scikit-learn on first use.
"""

from clipatlas.evaluate.config import BASELINES, SECTIONS, EvaluateConfig

_LAZY = {"evaluate_suite": "suite", "print_report": "render", "print_compare": "render"}

__all__ = ["BASELINES", "SECTIONS", "EvaluateConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"clipatlas.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(name)
