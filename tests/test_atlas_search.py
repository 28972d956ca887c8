"""Label search (`Atlas.search_labels`) against the SQL it replaced, and the index added at open."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from clipatlas.atlas import Atlas, Label, Score, db
from clipatlas.atlas.annotations import add_labels, add_scores
from clipatlas.atlas.db import INDEXES_ADDED_IN_PLACE
from clipatlas.atlas.query import search_rank
from clipatlas.atlas.synthetic import WORDS, SyntheticAtlasConfig, write_synthetic_atlas


def reference_search(atlas: Atlas, text: str, limit: int = 50) -> list[Label]:
    """The search as it was before the in-memory index: SQL LIKE, every match ranked in Python."""
    needle = text.strip()
    if not needle:
        return []
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    labels = atlas._labels_where("text LIKE ? ESCAPE '\\'", (f"%{escaped}%",))
    labels.sort(key=lambda label: (search_rank(label), label.feature))
    return labels[:limit]


# Odd texts: wildcards and escapes matched literally, case folded for ASCII only (as SQLite's LIKE).
ODD_TEXTS = ("100% Cotton", "snake_case", "back\\slash", "Ärger", "ärger", "STRASSE", "straße", "a", "Cat")
NEEDLES = (*WORDS, "CAT", "Ca", "c", "e", "at d", "%", "_", "\\", "0% c", "Ä", "ä", "ÄR", "ss", "SS", "ß", "zebra")


@pytest.fixture(scope="module")
def mixed_atlas(tmp_path_factory):
    """A synthetic atlas plus, on some features, labels from other labellers: scored by several judges
    (ties in value included), scored below their baseline, or never scored."""
    root = write_synthetic_atlas(
        tmp_path_factory.mktemp("search") / "w", SyntheticAtlasConfig(n_features=600, n_images=64, seed=3)
    )
    atlas = Atlas.open(root)
    rng = np.random.default_rng(0)
    features = [int(f) for f in rng.choice(atlas.map_points().feature, size=240, replace=False)]
    texts = [
        ODD_TEXTS[i] if i < len(ODD_TEXTS) else f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for i in range(len(features))
    ]
    ids = add_labels(atlas, [Label(f, "vlm", t, model="m") for f, t in zip(features, texts)])
    scores = []
    for i, (f, label_id) in enumerate(zip(features, ids)):
        if i % 4 == 3:
            continue  # never scored
        value = round(float(rng.choice([0.55, 0.7, 0.9])), 2)  # few values: many ties
        for judge in ("captions", "vlm") if i % 3 else ("captions",):
            scores.append(Score(f, label_id, "detection", judge, "auroc", value, 0.6, 20, validation=value))
    add_scores(atlas, scores)
    return Atlas.open(root)


@pytest.mark.parametrize("limit", [1, 7, 50, 10**6])
def test_search_equals_the_sql_it_replaced(mixed_atlas, limit):
    for needle in NEEDLES:
        expected = reference_search(mixed_atlas, needle, limit)
        assert mixed_atlas.search_labels(needle, limit) == expected, needle
    assert len(reference_search(mixed_atlas, "a", 10**6)) > 400  # the needles do reach many labels


def test_search_matches_within_one_label_only(mixed_atlas):
    labels = mixed_atlas.label_search().labels
    # the end of one label's text and the start of the next one's, as they lie in the joined text
    spanning = labels[0].text[-2:] + "\n" + labels[1].text[:2]
    assert mixed_atlas.search_labels(spanning) == [] == reference_search(mixed_atlas, spanning)
    assert mixed_atlas.search_labels("  ") == [] and mixed_atlas.search_labels("zebra") == []


def test_search_on_a_real_demo_atlas_equals_the_sql(demo_workspace):
    atlas = Atlas.open(demo_workspace, "demo")
    texts = [label.text for labels in atlas.labels_by_feature().values() for label in labels]
    words = sorted({word for text in texts for word in text.replace(",", " ").split()})
    assert len(words) > 20
    for needle in [*words, *(w[:2] for w in words), *(w.upper() for w in words[:20]), "e", " "]:
        assert atlas.search_labels(needle) == reference_search(atlas, needle), needle


def test_search_sees_labels_added_through_the_atlas(mixed_atlas, tmp_path):
    atlas = mixed_atlas
    feature = int(atlas.map_points().feature[0])
    atlas.search_labels("cat")  # the index is built
    (label_id,) = add_labels(atlas, [Label(feature, "vlm", "quokka", model="other")])
    assert [label.id for label in atlas.search_labels("QUOKKA")] == [label_id]


def test_an_older_atlas_gains_the_index_at_open_and_a_read_only_one_still_answers(tmp_path, monkeypatch):
    root = write_synthetic_atlas(tmp_path / "w", SyntheticAtlasConfig(n_features=300, n_images=48, seed=1))
    db_path = Atlas.open(root).db_path
    with sqlite3.connect(db_path) as conn:
        for name in INDEXES_ADDED_IN_PLACE:
            conn.execute(f"DROP INDEX {name}")

    def indexes() -> set[str]:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}

    assert not set(INDEXES_ADDED_IN_PLACE) & indexes()
    with monkeypatch.context() as patched:  # a file this user may not write (chmod does not stop root)
        patched.setattr(db.os, "access", lambda path, mode: False)
        read_only = Atlas.open(root)
        assert not set(INDEXES_ADDED_IN_PLACE) & indexes()  # nothing written, and it still answers
        assert read_only.search_labels("a") == reference_search(read_only, "a")
    atlas = Atlas.open(root)
    assert set(INDEXES_ADDED_IN_PLACE) <= indexes()
    assert atlas.search_labels("a") == reference_search(atlas, "a")
