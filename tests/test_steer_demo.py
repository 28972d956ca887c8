"""Semantic check on real weights: on the EfficientNet-Lite0 demo store, setting a feature whose top
images share an ImageNet class brings images of that class to the top of the retrieval decoder."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from clipatlas.steer import Recipe, parse_edit, run_recipe


@pytest.fixture(scope="module")
def demo(demo_workspace):
    from clipatlas.atlas import Atlas
    from clipatlas.encoders import load_encoder
    from clipatlas.store import Store

    store = Store.open(demo_workspace)
    weight, bias, _ = load_encoder("efficientnet-lite0").imagenet_head()
    logits = store.to_array() @ np.asarray(weight, np.float32).T + np.asarray(bias, np.float32)
    return Atlas.open(demo_workspace), store, logits.argmax(axis=1)


def concept_features(atlas, top1, limit=5, min_images=8):
    """(feature, class) for features firing on at least `min_images` images, most of one predicted class."""
    found = []
    for f in atlas.map_points().feature:
        classes = [top1[e.row] for e in atlas.top_images(int(f))]
        if len(classes) < min_images:
            continue  # a feature of one or two images has no concept to share
        ((cls, count),) = collections.Counter(classes).most_common(1)
        if count >= 0.5 * len(classes) and np.mean(top1 == cls) < 0.2:
            found.append((int(f), int(cls)))
    return found[:limit]


def test_setting_a_feature_retrieves_its_concept(demo, demo_workspace):
    atlas, store, top1 = demo
    features = concept_features(atlas, top1)
    assert len(features) >= 3
    ids = store.metadata.column("image_id").to_pylist()
    before_share, after_share = [], []
    for feature, cls in features:
        start = next(i for i in range(len(store)) if top1[i] != cls)  # an image of another concept
        recipe = Recipe(image=ids[start], edits=(parse_edit(f"set:{feature}=7.5x"),), settings=(("k", 10),))
        result = run_recipe(demo_workspace, recipe, name="demo")
        before_share.append(np.mean([top1[h.row] == cls for h in result.before_ranking]))
        after_share.append(np.mean([top1[h.row] == cls for h in result.after_ranking]))
    # Measured on a rebuild of the demo store: 0.0 before, 0.68 after (top 10).
    assert np.mean(after_share) >= 0.5 and np.mean(after_share) > np.mean(before_share) + 0.3


def test_demo_icons_activate_their_features(demo_workspace, tmp_path):
    import shutil

    from clipatlas.steer.icons import IconConfig, make_icons, verify_icons

    workspace = shutil.copytree(demo_workspace, tmp_path / "demo")  # the shared fixture stays read-only
    config = IconConfig(features="alive")  # the packaged template, embedded by EfficientNet-Lite0
    make_icons(workspace, "demo", config)
    report = verify_icons(workspace, "demo", config)
    # Chance that a feature is the strongest of ~n alive ones is about 1/n (under 1% here); a rebuild
    # of the demo store measured 21% top-1, median rank 3 in the icon against "not firing" in the template.
    assert report["top1_share"] > 0.1 and report["median_rank_after"] < report["median_rank_before"]
