"""The steering success measure and the edit-aware retrieval ranking, on a store built so that the right
answers are known by hand, and against brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipatlas.atlas.types import NOT_IN_CODE, ImageCodes
from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, ReLUConfig
from clipatlas.steer import Recipe, parse_edit, steerer_for
from clipatlas.steer import ranking as ranking_module
from clipatlas.steer.config import RetrievalConfig, SuccessConfig
from clipatlas.steer.ranking import Guide

# An identity SAE (z = relu(x), decoder = identity) over a store whose rows are their own codes:
#   0 S   the source: features 2 and 3
#   1 S'  a near-duplicate of S (cosine 0.99998)
#   2 N   nearest to S after S' (cosine 0.941), without feature 0
#   3 A   feature 0 is its strongest latent, at its max activation 3 (cosine to the edited S: 0.558)
#   4 B   feature 0 at rank 2, activation 1 (cosine to the edited S: 0.760)
#   5 C   unrelated
# Edit set:0=1x on S: y = S + 3 e0 = (3, 0, 4, 1, 0, 0). Plain cosine shows S itself; with S and S' left
# out it shows N (no feature 0); the default mix scores A 0.558 + 0.1 * 1 + 1 = 1.658 and
# B 0.760 + 0.1 / 3 + 1 = 1.793, so B; with dominant_weight 2, A (3.658).
ROWS = np.array(
    [
        [0, 0, 4, 1, 0, 0],
        [0, 0, 4, 1.01, 0, 0],
        [0, 0, 4, 0, 1, 0],
        [3, 0, 0, 0, 0, 1],
        [1, 0, 2.5, 0, 0, 2],
        [0, 5, 0, 0, 0, 0],
    ],
    dtype=np.float32,
)
S, S_DUP, N, A, B, C = (f"{i:08d}" for i in range(6))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.store import write_store

    root = tmp_path_factory.mktemp("known")
    write_store(root, ROWS)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=6, d_sae=6, input_scale=1.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(6))
        sae.W_dec.copy_(torch.eye(6))
    sae.save_pretrained(root / "saes" / "id")
    build_atlas(root, "id", config=AtlasConfig(top_k=4, per_decile=1, map_method="pca", thumbnails=False))
    return root


def run(workspace, **settings):
    recipe = Recipe(image=S, edits=(parse_edit("set:0=1x"),), settings=settings)
    steerer = steerer_for(workspace, "id")
    result = steerer.run(recipe)
    return result, steerer.verify(recipe, result)


def test_the_default_mix_shows_the_image_that_has_the_feature_and_resembles_the_source(known):
    result, (check,) = run(known)
    assert result.before_ranking[0].image_id == S  # no edit: the image itself
    ids = [hit.image_id for hit in result.after_ranking]
    assert ids[0] == B and S not in ids and S_DUP not in ids  # never the source nor its near-duplicate
    first = result.after_ranking[0]
    y = ROWS[0] + np.array([3, 0, 0, 0, 0, 0])
    cosine = y @ ROWS[4] / np.linalg.norm(y) / np.linalg.norm(ROWS[4])
    assert first.cosine == pytest.approx(cosine, abs=1e-6) and first.score == pytest.approx(cosine + 0.1 / 3 + 1)
    (target,) = first.targets
    assert (target.feature, target.activation, target.rank, target.raised) == (0, 1.0, 2, True)
    assert result.guide == Guide(raised=(0,), removed=())
    # The measure: feature 0 goes from silent to rank 2 in B; the result differs from S.
    assert (check.before_activation, check.before_rank) == (0.0, 6)
    assert (check.after_activation, check.after_rank) == (1.0, 2)
    assert check.differs and check.shown and check.success
    assert check.source_cosine == pytest.approx(10 / (np.sqrt(17) * np.sqrt(11.25)))
    # Over the features the edit left alone: (0, 0, 4, 1, 0, 0) against (0, 0, 2.5, 0, 0, 2).
    assert check.unedited_cosine == pytest.approx(10 / (np.sqrt(17) * np.sqrt(10.25)))


def test_plain_cosine_misses_the_feature_and_the_dominance_bonus_picks_the_strongest(known):
    result, (check,) = run(known, activation_weight=0, rank_weight=0)
    assert result.after_ranking[0].image_id == N and check.after_rank == 6 and not check.success
    result, (check,) = run(known, dominant_weight=2)
    assert result.after_ranking[0].image_id == A and check.after_rank == 0 and check.success


def test_the_source_is_not_a_success_even_when_it_shows_the_feature(known):
    from clipatlas.steer.success import check_edits

    z = np.maximum(ROWS, 0)
    edited = np.eye(6, dtype=bool)[[0]]
    (same,) = check_edits(steerer_for(known, "id").sae, ROWS[[0]], ROWS[[1]], [3], edited, np.array([1.01]))
    assert same.shown and not same.differs and not same.success  # S' is S: feature 3 at rank 1 proves nothing
    assert same.after_activation == pytest.approx(z[1, 3])


def test_a_ban_lowers_images_with_the_removed_feature(known):
    steerer = steerer_for(known, "id")
    result = steerer.run(Recipe(image=S, edits=(parse_edit("ban:3"),)))
    assert result.guide == Guide(raised=(), removed=(3,))
    shown = [hit.image_id for hit in result.after_ranking]
    assert S not in shown and S_DUP not in shown
    # N keeps feature 2 and lacks feature 3: it outranks every image with feature 3.
    assert shown[0] == N and all(t.activation == 0 for t in result.after_ranking[0].targets)


def test_verify_with_no_set_or_add_edit_reports_nothing(known):
    steerer = steerer_for(known, "id")
    recipe = Recipe(image=S, edits=(parse_edit("ban:3"),))
    assert steerer.verify(recipe, steerer.run(recipe)) == []


# -- the curve ---------------------------------------------------------------------------------------
def reference_success(workspace, config: SuccessConfig, strength: float) -> float:
    """Brute force: every sampled edit ranked by scoring all store rows with numpy."""
    from clipatlas.atlas import Atlas
    from clipatlas.steer.success import _sample

    atlas = Atlas.open(workspace, "id")
    table = atlas.feature_table()
    features, sources = _sample(atlas, config)
    X = ROWS.astype(np.float64)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    z = np.maximum(X, 0)
    ranks = np.where(z > 0, (z[:, None, :] > z[:, :, None]).sum(axis=2), 6)  # ranks[r, f]
    cfg = RetrievalConfig()
    wins = []
    for f, s in zip(features, sources):
        y = X[s].copy()
        y[f] = strength * table.max_activation[f]
        score = unit @ (y / np.linalg.norm(y))
        score += cfg.activation_weight * np.minimum(z[:, f] / table.max_activation[f], 1)
        score += cfg.rank_weight * (ranks[:, f] < cfg.top_latents)
        score[unit @ unit[s] >= cfg.duplicate_cosine] = -np.inf
        best = int(np.argmax(score))
        wins.append(ranks[best, f] < config.top)
    return float(np.mean(wins))


def test_success_curve_matches_brute_force_and_is_saved_plotted_and_reused(known, monkeypatch):
    from clipatlas.atlas import Atlas
    from clipatlas.steer.success import SuccessCurve, default_strength, measure_success

    config = SuccessConfig(strengths=(0.5, 1.0, 3.0), min_images=2, sources_per_feature=2, top=1, target=0.5)
    curve = measure_success(known, "id", config)
    for point in curve.points:
        assert point.n == 2 * curve.n_features
        assert point.success == pytest.approx(reference_success(known, config, point.strength))
    files = Atlas.open(known, "id").files
    saved = json.loads(files.steering_success("retrieval").read_text())
    assert saved["schema_version"] == 1 and SuccessCurve.from_dict(saved) == curve
    assert files.steering_success_plot("retrieval").read_bytes()[:4] == b"\x89PNG"
    reached = [p.strength for p in curve.points if p.success >= 0.5]
    default = default_strength(Atlas.open(known, "id"))
    assert reached and default.measured and default.value == curve.default_strength == min(reached)
    assert default.source.startswith(f"{min(reached):g}x")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a measured curve is read back, not measured again")

    monkeypatch.setattr(ranking_module.EditRanker, "rank", no_decoding)
    assert measure_success(known, "id", config) == curve


def test_success_curve_resumes_after_the_strengths_it_finished(known, tmp_path):
    import shutil

    from clipatlas.steer.success import measure_success

    workspace = shutil.copytree(known, tmp_path / "ws")
    config = SuccessConfig(strengths=(1.0, 2.0), min_images=2)
    full = measure_success(workspace, "id", config)
    path = workspace / "saes" / "id" / "eval" / "steering-success-retrieval.json"
    partial = json.loads(path.read_text())
    partial["points"] = partial["points"][:1]  # as if killed after the first strength
    partial["points"][0]["success"] = -1.0  # a marker: a finished strength is kept, not recomputed
    partial["complete"] = False
    path.write_text(json.dumps(partial))
    resumed = measure_success(workspace, "id", config)
    assert resumed.complete and resumed.points[0].success == -1.0 and resumed.points[1] == full.points[1]


def test_unmeasured_default_strength_says_so(known, tmp_path):
    import shutil

    from clipatlas.atlas import Atlas
    from clipatlas.steer.success import UNMEASURED_STRENGTH, default_strength

    workspace = shutil.copytree(known, tmp_path / "ws")
    (workspace / "saes" / "id" / "eval").mkdir(exist_ok=True)
    for path in (workspace / "saes" / "id" / "eval").glob("steering-success-*"):
        path.unlink()
    found = default_strength(Atlas.open(workspace, "id"), "kandinsky")
    assert found.value == UNMEASURED_STRENGTH and not found.measured and "has not been measured" in found.source


def test_success_needs_features_that_fire_on_enough_images(known):
    from clipatlas.steer.success import measure_success

    with pytest.raises(UserError, match="min_images"):
        measure_success(known, "id", SuccessConfig(min_images=100), save=False)


# -- the ranking against brute force --------------------------------------------------------------------
def random_codes(rng, n_rows: int, n_features: int, per_row: int) -> tuple[np.ndarray, ImageCodes]:
    dense = np.zeros((n_rows, n_features), dtype=np.float32)
    for r in range(n_rows):
        k = rng.integers(0, per_row + 1)
        dense[r, rng.choice(n_features, k, replace=False)] = rng.uniform(0.1, 3.0, k).astype(np.float32)
    indptr, features, values = [0], [], []
    for row in dense:
        active = np.flatnonzero(row)
        order = active[np.argsort(-row[active], kind="stable")]
        features += order.tolist()
        values += row[order].tolist()
        indptr.append(len(features))
    codes = ImageCodes(np.array(indptr, np.int64), np.array(features, np.int32), np.array(values, np.float32))
    return dense, codes


def test_image_codes_answer_like_the_dense_matrix():
    rng = np.random.default_rng(0)
    dense, codes = random_codes(rng, 50, 12, 5)
    ranks = np.where(dense > 0, (dense[:, None, :] > dense[:, :, None]).sum(axis=2), NOT_IN_CODE)
    rows, features = rng.integers(0, 50, 20), np.array([0, 3, 7, 11])
    acts, got_ranks = codes.stats(rows, features)
    np.testing.assert_array_equal(acts, dense[np.ix_(rows, features)])
    np.testing.assert_array_equal(got_ranks, ranks[np.ix_(rows, features)])
    found_rows, found_acts, found_ranks = codes.rows_of(3)
    np.testing.assert_array_equal(found_rows, np.flatnonzero(dense[:, 3]))
    np.testing.assert_array_equal(found_acts, dense[found_rows, 3])
    np.testing.assert_array_equal(found_ranks, ranks[found_rows, 3])
    strongest = np.where(dense.max(axis=1) > 0, dense.argmax(axis=1), -1)
    np.testing.assert_array_equal(codes.strongest(), strongest)


class ArrayIndex(ranking_module.CosineIndex):
    def __init__(self, rows: np.ndarray):
        self.d = rows.shape[1]
        self.unit_rows = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True))


@pytest.mark.parametrize("gather_fraction", [0.0, 1.0])  # always scan / always try the posting lists first
@pytest.mark.parametrize("settings", [{}, {"rank_weight": 0.3, "dominant_weight": 2.0}, {"top_latents": 2}])
def test_ranking_equals_scoring_every_row(monkeypatch, gather_fraction, settings):
    monkeypatch.setattr(ranking_module, "GATHER_FRACTION", gather_fraction)
    rng = np.random.default_rng(1)
    n_rows, n_features = 300, 16
    dense, codes = random_codes(rng, n_rows, n_features, 6)
    X = rng.normal(size=(n_rows, 8)).astype(np.float32)
    X[7] = X[3] * 1.0001  # a near-duplicate of the source below
    top = dense.max(axis=0)
    ranks = np.where(dense > 0, (dense[:, None, :] > dense[:, :, None]).sum(axis=2), NOT_IN_CODE)
    ranker = ranking_module.EditRanker(ArrayIndex(X.astype(np.float64)), codes, top)
    cfg = RetrievalConfig(**settings)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    for raised, removed in [((2,), ()), ((2, 9), ()), ((), (5,)), ((4,), (5,))]:
        guide = Guide(raised=raised, removed=removed, source=X[3])
        y = rng.normal(size=8).astype(np.float32)
        ranked = ranker.rank(y, guide, cfg, k=5)

        def term(f, dominant):
            value = cfg.activation_weight * np.minimum(dense[:, f] / top[f], 1)
            value = value + cfg.rank_weight * (ranks[:, f] < cfg.top_latents)
            return value + (cfg.dominant_weight * (ranks[:, f] == 0) if dominant else 0)

        score = unit @ (y / np.linalg.norm(y))
        if raised:
            score = score + np.mean([term(f, True) for f in raised], axis=0)
        if removed:
            score = score - np.mean([term(f, False) for f in removed], axis=0)
        score[unit @ unit[3] >= cfg.duplicate_cosine] = -np.inf
        expected = np.lexsort((np.arange(n_rows), -score))[:5]
        np.testing.assert_array_equal(ranked.rows, expected)
        np.testing.assert_allclose(ranked.scores, score[expected], rtol=1e-5, atol=1e-5)
        assert 3 not in ranked.rows and 7 not in ranked.rows
        np.testing.assert_array_equal(ranked.activations, dense[np.ix_(expected, list(raised + removed))])


def test_guide_of_an_edit_names_raised_and_removed_features():
    z = np.array([0.0, 2.0, 1.0, 0.0, 3.0])
    edited = np.array([4.0, 2.0, 0.0, 1.0, 3.5])
    top = np.array([2.0, 1.0, 1.0, 4.0, 1.0])
    guide = Guide.of_edit(z, edited, np.ones(3), top)
    # Changes in units of max activation: feature 0 +2, feature 3 +0.25, feature 4 +0.5.
    assert guide.raised == (0, 4, 3) and guide.removed == (2,)


def test_icons_on_a_store_too_small_to_measure_say_why_their_strength_is_not_measured(known, tmp_path):
    import shutil

    from clipatlas.steer.icons import IconConfig, make_icons
    from clipatlas.steer.success import UNMEASURED_STRENGTH

    workspace = shutil.copytree(known, tmp_path / "ws")
    for path in (workspace / "saes" / "id" / "eval").glob("steering-success-*"):
        path.unlink()
    run = make_icons(workspace, "id", IconConfig(features="0,1"))
    assert run.made == [0, 1] and run.strength.value == UNMEASURED_STRENGTH and not run.strength.measured
    assert "no feature fires on at least 10 images" in run.strength.source
