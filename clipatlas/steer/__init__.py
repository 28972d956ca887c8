"""Steering: edit SAE features of an image embedding and decode the result (see docs/ARCHITECTURE.md).

Modules load on first use: the command line reads the configs and recipes without importing torch.
"""

import importlib

from clipatlas.steer.config import IconConfig, IndexConfig, RetrievalConfig, SuccessConfig

_LAZY = {
    "CausalCheck": "causal",
    "causal_check": "causal",
    "DECODERS": "decoders",
    "CosineIndex": "ranking",
    "ApproximateIndex": "ann",
    "ensure_index": "ann",
    "retrieval_index": "ann",
    "Decoded": "decoders",
    "Hit": "decoders",
    "TargetActivation": "decoders",
    "Guide": "ranking",
    "EditRanker": "ranking",
    "KandinskyDecoder": "decoders",
    "RetrievalDecoder": "decoders",
    "load_kandinsky_pipeline": "decoders",
    "make_decoder": "decoders",
    "nearest_rows": "decoders",
    "zero_image_embedding": "decoders",
    "Edit": "edits",
    "EditError": "edits",
    "SteerContext": "edits",
    "apply_edits": "edits",
    "parse_edit": "edits",
    "steer_embedding": "edits",
    "Steerer": "engine",
    "SteerResult": "engine",
    "run_recipe": "engine",
    "steerer_for": "engine",
    "make_icons": "icons",
    "verify_icons": "icons",
    "Recipe": "recipe",
    "EditCheck": "success",
    "SuccessCurve": "success",
    "check_edits": "success",
    "default_strength": "success",
    "measure_success": "success",
    "plot_success": "success",
}

__all__ = ["IconConfig", "IndexConfig", "RetrievalConfig", "SuccessConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"clipatlas.steer.{_LAZY[name]}"), name)
    raise AttributeError(name)
