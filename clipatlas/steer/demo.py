"""The steering part of `clipatlas demo`: icons for the atlas and one replayable recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipatlas._io import atomic_write_bytes
from clipatlas.errors import UserError
from clipatlas.steer.config import IconConfig
from clipatlas.steer.edits import Edit
from clipatlas.steer.engine import run_recipe, steerer_for
from clipatlas.steer.icons import make_icons
from clipatlas.steer.recipe import Recipe
from clipatlas.steer.success import default_strength
from clipatlas.workspace import Workspace


def example_feature(atlas) -> int:
    """The feature the example edit sets: among alive features named by a scored headline label, the one
    firing on the most images (so the edit shows, under a name); with no named feature, the most frequent."""
    table = atlas.feature_table()
    alive = np.flatnonzero(table.alive)
    if not len(alive):
        raise UserError("the atlas has no alive features to steer; train the SAE longer or on more images")
    named = np.array([f for f in atlas.headlines() if table.alive[f]], dtype=np.int64)
    pool = named if len(named) else alive
    return int(pool[np.argmax(table.count[pool])])  # ties: the lowest id (argmax takes the first)


def example_recipe(workspace, name: str | None = None) -> Recipe:
    """Set the example feature (`example_feature`) to the default strength on an image that lacks it."""
    atlas = steerer_for(workspace, name).atlas
    atlas.refresh()  # labels scored since the steerer opened it name features now
    strength = default_strength(atlas, "retrieval").value
    feature = example_feature(atlas)
    shown = set(atlas.image_codes().rows_of(feature)[0].tolist())
    image = next(i for row, i in enumerate(atlas.store.metadata.column("image_id").to_pylist()) if row not in shown)
    return Recipe(image=image, edits=(Edit("set", feature=feature, value=strength, relative=True),), sae=atlas.name)


def write_demo_steering(workspace, name: str | None = None, template: str = "mean", icons: str = "retrieval") -> Path:
    """Icons for every alive feature by the `icons` decoder (retrieval measures the steering success curve that
    sets their strength; montage re-encodes collages), and `recipes/example.json` + its PNG; returns the recipe
    path. Replay it with: clipatlas steer --recipe W/recipes/example.json -w W -o out.png"""
    make_icons(workspace, name, IconConfig(features="alive", decoder=icons, template=template))
    recipe = example_recipe(workspace, name)
    recipes_dir = Workspace.of(workspace).recipes_dir
    recipe.save(recipes_dir / "example.json")
    atomic_write_bytes(recipes_dir / "example.png", run_recipe(workspace, recipe).after_png)
    return recipes_dir / "example.json"
