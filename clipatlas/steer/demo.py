"""The steering part of `clipatlas demo`: retrieval icons for the atlas and one replayable recipe."""

from __future__ import annotations

from pathlib import Path

from clipatlas._io import atomic_write_bytes
from clipatlas.errors import UserError
from clipatlas.steer.config import IconConfig
from clipatlas.steer.edits import Edit
from clipatlas.steer.engine import run_recipe, steerer_for
from clipatlas.steer.icons import make_icons
from clipatlas.steer.recipe import Recipe
from clipatlas.steer.success import default_strength
from clipatlas.workspace import Workspace


def example_recipe(workspace, name: str | None = None) -> Recipe:
    """Set the strongest alive feature to the default strength on an image that lacks it."""
    atlas = steerer_for(workspace, name).atlas
    strength = default_strength(atlas, "retrieval").value
    features = [int(f) for f in atlas.map_points().feature]
    if not features:
        raise UserError("the atlas has no alive features to steer; train the SAE longer or on more images")
    feature = max(features, key=lambda f: atlas.feature(f).max_activation)
    shown = {example.image_id for example in atlas.top_images(feature)}
    image = next(i for i in atlas.store.metadata.column("image_id").to_pylist() if i not in shown)
    return Recipe(image=image, edits=(Edit("set", feature=feature, value=strength, relative=True),), sae=atlas.name)


def write_demo_steering(workspace, name: str | None = None, template: str = "mean") -> Path:
    """Retrieval icons for every alive feature (measuring the steering success curve that sets their
    strength), and `recipes/example.json` + its PNG; returns the recipe path.
    Replay it with: clipatlas steer --recipe W/recipes/example.json -w W -o out.png"""
    make_icons(workspace, name, IconConfig(features="alive", decoder="retrieval", template=template))
    recipe = example_recipe(workspace, name)
    recipes_dir = Workspace.of(workspace).recipes_dir
    recipe.save(recipes_dir / "example.json")
    atomic_write_bytes(recipes_dir / "example.png", run_recipe(workspace, recipe).after_png)
    return recipes_dir / "example.json"
