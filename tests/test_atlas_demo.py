"""Semantic check on real images: demo pictures embedded by EfficientNet-Lite0 (ImageNet weights).

The store holds the pooled features the ImageNet head reads, so each image's own class
predictions are `weight @ x + bias`. A feature labelled "mushroom" by the classifier labeller
should have top images that the classifier itself calls mushrooms far more often than images at large.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipatlas.atlas import Atlas


@pytest.fixture(scope="module")
def demo(demo_workspace):
    from clipatlas.encoders import load_encoder
    from clipatlas.store import Store

    atlas = Atlas.open(demo_workspace)
    store = Store.open(demo_workspace)
    weight, bias, names = load_encoder("efficientnet-lite0").imagenet_head()
    logits = store.to_array() @ np.asarray(weight, dtype=np.float32).T + np.asarray(bias, dtype=np.float32)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return atlas, store, list(names), top5


def test_demo_atlas_is_labelled_and_scored(demo):
    """The fixture labels with captions and scores with the captions judge, as `clipatlas demo` does."""
    atlas, _, _, _ = demo
    summary = atlas.summary()
    assert summary["encoder"] == "efficientnet-lite0" and summary["n_alive"] > 20
    labelled = atlas.labels_by_feature()
    assert len(labelled) > 20 and all(lab.score(judge="captions") for labels in labelled.values() for lab in labels)
    assert 0 < summary["n_named"] == len(atlas.headlines()) <= len(labelled)


def test_classifier_labels_name_the_top_images_own_classes(demo, tmp_path):
    """For labelled features, the classifier label's first class is among the top images' own top-5
    classes far above chance (a copy of the workspace: the fixture is shared)."""
    import shutil

    from clipatlas.interp.config import LabelConfig
    from clipatlas.interp.run import label

    atlas, store, names, top5 = demo
    root = tmp_path / "ws"
    shutil.copytree(atlas.workspace.root, root)
    label(root, "demo", LabelConfig(labeller="classifier", validation=False))
    short = [name.split(",")[0].strip() for name in names]
    hit_rates, base_rates = [], []
    for feature, labels in Atlas.open(root, "demo").labels_by_feature().items():
        lab = next(lab for lab in labels if lab.source == "classifier")
        cls = short.index(lab.evidence["classes"][0])
        rows = [e.row for e in atlas.top_images(feature)[:8]]
        hit_rates.append(np.mean([cls in top5[r] for r in rows]))
        base_rates.append(np.mean([cls in t for t in top5]))
    assert len(hit_rates) > 10
    assert np.mean(hit_rates) > 0.3 and np.mean(hit_rates) > 5 * np.mean(base_rates)


def test_demo_query_api_round_trip(demo):
    atlas, store, _, _ = demo
    feature = int(atlas.map_points().feature[0])
    top = atlas.top_images(feature)
    assert top and atlas.thumbnail_path(top[0].image_id).is_file()
    image_features = [a.feature for a in atlas.features_of_image(top[0].image_id)]
    assert feature in image_features
    embedding_features = [a.feature for a in atlas.features_of_embedding(store[top[0].row])]
    assert embedding_features == image_features[: len(embedding_features)]
