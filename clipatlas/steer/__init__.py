"""Steering: edit SAE features of an image embedding and decode the result (see docs/ARCHITECTURE.md)."""

from clipatlas.steer.causal import CausalCheck, causal_check
from clipatlas.steer.decoders import (
    DECODERS,
    CosineIndex,
    Decoded,
    Hit,
    KandinskyDecoder,
    RetrievalDecoder,
    load_kandinsky_pipeline,
    make_decoder,
    nearest_rows,
    zero_image_embedding,
)
from clipatlas.steer.edits import Edit, EditError, SteerContext, apply_edits, parse_edit, steer_embedding
from clipatlas.steer.engine import Steerer, SteerResult, run_recipe, steerer_for
from clipatlas.steer.icons import IconConfig, make_icons, verify_icons
from clipatlas.steer.recipe import Recipe

__all__ = [
    "DECODERS",
    "CausalCheck",
    "CosineIndex",
    "Decoded",
    "Edit",
    "EditError",
    "Hit",
    "IconConfig",
    "KandinskyDecoder",
    "Recipe",
    "RetrievalDecoder",
    "SteerContext",
    "SteerResult",
    "Steerer",
    "apply_edits",
    "causal_check",
    "load_kandinsky_pipeline",
    "make_decoder",
    "make_icons",
    "nearest_rows",
    "parse_edit",
    "run_recipe",
    "steer_embedding",
    "steerer_for",
    "verify_icons",
    "zero_image_embedding",
]
