"""The one device choice every stage makes: `auto` is the GPU when there is one."""

from __future__ import annotations

import torch

from clipatlas.errors import UserError

AUTO = "auto"


def resolve_device(spec: str | torch.device = AUTO) -> torch.device:
    """`auto` -> cuda when a GPU is visible, else cpu; `cuda[:N]` without a GPU is a UserError."""
    if isinstance(spec, torch.device):
        device = spec
    elif spec == AUTO:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise UserError(f"unknown device {spec!r}; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return device


def inference_dtype(device: torch.device) -> torch.dtype:
    """float16 on a GPU (the models' release precision), float32 on the CPU (float16 is slow there)."""
    return torch.float16 if device.type == "cuda" else torch.float32
