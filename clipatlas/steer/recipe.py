"""Recipes: one JSON document that reproduces a steered image (input, edits, decoder, seed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipatlas._io import SCHEMA_VERSION, atomic_write_json, read_json
from clipatlas.errors import UserError
from clipatlas.steer.edits import Edit, EditError

RECIPE_KIND = "clipatlas.recipe"
_FIELDS = {"schema_version", "kind", "image", "edits", "decoder", "settings", "seed", "sae", "hash"}


@dataclass(frozen=True)
class Recipe:
    """`image`: a store image id, `sha256:HEX` of a stored image, or an image file path.
    `decoder`: a registry name (see `clipatlas.steer.decoders`); `settings` its options."""

    image: str
    """Store image id, sha256:HEX of a stored image, or an image file."""
    edits: tuple[Edit, ...] = ()
    """Edits on the image's SAE latents, applied in order."""
    decoder: str = "retrieval"
    """retrieval (nearest store images, no GPU), kandinsky[:PATH_OR_ID] or kandinsky-img2img[:PATH_OR_ID]."""
    settings: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    """Decoder settings as sorted (key, value) pairs."""
    seed: int = 1
    """Seed of the decoder: before and after start from the same noise."""
    sae: str | None = None
    """SAE name (default: the workspace's only SAE)."""

    def __post_init__(self):
        # Accept a list of edits and a settings dict; store them canonically so equal recipes compare equal.
        object.__setattr__(self, "edits", tuple(self.edits))
        settings = self.settings.items() if isinstance(self.settings, dict) else self.settings
        object.__setattr__(self, "settings", tuple(sorted(settings)))
        if not all(isinstance(edit, Edit) for edit in self.edits):
            raise EditError("recipe edits must be Edit objects; build them with parse_edit or Edit.from_dict")
        if not isinstance(self.image, str) or not self.image:
            raise EditError("a recipe needs an input image: a store image id, sha256:HEX or a path")
        if not isinstance(self.decoder, str) or not self.decoder:
            raise EditError("a recipe's decoder is a name such as 'retrieval' or 'kandinsky'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise EditError(f"a recipe's seed is an integer >= 0, got {self.seed!r}")

    @property
    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": RECIPE_KIND,
            "image": self.image,
            "edits": [edit.to_dict() for edit in self.edits],
            "decoder": self.decoder,
            "settings": self.settings_dict,
            "seed": self.seed,
            "sae": self.sae,
        }

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): equal recipes, equal hashes."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Recipe:
        if not isinstance(obj, dict):
            raise EditError(f"a recipe is a JSON object, got {type(obj).__name__}")
        unknown = set(obj) - _FIELDS
        if unknown:
            raise EditError(f"recipe has unknown fields {sorted(unknown)}; known: {sorted(_FIELDS - {'hash'})}")
        if obj.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise EditError(
                f"recipe schema_version {obj['schema_version']} is newer than this clipatlas "
                f"reads ({SCHEMA_VERSION}); upgrade clipatlas"
            )
        if obj.get("kind", RECIPE_KIND) != RECIPE_KIND:
            raise EditError(f"not a recipe (kind {obj.get('kind')!r})")
        if "image" not in obj:
            raise EditError("recipe needs an 'image': a store image id, sha256:HEX or a path")
        edits = obj.get("edits", [])
        if not isinstance(edits, list):
            raise EditError("recipe 'edits' is a list of edits")
        settings = obj.get("settings") or {}
        if not isinstance(settings, dict):
            raise EditError("recipe 'settings' is an object of decoder options, e.g. {\"steps\": 12}")
        return cls(
            image=obj["image"],
            edits=tuple(Edit.from_dict(e) for e in edits),
            decoder=obj.get("decoder", "retrieval"),
            settings=settings,
            seed=obj.get("seed", 1),
            sae=obj.get("sae"),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, {**self.to_dict(), "hash": self.hash})

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no recipe file at {path}; write one with: clipatlas steer ... --recipe-out {path}")
        recipe = cls.from_dict(read_json(path))
        return recipe
