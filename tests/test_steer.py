"""Steering: edit math against brute-force references, recipes, retrieval decoding, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, ReLUConfig
from clipatlas.steer import (
    Edit,
    Recipe,
    SteerContext,
    apply_edits,
    nearest_rows,
    parse_edit,
    run_recipe,
    steer_embedding,
)
from clipatlas.steer import ranking as ranking_module

D_IN, D_SAE, N_IMAGES = 16, 24, 240


def make_sae(seed: int = 0, input_scale: float = 0.5):
    torch.manual_seed(seed)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=D_IN, d_sae=D_SAE, input_scale=input_scale))
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.2)
        sae.b_dec.normal_(0.0, 0.1)
    return sae.eval()


def ctx_with(latents: dict[str, torch.Tensor] | None = None, max_act: float = 2.0) -> SteerContext:
    return SteerContext(latents_of=lambda ref: latents[ref], max_activation=lambda f: max_act * (f + 1))


@pytest.fixture(scope="module")
def steer_workspace(tmp_path_factory):
    """A synthetic store (clusters), a ReLU SAE named 't' and its atlas."""
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.store import write_store

    root = tmp_path_factory.mktemp("steer_ws")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, D_IN)).astype(np.float32) * 3
    emb = centres[rng.integers(0, 6, N_IMAGES)] + rng.normal(size=(N_IMAGES, D_IN)).astype(np.float32) * 0.3
    write_store(root, emb, shard_size=100)
    make_sae().save_pretrained(root / "saes" / "t")
    build_atlas(root, "t", config=AtlasConfig(top_k=8, map_method="pca", thumbnails=False))
    return root


# -- edits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("set:12=7.5x", Edit("set", feature=12, value=7.5, relative=True)),
        ("add:3=-2", Edit("add", feature=3, value=-2.0)),
        ("scale:5=0.5", Edit("scale", feature=5, value=0.5)),
        ("ban:42", Edit("ban", feature=42)),
        ("transfer:img_a", Edit("transfer", image="img_a")),
        ("transfer:/tmp/a:b.png:1,2", Edit("transfer", image="/tmp/a:b.png", features=(1, 2))),
        ("difference:a,b=0.5", Edit("difference", image="a", other="b", value=0.5)),
        ("difference:a,b", Edit("difference", image="a", other="b", value=1.0)),
    ],
)
def test_parse_edit_and_json_round_trip(spec, expected):
    edit = parse_edit(spec)
    assert edit == expected
    assert Edit.from_dict(json.loads(json.dumps(edit.to_dict()))) == edit


@pytest.mark.parametrize(
    "spec",
    [
        "set:1",
        "set:a=2",
        "ban:",
        "ban:-1",
        "zap:1=2",
        "scale:1=2x",
        "difference:a=1",
        "set:1=nan",
        "add:1=inf",
        "difference:a,b=2x",
        "set1=2",
    ],
)
def test_bad_edit_specs_raise_user_errors(spec):
    with pytest.raises(UserError):
        parse_edit(spec)


def test_no_edits_returns_the_input_exactly():
    sae = make_sae()
    x = np.random.default_rng(1).normal(size=D_IN).astype(np.float32) * 5
    out = steer_embedding(sae, x, [], ctx_with())
    assert out.dtype == np.float32 and np.array_equal(out, x)


def test_steered_embedding_matches_brute_force_decoder_sum():
    """dec(z') + x - dec(z) == x + sum_i (z'_i - z_i) W_dec[i] / input_scale, written out per feature."""
    sae = make_sae(input_scale=0.5)
    rng = np.random.default_rng(2)
    x = rng.normal(size=D_IN).astype(np.float32)
    z = sae.encode(torch.from_numpy(x)[None])[0].detach().numpy().astype(np.float64)
    active = int(np.flatnonzero(z)[0])
    edits = [parse_edit("set:3=2x"), parse_edit("add:3=1"), parse_edit(f"ban:{active}"), parse_edit("scale:7=3")]
    out = steer_embedding(sae, x, edits, ctx_with(max_act=2.0))

    z_ref = z.copy()
    z_ref[3] = 2 * (2.0 * 4) + 1  # max activation of feature 3 is 2.0 * (3 + 1)
    z_ref[active] = 0.0
    z_ref[7] *= 3
    W_dec = sae.W_dec.detach().numpy().astype(np.float64)
    expected = x.astype(np.float64)
    for i in range(D_SAE):
        expected += (z_ref[i] - z[i]) * W_dec[i] / 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_ban_zeroes_the_latent_and_stacking_is_ordered():
    z = torch.arange(1.0, D_SAE + 1.0)
    banned = apply_edits(z, [parse_edit("ban:4")], ctx_with())
    assert banned[4] == 0 and torch.equal(banned[:4], z[:4]) and torch.equal(z, torch.arange(1.0, D_SAE + 1.0))
    set_then_scale = apply_edits(z, [parse_edit("set:2=10"), parse_edit("scale:2=0.5")], ctx_with())
    scale_then_set = apply_edits(z, [parse_edit("scale:2=0.5"), parse_edit("set:2=10")], ctx_with())
    assert set_then_scale[2] == 5 and scale_then_set[2] == 10


def test_transfer_and_difference_use_the_other_images_latents():
    z = torch.zeros(D_SAE)
    za, zb = torch.rand(D_SAE), torch.rand(D_SAE)
    ctx = ctx_with({"a": za, "b": zb})
    assert torch.equal(apply_edits(z, [Edit("transfer", image="a")], ctx), za)
    partial = apply_edits(z, [Edit("transfer", image="a", features=(1, 5))], ctx)
    assert partial[1] == za[1] and partial[5] == za[5] and partial.count_nonzero() <= 2
    diff = apply_edits(z + 1, [Edit("difference", image="a", other="b", value=2.0)], ctx)
    torch.testing.assert_close(diff, 1 + 2 * (za - zb))


def test_bad_inputs_are_refused():
    sae = make_sae()
    with pytest.raises(UserError, match="NaN"):
        steer_embedding(sae, np.full(D_IN, np.nan, np.float32), [parse_edit("ban:1")], ctx_with())
    with pytest.raises(UserError, match="size 16"):
        steer_embedding(sae, np.zeros(D_IN + 1, np.float32), [parse_edit("ban:1")], ctx_with())
    with pytest.raises(UserError, match="features 0..23"):
        steer_embedding(sae, np.ones(D_IN, np.float32), [parse_edit("ban:24")], ctx_with())


# -- recipes -------------------------------------------------------------------------------------
def test_recipe_round_trip_and_stable_hash(tmp_path):
    recipe = Recipe.from_dict(
        {
            "image": "00000001",
            "edits": ["set:1=7.5x", {"op": "ban", "feature": 2}],
            "decoder": "retrieval",
            "settings": {"k": 4},
            "seed": 3,
        }
    )
    same = Recipe.from_dict(json.loads(json.dumps(dict(reversed(list(recipe.to_dict().items()))))))
    assert same == recipe and same.hash == recipe.hash and len(recipe.hash) == 64
    assert Recipe.from_dict({**recipe.to_dict(), "seed": 4}).hash != recipe.hash
    built = Recipe("00000001", [parse_edit("set:1=7.5x"), parse_edit("ban:2")], settings={"k": 4}, seed=3)
    assert built == recipe and built.hash == recipe.hash
    recipe.save(tmp_path / "r.json")
    assert Recipe.load(tmp_path / "r.json") == recipe
    assert json.loads((tmp_path / "r.json").read_text())["schema_version"] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"edits": []}, "image"),
        ({"image": "a", "edits": "ban:1"}, "list"),
        ({"image": "a", "seed": -1}, "seed"),
        ({"image": "a", "colour": 1}, "unknown fields"),
        ({"image": "a", "edits": [{"op": "set", "feature": 1.5, "value": 1}]}, "integers"),
        ({"image": "a", "schema_version": 99}, "newer"),
    ],
)
def test_bad_recipes_say_what_is_wrong(bad, message):
    with pytest.raises(UserError, match=message):
        Recipe.from_dict(bad)


# -- retrieval ------------------------------------------------------------------------------------
def test_streaming_search_matches_brute_force(steer_workspace, monkeypatch):
    from clipatlas.store import Store

    store = Store.open(steer_workspace)
    monkeypatch.setattr(ranking_module, "_SEARCH_BATCH_ROWS", 37)  # many partial batches
    queries = np.random.default_rng(3).normal(size=(3, D_IN)).astype(np.float32)
    rows, scores = nearest_rows(store, queries, 10)
    all_rows = store.to_array()
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        all_rows / np.linalg.norm(all_rows, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(rows, np.argsort(-cos, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(cos, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    with pytest.raises(UserError, match="dims"):
        nearest_rows(store, np.zeros((1, D_IN + 2), np.float32), 3)


def test_run_recipe_retrieval_is_replayable_and_ranks_the_edit(steer_workspace):
    from clipatlas.atlas import Atlas

    atlas = Atlas.open(steer_workspace, "t")
    feature = max(range(D_SAE), key=lambda f: atlas.feature(f).max_activation)
    recipe = Recipe(image="00000005", edits=(parse_edit(f"set:{feature}=50x"),), settings=(("k", 6),))
    first, again = run_recipe(steer_workspace, recipe), run_recipe(steer_workspace, Recipe.from_dict(recipe.to_dict()))
    assert first.after_png == again.after_png and first.before_png == again.before_png
    assert first.before_ranking[0].image_id == "00000005" and first.before_ranking[0].score == pytest.approx(
        1.0, abs=1e-5
    )
    # A strong feature dominates the edited embedding: the nearest images are those that express it most.
    top_ids = {example.image_id for example in atlas.top_images(feature)}
    assert first.after_ranking[0].image_id in top_ids
    assert len(first.after_ranking) == 6 and first.after_png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="neither a store image id"):
        run_recipe(steer_workspace, Recipe(image="no-such-image"))
    with pytest.raises(UserError, match="unknown decoder"):
        run_recipe(steer_workspace, Recipe(image="00000005", decoder="dalle"))
    with pytest.raises(UserError, match="no settings"):
        run_recipe(steer_workspace, Recipe(image="00000005", settings=(("steps", 3),)))


def test_cli_steer_writes_png_and_recipe_that_replays(steer_workspace, tmp_path, capsys):
    from clipatlas.cli import main

    out, recipe_path = tmp_path / "out.png", tmp_path / "r.json"
    assert (
        main(
            [
                "steer",
                "00000007",
                "-w",
                str(steer_workspace),
                "--edit",
                "set:2=3x",
                "--edit",
                "ban:1",
                "--transfer-from",
                "00000100",
                "-o",
                str(out),
                "--recipe-out",
                str(recipe_path),
            ]
        )
        == 0
    )
    saved = json.loads(recipe_path.read_text())
    assert [e["op"] for e in saved["edits"]] == ["set", "ban", "transfer"] and saved["hash"] == Recipe.load(
        recipe_path
    ).hash
    replay = tmp_path / "replay.png"
    assert main(["steer", "--recipe", str(recipe_path), "-w", str(steer_workspace), "-o", str(replay)]) == 0
    assert replay.read_bytes() == out.read_bytes()
    assert main(["steer", "00000007", "-w", str(steer_workspace), "--edit", "set:999=1", "-o", str(out)]) == 2
    assert "features 0..23" in capsys.readouterr().err


# -- icons and the causal check ----------------------------------------------------------------------
def test_set_embeddings_equal_one_set_edit_each():
    from clipatlas.steer.edits import set_embeddings

    sae = make_sae()
    rng = np.random.default_rng(4)
    x = rng.normal(size=D_IN).astype(np.float32)
    xs = rng.normal(size=(3, D_IN)).astype(np.float32)
    edits = [(0, 1.0), (5, 2.0), (9, 3.0)]
    one_template = set_embeddings(sae, x, [f for f, _ in edits], [v for _, v in edits])
    per_row = set_embeddings(sae, xs, [f for f, _ in edits], [v for _, v in edits])
    for i, (feature, value) in enumerate(edits):
        edit = [Edit("set", feature=feature, value=value)]
        np.testing.assert_allclose(one_template[i], steer_embedding(sae, x, edit, ctx_with()), atol=1e-5)
        np.testing.assert_allclose(per_row[i], steer_embedding(sae, xs[i], edit, ctx_with()), atol=1e-5)


def test_causal_check_ranks_against_brute_force():
    from clipatlas.steer.causal import causal_check

    sae = make_sae()
    rng = np.random.default_rng(5)
    before, after = rng.normal(size=(2, D_IN)).astype(np.float32)
    z = sae.encode(torch.from_numpy(np.stack([before, after]))).detach().numpy()
    firing, silent = int(np.flatnonzero(z[1])[0]), int(np.flatnonzero(z[1] == 0)[0])
    check = causal_check(sae, before, after, firing)
    assert check.before_activation == pytest.approx(z[0, firing]) and check.after_activation == pytest.approx(
        z[1, firing]
    )
    assert check.after_rank == sorted(z[1], reverse=True).index(z[1, firing])
    assert causal_check(sae, before, after, silent).after_rank == D_SAE  # not firing: last, not tied with the zeros


def _assigned(workspace, name="t") -> dict[int, int]:
    manifest = json.loads((workspace / "saes" / name / "icons" / "icons.json").read_text())
    assert all(len(rows) == 1 for rows in manifest["rows"])  # a retrieval icon shows one store image
    return {f: rows[0] for f, rows in zip(manifest["features"], manifest["rows"])}


def test_icons_are_written_recorded_resumed_remade_when_inputs_change_and_verified(steer_workspace, tmp_path):
    import dataclasses
    import shutil

    from clipatlas.atlas import Atlas
    from clipatlas.steer.icons import IconConfig, make_icons, verify_icons
    from clipatlas.store import Store

    workspace = shutil.copytree(steer_workspace, tmp_path / "ws")
    config = IconConfig(features="0,1,2,3", template="00000003", batch_size=3, strength=3.0)
    run = make_icons(workspace, "t", config)
    assert run.made == [0, 1, 2, 3] and run.kept == 0 and run.strength.value == 3.0
    icons_dir = workspace / "saes" / "t" / "icons"
    atlas = Atlas.open(workspace, "t")
    assert atlas.icon_path(2) == icons_dir / "2.png" and (icons_dir / "2.png").read_bytes()[:4] == b"\x89PNG"
    again = make_icons(workspace, "t", config)
    assert again.made == [] and again.kept == 4  # resumed: nothing left to do
    (icons_dir / "1.png").unlink()
    assert make_icons(workspace, "t", config).made == [1]

    # Every alive feature gets an image up front; the template (a store image) never is one.
    first = _assigned(workspace)
    alive = set(np.flatnonzero(atlas.feature_table().alive).tolist())
    assert alive <= set(first) and Store.open(workspace).row_of("00000003") not in first.values()
    # Another template: only the icons whose image changed are remade.
    other = dataclasses.replace(config, template="00000100")
    rerun = make_icons(workspace, "t", other)
    second = _assigned(workspace)
    assert rerun.made == [f for f in range(4) if second[f] != first[f]] and rerun.kept == 4 - len(rerun.made)

    report = verify_icons(workspace, "t", "0,1,2,3")
    # The check reads the images actually assigned, not a fresh ranking.
    z = atlas.sae.encode(torch.from_numpy(Store.open(workspace).rows(np.array([second[f] for f in range(4)]))))
    z = z.detach().numpy()
    for f, check in enumerate(report["checks"]):
        assert check["feature"] == f and check["after_activation"] == pytest.approx(z[f, f], abs=1e-5)
        own = z[f, f]
        assert check["after_rank"] == (int((z[f] > own).sum()) if own > 0 else D_SAE)
    ranks = [c["after_rank"] for c in report["checks"]]
    assert report["n_icons"] == 4 and report["top1_share"] == sum(r == 0 for r in ranks) / 4
    assert report["top5_share"] == sum(r < 5 for r in ranks) / 4
    strongest = set(atlas.sae.encode(torch.from_numpy(Store.open(workspace).to_array())).detach().argmax(1).tolist())
    assert report["top1_ceiling"] == sum(f in strongest for f in range(4)) / 4
    assert report["distinct_share"] == len({second[f] for f in range(4)}) / 4
    assert json.loads((icons_dir / "verify.json").read_text())["schema_version"] == 1
    with pytest.raises(UserError, match="features 0..23"):
        make_icons(workspace, "t", IconConfig(features="0,99", template="00000003"))


def test_icon_assignment_keeps_strongest_latent_rows_and_gives_most_features_their_own():
    from clipatlas.steer.icons import assign_images

    def cands(rows, scores, ranks):
        return np.array(rows), np.array(scores, dtype=np.float32), np.array(ranks)

    candidates = {
        0: cands([5, 6], [3.0, 2.5], [1, 0]),  # row 6 is its strongest-latent row: it takes it over row 5
        1: cands([6, 7], [2.9, 2.2], [1, 3]),  # row 6 is taken: row 7
        2: cands([7, 8], [2.5, 1.0], [2, 4]),  # greedy by score would take 7 and leave feature 1 without
        3: cands([6], [1.9], [2]),  # its only candidate is feature 0's: left for the caller
    }
    assert assign_images(candidates, n_rows=10) == {0: 6, 1: 7, 2: 8}
    # Against brute force: no assignment gives more features a row of their own.
    rng = np.random.default_rng(0)
    for _ in range(20):
        ranks = rng.integers(1, 5, (8, 12))  # ranks[f, row]; each row has one strongest latent
        ranks[rng.integers(0, 8, 12), np.arange(12)] = 0
        random = {}
        for f in range(8):
            rows = rng.choice(12, rng.integers(1, 4), replace=False)
            random[f] = cands(rows, rng.random(len(rows)), ranks[f, rows])
        strongest = {f for f, (_, _, r) in random.items() if (r == 0).any()}
        chosen = assign_images(random, n_rows=12)
        assert len(set(chosen.values())) == len(chosen) and strongest <= set(chosen)
        assert all(ranks[f, chosen[f]] == 0 for f in strongest)
        assert len(chosen) == most_features_with_own_rows(random, strongest)


def most_features_with_own_rows(candidates, strongest) -> int:
    """Brute force: the largest set of features (holding every strongest-latent feature, each on a
    strongest-latent row) that can all have distinct rows."""
    import itertools

    features = list(candidates)
    for size in range(len(features), len(strongest) - 1, -1):
        for subset in itertools.combinations(features, size):
            if not strongest <= set(subset):
                continue
            options = [[r for r, rank in zip(*candidates[f][::2]) if f not in strongest or rank == 0] for f in subset]
            if any(len(set(pick)) == len(pick) for pick in itertools.product(*options)):
                return size
    return 0


def test_icon_default_strength_comes_from_the_measured_curve(steer_workspace, tmp_path, capsys):
    import shutil

    from clipatlas.atlas import Atlas
    from clipatlas.cli import main
    from clipatlas.steer.success import SuccessCurve

    workspace = shutil.copytree(steer_workspace, tmp_path / "ws")
    curve_path = workspace / "saes" / "t" / "eval" / "steering-success-retrieval.json"
    curve_path.unlink(missing_ok=True)
    args = ["icons", "-w", str(workspace), "--name", "t", "--features", "4,5", "--template", "00000003", "--verify"]
    assert main(args) == 0
    out = capsys.readouterr().out
    curve = SuccessCurve.from_dict(json.loads(curve_path.read_text()))
    assert curve.complete and curve.atlas_build == Atlas.open(workspace, "t").build_id
    chosen = min(p.strength for p in curve.points if p.success >= curve.target)
    assert curve.default_strength == chosen
    assert out.startswith(f"strength {chosen:g}x") and "measured now" in out
    assert json.loads((workspace / "saes" / "t" / "icons" / "icons.json").read_text())["identity"]["strength"] == chosen
    report = json.loads((workspace / "saes" / "t" / "icons" / "verify.json").read_text())
    assert f"{report['top1_share']:.1%} activate their own feature most" in out
    if report["top1_share"] < 0.9:
        assert "warning: " in out and "activate their own feature most (target 90%)" in out
    assert main(["icons", "-w", str(workspace), "--name", "t", "--features", "x,y"]) == 2


def test_icons_warn_when_many_are_identical(steer_workspace, tmp_path, capsys):
    import shutil

    from clipatlas.atlas import Atlas
    from clipatlas.cli import main

    workspace = shutil.copytree(steer_workspace, tmp_path / "ws")
    # top_latents=1 leaves few candidate images per feature, so many features share their best image.
    assert (
        main(
            [
                "icons",
                "-w",
                str(workspace),
                "--name",
                "t",
                "--strength",
                "1",
                "--set",
                "top_latents=1",
                "--set",
                "rank_weight=0",
                "--set",
                "dominant_weight=0",
                "--set",
                "activation_weight=0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = _assigned(workspace)
    alive = np.flatnonzero(Atlas.open(workspace, "t").feature_table().alive).tolist()
    share = len({rows[f] for f in alive}) / len(alive)
    assert f"{share:.1%} of the {len(alive)} alive features' icons are distinct" in out
    assert share < 0.8 and "warning: only" in out


def test_demo_steering_writes_icons_and_a_replayable_recipe(steer_workspace, tmp_path):
    import shutil

    from clipatlas.cli import main
    from clipatlas.steer.demo import write_demo_steering

    workspace = shutil.copytree(steer_workspace, tmp_path / "ws")
    recipe_path = write_demo_steering(workspace, "t", template="00000003")
    recipe = Recipe.load(recipe_path)
    assert recipe.edits[0].op == "set" and recipe.edits[0].relative and recipe.sae == "t"
    alive = len(list((workspace / "saes" / "t" / "icons").glob("*.png")))
    from clipatlas.atlas import Atlas

    assert alive == len(Atlas.open(workspace, "t").map_points().feature) > 0
    replay = tmp_path / "replay.png"
    assert main(["steer", "--recipe", str(recipe_path), "-w", str(workspace), "-o", str(replay)]) == 0
    assert replay.read_bytes() == (workspace / "recipes" / "example.png").read_bytes()


def test_demo_example_sets_the_most_frequent_named_feature(steer_workspace, tmp_path, scored_label):
    import shutil

    from clipatlas.atlas import Atlas, Label
    from clipatlas.atlas.annotations import add_labels
    from clipatlas.steer.demo import example_feature, example_recipe

    workspace = shutil.copytree(steer_workspace, tmp_path / "ws")
    atlas = Atlas.open(workspace, "t")
    table = atlas.feature_table()
    alive = np.flatnonzero(table.alive)
    by_count = alive[np.argsort(-table.count[alive], kind="stable")]
    assert example_feature(atlas) == by_count[0]  # nothing named: the most frequent alive feature
    strongest = int(alive[np.argmax(table.max_activation[alive])])
    named = [int(f) for f in by_count[1:] if f != strongest][::3][:3]  # neither the most frequent nor the strongest
    for f in named:
        scored_label(atlas, f, f"concept {f}")
    add_labels(atlas, [Label(int(by_count[0]), "captions", "never scored")])  # a label that names nothing
    recipe = example_recipe(workspace, "t")
    expected = max(named, key=lambda f: (table.count[f], -f))
    (edit,) = recipe.edits
    assert edit.op == "set" and edit.feature == expected and edit.relative
    assert expected in Atlas.open(workspace, "t").headlines()
    store_row = atlas.store.row_of(recipe.image)
    z = atlas.sae.encode(torch.from_numpy(atlas.store.rows(np.array([store_row])))).detach().numpy()[0]
    assert z[expected] == 0  # the edit sets the feature on an image that lacks it


def test_cli_steer_verify_reports_the_retrieved_images_activation(steer_workspace, tmp_path, capsys):
    from clipatlas.atlas import Atlas
    from clipatlas.cli import main
    from clipatlas.store import Store

    atlas = Atlas.open(steer_workspace, "t")
    feature = max(range(D_SAE), key=lambda f: atlas.feature(f).max_activation)
    args = ["steer", "00000009", "-w", str(steer_workspace), "--name", "t", "--edit", f"set:{feature}=2x"]
    assert main([*args, "--verify", "-o", str(tmp_path / "o.png")]) == 0
    out = capsys.readouterr().out
    top_id = out.splitlines()[1].split("\t")[0].strip()  # the first ranked image
    assert top_id != "00000009"  # an edit never shows the unedited image
    store = Store.open(steer_workspace)
    z = atlas.sae.encode(torch.from_numpy(store.rows([store.row_of("00000009"), store.row_of(top_id)]))).detach()
    rank = int((z[1] > z[1, feature]).sum()) if z[1, feature] > 0 else D_SAE
    before_rank = int((z[0] > z[0, feature]).sum()) if z[0, feature] > 0 else D_SAE
    line = next(line for line in out.splitlines() if line.startswith(f"feature {feature}:"))
    assert line.startswith(f"feature {feature}: activation {z[0, feature]:.3g} -> {z[1, feature]:.3g}, ")
    assert f"rank {before_rank} -> {rank}; the result differs from the source" in line
    assert line.endswith(f"{'shown' if rank < 5 else 'not shown'} (success = differs and rank < 5)")


def test_kandinsky_refuses_a_non_clip_store(tmp_path):
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.steer import steerer_for
    from clipatlas.store import write_store

    rng = np.random.default_rng(6)
    write_store(tmp_path, rng.normal(size=(30, D_IN)).astype(np.float32), encoder="efficientnet-lite0")
    make_sae().save_pretrained(tmp_path / "saes" / "t")
    build_atlas(tmp_path, "t", config=AtlasConfig(top_k=4, map_method="pca", thumbnails=False))
    with pytest.raises(UserError, match="--decoder retrieval"):
        steerer_for(tmp_path, "t").run(Recipe(image="00000001", decoder="kandinsky"))


def test_cli_settings_parse_numbers_and_refuse_the_rest():
    from clipatlas.steer.decoders import parse_settings

    assert parse_settings(["steps=12", "guidance=4.5", "k=1e1"]) == (("guidance", 4.5), ("k", 10.0), ("steps", 12))
    for bad in (["steps"], ["steps=many"], ["=3x"]):
        with pytest.raises(UserError, match="KEY=NUMBER"):
            parse_settings(bad)


def test_retrieval_tiles_enlarge_small_images_instead_of_showing_a_speck():
    from PIL import Image

    from clipatlas.steer.decoders import contact_sheet

    class TinyImageStore:
        def open_image(self, row):
            return Image.new("RGB", (28, 28), (0, 0, 0))

    sheet = np.asarray(contact_sheet(TinyImageStore(), [0], 128))
    dark = np.argwhere(sheet.sum(axis=2) == 0)
    assert sheet.shape == (128, 128, 3)
    assert (dark.max(axis=0) - dark.min(axis=0) + 1).tolist() == [112, 112]  # 28 px x 4, centred
    assert dark.min(axis=0).tolist() == [8, 8]


def test_retrieval_decoder_draws_each_tile_once_and_its_sheets_stay_the_same(steer_workspace, monkeypatch):
    from clipatlas.atlas import Atlas
    from clipatlas.steer import decoders

    drawn, draw = [], decoders._tile

    def counted(store, row, size):
        drawn.append(row)
        return draw(store, row, size)

    monkeypatch.setattr(decoders, "_tile", counted)
    atlas = Atlas.open(steer_workspace, "t")
    decoder = decoders.RetrievalDecoder(atlas.store, atlas.image_codes(), atlas.feature_table().max_activation)
    embeddings = atlas.store.rows(np.arange(3))
    first, again = (decoder.decode(embeddings, settings={"k": 4}) for _ in range(2))
    shown = [hit.row for hits in first.rankings for hit in hits]
    assert sorted(drawn) == sorted(set(shown))  # each image drawn once over both decodes
    for sheet, hits in zip(again.images, again.rankings):  # the same pixels as sheets drawn tile by tile
        expected = decoders.contact_sheet(atlas.store, [hit.row for hit in hits], decoders.retrieval_config({}).tile)
        np.testing.assert_array_equal(np.asarray(sheet), np.asarray(expected))
