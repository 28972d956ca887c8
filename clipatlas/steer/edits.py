"""Edits on SAE latents and the residual-preserving steered embedding.

For an embedding x: z = enc(x), r = x - dec(z); edits change z into z', and the steered
embedding is dec(z') + r. The residual carries what the SAE failed to reconstruct, so with no
edits the result is x exactly (we return x itself rather than dec(z) + r, which differs from x
by float rounding).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipatlas.errors import UserError

if TYPE_CHECKING:  # imported where used: recipes are read without torch
    import torch

FEATURE_OPS = ("set", "add", "scale", "ban")
IMAGE_OPS = ("transfer", "difference")
OPS = FEATURE_OPS + IMAGE_OPS
# The fields each op reads: any other field in an edit is refused rather than silently ignored.
FIELDS_OF = {
    "set": {"feature", "value", "unit"},
    "add": {"feature", "value", "unit"},
    "scale": {"feature", "value", "unit"},
    "ban": {"feature"},
    "transfer": {"image", "features"},
    "difference": {"image", "other", "value"},
}


class EditError(UserError):
    """An edit is malformed or names something that does not exist."""


@dataclass(frozen=True)
class Edit:
    """One edit. `value` is absolute, or (with `relative`) in units of the feature's max activation.

    - set/add/scale/ban act on `feature` (scale multiplies by `value`, ban clamps to 0);
    - transfer copies `features` (None = all) of image `image` into z;
    - difference adds `value` * (z_image - z_other).
    """

    op: str
    feature: int | None = None
    value: float = 0.0
    relative: bool = False
    image: str | None = None
    other: str | None = None
    features: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise EditError(f"unknown edit {self.op!r}; use one of {', '.join(OPS)}")
        if self.op in FEATURE_OPS and (self.feature is None or self.feature < 0):
            raise EditError(
                f"edit {self.op!r} needs a feature id >= 0 (e.g. {self.op}:42{'' if self.op == 'ban' else '=7.5x'})"
            )
        if not np.isfinite(self.value):
            raise EditError(f"edit {self.op!r} has a non-finite strength {self.value}")
        if self.op in IMAGE_OPS and not self.image:
            raise EditError(f"edit {self.op!r} needs an image (store image id, sha256:HEX or path)")
        if self.op == "difference" and not self.other:
            raise EditError("edit 'difference' needs two images: difference:A,B=SCALE")
        if self.features is not None and (not self.features or min(self.features) < 0):
            raise EditError(f"edit {self.op!r} lists features {list(self.features)}; give ids >= 0, or none for all")
        if self.relative and self.op not in ("set", "add"):
            raise EditError(f"strength in units of max activation ('x') applies to set and add, not {self.op!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        if self.op in FEATURE_OPS:
            out["feature"] = self.feature
        if self.op in ("set", "add", "scale", "difference"):
            out["value"] = self.value
        if self.op in ("set", "add"):
            out["unit"] = "max" if self.relative else "abs"
        if self.op in IMAGE_OPS:
            out["image"] = self.image
        if self.op == "difference":
            out["other"] = self.other
        if self.op == "transfer":
            out["features"] = None if self.features is None else list(self.features)
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any] | str) -> Edit:
        if isinstance(obj, str):
            return parse_edit(obj)
        if not isinstance(obj, dict):
            raise EditError(
                f"an edit is an object like {{'op': 'set', 'feature': 1, 'value': 7.5, 'unit': 'max'}} "
                f"or a string like 'set:1=7.5x', got {obj!r}"
            )
        unknown = set(obj) - {"op", "feature", "value", "unit", "image", "other", "features"}
        if unknown:
            raise EditError(f"edit {obj!r} has unknown fields {sorted(unknown)}")
        op = obj.get("op")
        reads = FIELDS_OF.get(op, set(obj)) if isinstance(op, str) else set(obj)  # an unknown op is refused below
        if set(obj) - {"op"} - reads:
            raise EditError(f"edit {op!r} takes no {sorted(set(obj) - {'op'} - reads)}; it reads {sorted(reads)}")
        unit = obj.get("unit", "abs")
        if unit not in ("abs", "max"):
            raise EditError(f"edit unit must be 'abs' or 'max', got {unit!r}")
        features = obj.get("features")
        try:
            return cls(
                op=str(obj.get("op")),
                feature=None if obj.get("feature") is None else _int(obj["feature"]),
                value=float(obj.get("value", 1.0 if obj.get("op") == "difference" else 0.0)),
                relative=unit == "max",
                image=obj.get("image"),
                other=obj.get("other"),
                features=None if features in (None, "all") else tuple(_int(f) for f in features),
            )
        except (TypeError, ValueError) as exc:
            raise EditError(f"bad edit {obj!r}: {exc}") from exc


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise EditError(f"feature ids are integers, got {value!r}")
    return int(value)


_STRENGTH = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(x?)\s*$")


def _strength(text: str, spec: str) -> tuple[float, bool]:
    match = _STRENGTH.match(text)
    if not match:
        raise EditError(
            f"bad strength {text!r} in edit {spec!r}; write a number, or e.g. 7.5x for 7.5 x max activation"
        )
    return float(match.group(1)), bool(match.group(2))


def parse_edit(spec: str) -> Edit:
    """Parse a command-line edit: set:F=V[x], add:F=V[x], scale:F=A, ban:F,
    transfer:IMG[:F1,F2,...], difference:A,B[=SCALE]."""
    op, sep, rest = spec.partition(":")
    op = op.strip().lower()
    if not sep or not rest:
        raise EditError(
            f"bad edit {spec!r}; examples: set:1234=7.5x  add:7=2  scale:7=0.5  ban:42  "
            "transfer:IMAGE  difference:A,B=1"
        )
    if op == "ban":
        return Edit("ban", feature=_feature(rest, spec))
    if op in ("set", "add", "scale"):
        feature, eq, value = rest.partition("=")
        if not eq:
            raise EditError(f"edit {spec!r} needs a strength: {op}:FEATURE=VALUE")
        strength, relative = _strength(value, spec)
        return Edit(op, feature=_feature(feature, spec), value=strength, relative=relative)
    if op == "transfer":
        image, _, features = rest.rpartition(":") if _looks_like_feature_list(rest) else (rest, "", "")
        feats = tuple(_feature(f, spec) for f in features.split(",")) if features else None
        return Edit("transfer", image=image, features=feats)
    if op == "difference":
        images, _, scale = rest.partition("=")
        first, comma, second = images.partition(",")
        if not comma:
            raise EditError(f"edit {spec!r} needs two images: difference:A,B=SCALE")
        value, relative = _strength(scale, spec) if scale else (1.0, False)
        if relative:
            raise EditError(f"edit {spec!r}: a difference scale is a plain number")
        return Edit("difference", image=first, other=second, value=value)
    raise EditError(f"unknown edit {op!r} in {spec!r}; use one of {', '.join(OPS)}")


def _looks_like_feature_list(rest: str) -> bool:
    head, sep, tail = rest.rpartition(":")
    return bool(sep and head and re.fullmatch(r"\d+(,\d+)*", tail))


def _feature(text: str, spec: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise EditError(f"bad feature id {text!r} in edit {spec!r}; feature ids are integers >= 0")
    return int(text)


@dataclass(frozen=True)
class SteerContext:
    """What edits need from outside: the latents of referenced images and features' max activations."""

    latents_of: Callable[[str], torch.Tensor]  # image reference -> z (d_sae,)
    max_activation: Callable[[int], float]


def apply_edits(z: torch.Tensor, edits: Sequence[Edit], ctx: SteerContext) -> torch.Tensor:
    """The edited latents z' (a copy), edits applied in order."""
    z = z.clone()
    d_sae = z.shape[-1]
    for edit in edits:
        if edit.feature is not None and edit.feature >= d_sae:
            raise EditError(f"feature {edit.feature} does not exist; this SAE has features 0..{d_sae - 1}")
        if edit.features is not None and any(f >= d_sae for f in edit.features):
            raise EditError(f"transfer names a feature >= {d_sae}; this SAE has features 0..{d_sae - 1}")
        value = edit.value * ctx.max_activation(edit.feature) if edit.relative else edit.value
        if edit.op == "set":
            z[edit.feature] = value
        elif edit.op == "add":
            z[edit.feature] += value
        elif edit.op == "scale":
            z[edit.feature] *= value
        elif edit.op == "ban":
            z[edit.feature] = 0.0
        elif edit.op == "transfer":
            source = ctx.latents_of(edit.image)
            index = slice(None) if edit.features is None else list(edit.features)
            z[index] = source[index]
        else:  # difference
            z += value * (ctx.latents_of(edit.image) - ctx.latents_of(edit.other))
    return z


def checked_embedding(sae, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """`x` as a float32 copy (store rows are read-only memory maps), refused unless it is one finite
    embedding of the SAE's input size."""
    x_np = np.array(x, dtype=np.float32)
    if x_np.ndim != 1 or x_np.shape[0] != sae.cfg.d_in:
        raise EditError(f"expected one embedding of size {sae.cfg.d_in}, got shape {x_np.shape}")
    if not np.isfinite(x_np).all():
        raise EditError("the input embedding contains NaN or infinite values; re-embed the image")
    return x_np


def edit_latents(sae, x: np.ndarray, edits: Sequence[Edit], ctx: SteerContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, z'): the latents of the checked embedding `x` and the latents after the edits."""
    import torch

    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x)[None].to(sae.W_dec.device, sae.W_dec.dtype))[0]
        return z, refuse_non_finite(apply_edits(z, edits, ctx), "the edited latents")


def embedding_from_latents(sae, x: np.ndarray, z: torch.Tensor, z_edited: torch.Tensor) -> np.ndarray:
    """dec(z') + (x - dec(z)) = x + (z' - z) W_dec / input_scale: b_dec cancels, the residual is kept
    exactly, and only the edited rows of W_dec are read (a full decode reads all d_sae of them)."""
    import torch

    with torch.no_grad():
        delta = z_edited - z
        changed = delta.nonzero().flatten()
        x_t = torch.from_numpy(x).to(sae.W_dec.device, sae.W_dec.dtype)
        steered = x_t + (delta[changed] @ sae.W_dec[changed]) / sae.cfg.input_scale
    return refuse_non_finite(steered, "the edited embedding").float().cpu().numpy()


def refuse_non_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """`values`, unless an edit drove some of them to NaN or infinity (strengths too large for the number
    format): decoding that would give an arbitrary image, so the run stops here."""
    import torch

    if not bool(torch.isfinite(values).all()):
        raise EditError(f"{what} became NaN or infinite: an edit's strength is too large; use a smaller one")
    return values


def steer_embedding(sae, x: np.ndarray | torch.Tensor, edits: Sequence[Edit], ctx: SteerContext) -> np.ndarray:
    """dec(z') + (x - dec(z)) in the encoder's raw scale; x itself when there are no edits."""
    x_np = checked_embedding(sae, x)
    if not edits:
        return x_np
    return embedding_from_latents(sae, x_np, *edit_latents(sae, x_np, edits, ctx))


def set_embeddings(sae, xs: np.ndarray, features: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """Row i: embedding xs[i] (or xs, when one embedding) with feature features[i] set to values[i]: the
    steered embedding of the edit set:features[i]=values[i], for many edits in one batch."""
    import torch

    features = torch.as_tensor(np.asarray(features, dtype=np.int64))
    x_t = torch.from_numpy(np.array(np.broadcast_to(xs, (len(features), sae.cfg.d_in)), dtype=np.float32))
    with torch.no_grad():
        current = sae.encode(x_t)[torch.arange(len(features)), features]
        change = torch.as_tensor(np.asarray(values, dtype=np.float32)) - current
        return (x_t + change[:, None] * sae.W_dec[features] / sae.cfg.input_scale).numpy()
