"""build_atlas + the Atlas query API on a random store and a random TopK SAE, checked by brute force."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipatlas.atlas import Atlas, AtlasConfig, AtlasError, Label, Score, build_atlas
from clipatlas.atlas.annotations import add_labels, add_scores, set_icon
from clipatlas.atlas.query import NO_LABEL_BEATS_BASELINE
from clipatlas.atlas.stream import HIST_EDGES, STATE_FILE
from clipatlas.atlas.types import P_AGAINST_CHANCE, P_AGAINST_SHUFFLED, headline, naming
from clipatlas.errors import UserError
from clipatlas.sae import SAE, make_config
from clipatlas.sae.model import ARCHITECTURES
from clipatlas.store import write_store

N, D, F, K, TOP_K = 600, 16, 64, 4, 8
DEAD = range(8)  # features given a hopeless bias
FAST = AtlasConfig(top_k=TOP_K, chunk_size=128, map_method="pca", n_similar=5, n_coactivating=5, per_decile=2)


def topk_sae(d_in: int) -> SAE:
    return ARCHITECTURES["topk"](make_config("topk", d_in=d_in, d_sae=F, k=K))


def make_workspace(root: Path, n: int = N, seed: int = 0, images: bool = True) -> tuple[np.ndarray, SAE]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32) * 3
    rows = []
    for i in range(n):
        uri = f"synthetic:{i}"
        if images and i % 2 == 0:  # half the images exist on disk, so thumbnails can be made
            uri = str(root / "images" / f"{i}.png")
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (200, 150), tuple(int(v) for v in rng.integers(0, 255, 3))).save(uri)
        rows.append({"image_id": f"img{i:04d}", "uri": uri, "source": "test", "caption": f"a widget of kind {i % 7}"})
    write_store(root, x, rows)
    torch.manual_seed(seed)
    sae = topk_sae(d_in=D)
    with torch.no_grad():
        sae.b_enc[list(DEAD)] = -1e4
    sae.save_pretrained(root / "saes" / "t")
    return x, sae


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas_ws")
    x, sae = make_workspace(root)
    atlas = build_atlas(root, "t", config=FAST)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x)).numpy()
    return root, x, z, sae, atlas


def test_feature_statistics_equal_brute_force(built):
    _, _, z, _, atlas = built
    assert atlas.n_features == F and atlas.n_images == N
    for f in range(F):
        info = atlas.feature(f)
        fires = z[:, f] > 0
        assert info.alive == bool(fires.any()) and info.count == fires.sum()
        assert info.frequency == pytest.approx(fires.mean())
        assert info.max_activation == pytest.approx(z[:, f].max(), rel=1e-5)
        if fires.any():
            assert info.mean_activation == pytest.approx(z[fires, f].mean(), rel=1e-5)
            counts, _ = np.histogram(z[fires, f], bins=HIST_EDGES)
            nonzero = np.flatnonzero(counts)
            assert info.hist_counts == counts[nonzero[0] : nonzero[-1] + 1].tolist()
            assert info.hist_edges == pytest.approx(HIST_EDGES[nonzero[0] : nonzero[-1] + 2].tolist())
    assert not any(atlas.feature(f).alive for f in DEAD)


def test_top_images_equal_brute_force(built):
    _, _, z, _, atlas = built
    for f in range(F):
        fires = np.flatnonzero(z[:, f] > 0)
        expected = fires[np.argsort(-z[fires, f], kind="stable")][:TOP_K]
        top = atlas.top_images(f)
        assert [e.row for e in top] == expected.tolist()
        assert [e.image_id for e in top] == [f"img{r:04d}" for r in expected]
        np.testing.assert_allclose([e.activation for e in top], z[expected, f], rtol=1e-5)


def test_quantile_samples_span_the_range(built):
    _, _, z, _, atlas = built
    alive = [f for f in range(F) if (z[:, f] > 0).any()]
    for f in alive:
        samples = atlas.quantile_samples(f)
        assert samples, f
        max_act = z[:, f].max()
        for s in samples:
            assert z[s.row, f] == pytest.approx(s.activation, rel=1e-5)
            assert s.decile == min(int(s.activation / max_act * 10), 9)
        assert [s.decile for s in samples] == sorted(s.decile for s in samples)
    # Deciles below the top one are represented (the point of quantile samples).
    assert sum(1 for f in alive for s in atlas.quantile_samples(f) if s.decile < 5) > len(alive)


def test_image_features_and_embedding_features(built):
    _, x, z, _, atlas = built
    for row in (0, 17, 599):
        active = np.flatnonzero(z[row] > 0)
        expected = active[np.argsort(-z[row, active], kind="stable")]
        from_store = atlas.features_of_image(f"img{row:04d}")
        from_vector = atlas.features_of_embedding(x[row])
        assert [a.feature for a in from_store] == expected.tolist()
        assert [a.feature for a in from_vector] == expected.tolist()
        np.testing.assert_allclose([a.activation for a in from_vector], z[row, expected], rtol=1e-5)


def test_neighbours_equal_brute_force(built):
    _, _, z, sae, atlas = built
    alive = np.flatnonzero((z > 0).any(axis=0))
    for by, weights in (("decoder", sae.W_dec.detach().numpy()), ("encoder", sae.W_enc.detach().numpy().T)):
        unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
        for f in (3, 20, 63):
            keys = alive[alive != f]
            sims = unit[keys] @ unit[f]
            got = atlas.similar(f, by=by)
            assert [n.feature for n in got] == keys[np.argsort(-sims)[:5]].tolist()
            np.testing.assert_allclose([n.score for n in got], np.sort(sims)[::-1][:5], atol=1e-5)
    fires = (z > 0).astype(np.int64)
    both = fires.T @ fires
    for f in alive[:10]:
        got = atlas.coactivating(f)
        jaccard = both[f] / (fires[:, f].sum() + fires.sum(axis=0) - both[f])
        jaccard[f] = -1
        expected = sorted((j for j in range(F) if both[f, j] and j != f), key=lambda j: (-jaccard[j], j))[:5]
        assert [n.feature for n in got] == expected
        assert [n.count for n in got] == both[f, expected].tolist()


def test_map_points_cover_alive_features(built):
    _, _, z, _, atlas = built
    points = atlas.map_points()
    alive = np.flatnonzero((z > 0).any(axis=0))
    np.testing.assert_array_equal(points.feature, alive)
    assert len(points.x) == len(points.y) == len(points.cluster) == len(points.label) == len(alive)
    assert np.isfinite(points.x).all() and len(set(points.cluster.tolist())) > 1
    info = atlas.feature(int(alive[0]))
    assert (info.x, info.y, info.cluster) == pytest.approx((points.x[0], points.y[0], points.cluster[0]))
    assert atlas.feature(DEAD[0]).x is None


def scored(feature: int, label_id: int, value: float, baseline: float = 0.5, judge: str = "captions", validation=None):
    return Score(feature, label_id, "detection", judge, "auroc", value, baseline, 20, validation=validation)


def test_labels_scores_headline_and_search(tmp_path):
    make_workspace(tmp_path, n=120, images=False)
    atlas = build_atlas(tmp_path, "t", config=FAST)
    alive = [f for f in range(F) if atlas.feature(f).alive]
    assert atlas.labels(alive[0]) == [] and atlas.feature(alive[0]).label is None  # the build makes no labels
    ids = add_labels(atlas, [Label(f, "captions", f"widget kind {f % 7}") for f in alive])
    add_scores(atlas, [scored(f, i, 0.5 + (f % 5) / 10) for f, i in zip(alive, ids)])  # f % 5 == 0: ties its baseline
    for f in alive[:10]:
        assert atlas.feature(f).label == (f"widget kind {f % 7}" if f % 5 else None)
    hits = atlas.search_labels("WIDG", limit=1000)
    assert {h.feature for h in hits} == set(alive)
    keys = [(not h.score().beats_baseline, -h.score().value) for h in hits]
    assert keys == sorted(keys)  # best score first, labels that do not beat their baseline last
    assert atlas.search_labels("zebra") == [] and atlas.search_labels("  ") == []
    assert atlas.search_labels("%") == []  # LIKE wildcards are matched literally
    assert len(atlas.search_labels("widget")) == 50  # the default limit

    f = next(f for f in alive if f % 5 == 4)
    (vlm_id,) = add_labels(atlas, [Label(f, "vlm", "a gadget", model="m", prompt_version="label-v1")])
    assert atlas.feature(f).label == f"widget kind {f % 7}"  # an unscored label never names a feature
    add_scores(atlas, [scored(f, vlm_id, 0.7, validation=0.95)])
    assert atlas.feature(f).label == "a gadget"  # ranked by the labelling-half score, not the held-out one
    # the labeller that names features best over all features wins over one feature's lucky validation
    (other_id,) = add_labels(atlas, [Label(f, "other", "a widget", model="m")])
    add_scores(atlas, [scored(f, other_id, 0.9, validation=0.99)])
    overall = Score(f, vlm_id, "detection", "captions", "auroc", 0.7, 0.5, 20, validation=0.6)
    add_scores(atlas, [dataclasses.replace(overall, details={"labeller_validation": 0.995})])
    assert atlas.feature(f).label == "a gadget"
    add_scores(atlas, [scored(f, vlm_id, 0.4, judge="vlm")])
    # the most trusted judge failed the vlm label: the name falls back to the best label that beat its baseline
    assert atlas.feature(f).label == "a widget"
    tied = next(g for g in alive if g % 5 == 0)
    assert atlas.naming_note(tied) == NO_LABEL_BEATS_BASELINE and atlas.naming_note(DEAD[0]) == "unlabelled"
    # worse than a coin flip but above its shuffled baseline, stored with the flag an older clipatlas wrote
    # (value > baseline): read back, it beats nothing, names nothing and is no best guess
    coin = next(g for g in alive if g % 5 == 0 and g != tied)
    (coin_id,) = add_labels(atlas, [Label(coin, "old", "worse than a coin", model="m")])
    add_scores(atlas, [scored(coin, coin_id, 0.45, baseline=0.40)])
    with sqlite3.connect(atlas.db_path) as conn:
        assert conn.execute("SELECT beats_baseline FROM scores WHERE label_id = ?", (coin_id,)).fetchone() == (0,)
        conn.execute("UPDATE scores SET beats_baseline = 1 WHERE label_id = ?", (coin_id,))
    atlas.refresh()
    stale = next(label for label in atlas.labels(coin) if label.id == coin_id).score()
    assert (stale.value, stale.baseline, stale.beats_baseline, stale.names_feature) == (0.45, 0.40, False, False)
    assert coin not in atlas.headlines() and coin not in atlas.best_guesses()
    assert atlas.naming_note(coin) == NO_LABEL_BEATS_BASELINE
    add_labels(atlas, [Label(f, "vlm", "a better gadget", model="m", prompt_version="label-v1")])  # replaces it
    assert [label.text for label in atlas.labels(f) if label.source == "vlm"] == ["a better gadget"]
    assert atlas.labels(f)[-1].scores == () and atlas.feature(f).label == "a widget"
    assert atlas.summary()["n_named"] == len(atlas.headlines()) == sum(1 for g in alive if g % 5)
    # one feature's labels (their scores found through the features' index) equal the ones read all at once
    assert all(atlas.labels(g) == found for g, found in atlas.labels_by_feature().items())


def test_a_label_names_its_feature_only_when_it_beats_its_baseline_clearly():
    def label(text, value, p_chance, p_shuffled=None, validation=0.9):
        details = {P_AGAINST_CHANCE: p_chance, **({} if p_shuffled is None else {P_AGAINST_SHUFFLED: p_shuffled})}
        score = Score(1, 0, "detection", "captions", "auroc", value, 0.5, 8, validation=validation)
        return Label(1, "captions", text, scores=(dataclasses.replace(score, details=details),))

    lucky = label("lucky", 0.9, 0.057, validation=0.99)  # 4 + 4 images, one out of place: could be chance
    assert lucky.scores[0].beats_baseline and lucky.scores[0].evidence_p == 0.057 and not lucky.scores[0].names_feature
    assert headline([lucky]) is None
    clear = label("clear", 0.8, 0.001, 0.03)
    assert clear.scores[0].evidence_p == 0.03 and headline([lucky, clear]) is clear
    # clears chance, but a tenth of the other features' labels do as well on these images: not the name
    assert headline([label("generic", 0.8, 0.001, 0.1)]) is None
    legacy = Label(1, "captions", "old", scores=(Score(1, 0, "detection", "captions", "auroc", 0.7, 0.5, 8),))
    assert legacy.scores[0].evidence_p is None and headline([legacy]) is legacy  # scored before p-values
    # labels scored by different judges: the most trusted judge's labels compete, the others do not crash it
    by_classes = dataclasses.replace(
        clear, text="by classes", scores=(dataclasses.replace(clear.scores[0], judge="classes"),)
    )
    assert headline([by_classes, clear]) is clear and headline([by_classes]) is by_classes


def test_summary(built):
    root, _, z, _, atlas = built
    summary = atlas.summary()
    assert summary["n_alive"] == int((z > 0).any(axis=0).sum())
    assert summary["n_images"] == N and summary["n_features"] == F and summary["encoder"] == "synthetic"
    assert summary["metrics"] is None and summary["top_k"] == TOP_K


def test_thumbnails_only_for_reopenable_examples(built):
    _, _, _, _, atlas = built
    rows = {e.row for f in range(F) for e in atlas.top_images(f) + atlas.quantile_samples(f)}
    for row in rows:
        path = atlas.thumbnail_path(f"img{row:04d}")
        if row % 2 == 0:
            assert path is not None and path.is_file()
            with Image.open(path) as thumb:
                assert thumb.format == "WEBP" and max(thumb.size) == 128
        else:
            assert path is None


def test_bad_queries_raise_user_errors(built):
    _, _, _, _, atlas = built
    with pytest.raises(AtlasError, match="does not exist"):
        atlas.feature(F)
    with pytest.raises(AtlasError):
        atlas.top_images(-1)
    with pytest.raises(AtlasError, match="no image"):
        atlas.features_of_image("nope")
    with pytest.raises(AtlasError, match="shape"):
        atlas.features_of_embedding(np.zeros(D + 1))
    with pytest.raises(AtlasError, match="NaN"):
        atlas.features_of_embedding(np.full(D, np.nan))
    with pytest.raises(AtlasError, match="decoder"):
        atlas.similar(0, by="nonsense")


def test_icons_labels_and_scores_survive_a_rebuild(tmp_path):
    make_workspace(tmp_path, n=200, images=False)
    atlas = build_atlas(tmp_path, "t", config=FAST)
    icon = tmp_path / "saes" / "t" / "icons" / "12.png"
    icon.parent.mkdir()
    icon.write_bytes(b"png")
    set_icon(atlas, 12, icon)
    (label_id,) = add_labels(atlas, [Label(12, "vlm", "traffic lights at night", model="m", prompt_version="v1")])
    add_scores(atlas, [scored(12, label_id, 0.9)])
    assert atlas.icon_path(12) == icon and atlas.icon_path(13) is None
    assert atlas.feature(12).label == "traffic lights at night"
    rebuilt = build_atlas(tmp_path, "t", config=dataclasses.replace(FAST, top_k=3))
    assert len(rebuilt.top_images(12)) <= 3
    assert rebuilt.icon_path(12) == icon
    assert rebuilt.labels(12) == atlas.labels(12) and rebuilt.feature(12).label == "traffic lights at night"
    assert len(list((tmp_path / "saes" / "t" / "atlas").glob("arrays-*"))) == 1  # the old arrays were removed
    with pytest.raises(AtlasError):
        add_labels(rebuilt, [Label(12, "", "x")])
    topk_sae(d_in=D).save_pretrained(tmp_path / "saes" / "t")  # retrained: new weights, new features
    retrained = build_atlas(tmp_path, "t", config=FAST)
    assert retrained.icon_path(12) is None and retrained.labels(12) == []


V1_LABELS = """CREATE TABLE labels (id INTEGER PRIMARY KEY, feature INTEGER NOT NULL, source TEXT NOT NULL,
    text TEXT NOT NULL, score TEXT NOT NULL);
DROP TABLE scores;
INSERT INTO labels VALUES (1, 12, 'imagenet', 'binder', '{}'), (2, 12, 'vlm', 'traffic light', '{"by": "hand"}');
UPDATE meta SET value = '1' WHERE key = 'schema_version';"""


def write_v1_atlas(root: Path) -> Path:
    """An atlas as clipatlas wrote it at schema 1: a lens label and a labeller's label."""
    make_workspace(root, n=60, images=False)
    path = build_atlas(root, "t", config=FAST).db_path
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript("DROP TABLE labels;" + V1_LABELS)
    conn.close()
    return path


def test_schema_1_atlas_migrates_when_opened(tmp_path):
    write_v1_atlas(tmp_path)
    atlas = Atlas.open(tmp_path, "t")
    assert atlas.meta["schema_version"] == "2"
    (kept,) = atlas.labels(12)  # the unscored lens label is gone, the labeller's label kept
    assert (kept.source, kept.text, kept.evidence, kept.scores) == ("vlm", "traffic light", {"by": "hand"}, ())
    assert atlas.feature(12).label is None  # never scored: not a name


def test_schema_1_atlas_read_only_says_how_to_rebuild(tmp_path, monkeypatch):
    write_v1_atlas(tmp_path)
    with monkeypatch.context() as patch:  # a read-only mount (chmod does not stop root, who runs CI)
        patch.setattr("clipatlas.atlas.db.os.access", lambda path, mode: False)
        with pytest.raises(AtlasError, match="rebuild it with: clipatlas atlas"):
            Atlas.open(tmp_path, "t")
    rebuilt = build_atlas(tmp_path, "t", config=FAST)  # a rebuild migrates and keeps the label too
    assert [label.text for label in rebuilt.labels(12)] == ["traffic light"]


def test_missing_prerequisites_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="clipatlas train"):
        build_atlas(tmp_path, config=FAST)
    make_workspace(tmp_path, n=50, images=False)
    with pytest.raises(AtlasError, match="clipatlas atlas"):
        Atlas.open(tmp_path, "t")
    other = topk_sae(d_in=D + 1)
    other.save_pretrained(tmp_path / "saes" / "wrong")
    with pytest.raises(UserError, match="17-d inputs"):
        build_atlas(tmp_path, "wrong", config=FAST)
    diverged = topk_sae(d_in=D)
    with torch.no_grad():
        diverged.W_enc[0, 0] = float("nan")
    diverged.save_pretrained(tmp_path / "saes" / "diverged")
    with pytest.raises(UserError, match="NaN"):
        build_atlas(tmp_path, "diverged", config=FAST)
    with pytest.raises(UserError, match="--top-k must be at least 1"):
        AtlasConfig(top_k=0)
    with pytest.raises(UserError, match="map method"):
        AtlasConfig(map_method="tsne")


def dump(db_path: Path) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_killed_build_rerun_gives_identical_database(tmp_path):
    """SIGKILL the CLI mid-pass, re-run it, and compare with an uninterrupted build."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    make_workspace(killed, n=4000, images=False)
    shutil.copytree(killed, straight)
    args = ["--map-method", "pca", "--top-k", "8", "--chunk-size", "16", "--no-thumbnails"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "clipatlas", "atlas", "-w", str(killed), *args, "--checkpoint-seconds", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atlas_dir = killed / "saes" / "t" / "atlas"
    deadline = time.monotonic() + 120
    while not list(atlas_dir.glob(f".build-*/{STATE_FILE}")) and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (atlas_dir / "atlas.sqlite").exists(), "the kill came too late to test resuming"
    from clipatlas.atlas.stream import StreamState

    partial = StreamState.load(next(atlas_dir.glob(f".build-*/{STATE_FILE}")), torch.device("cpu"))
    assert 0 < partial.next_row < 4000
    done = subprocess.run(
        [sys.executable, "-m", "clipatlas", "atlas", "-w", str(killed), *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "features alive" in done.stdout
    build_atlas(straight, config=AtlasConfig(top_k=8, chunk_size=16, map_method="pca", thumbnails=False))
    assert dump(atlas_dir / "atlas.sqlite") == dump(straight / "saes" / "t" / "atlas" / "atlas.sqlite")
    assert not list(atlas_dir.glob(".build-*"))  # the finished build removed its checkpoint


def test_cli_reports_missing_sae_as_one_line(tmp_path, capsys):
    from clipatlas.cli import main

    assert main(["atlas", "-w", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # the first missing part is named: here the store
    assert err.startswith("error: ") and "clipatlas embed SOURCE" in err and err.count("\n") == 1
    write_store(tmp_path, np.ones((4, D), np.float32), [{"image_id": f"i{i}", "uri": f"x:{i}"} for i in range(4)])
    assert main(["atlas", "-w", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no trained SAE") and "clipatlas train" in err and err.count("\n") == 1


def test_newer_atlas_schema_is_refused(tmp_path):
    make_workspace(tmp_path, n=60, images=False)
    atlas = build_atlas(tmp_path, "t", config=FAST)
    conn = sqlite3.connect(atlas.db_path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(AtlasError, match="rebuild it with: clipatlas atlas"):
        Atlas.open(tmp_path, "t")


def test_a_label_below_chance_beats_nothing_and_one_short_of_p_is_only_a_best_guess():
    def label(text, value, baseline, p):
        details = {P_AGAINST_CHANCE: p, P_AGAINST_SHUFFLED: p}
        return Label(
            1,
            "captions",
            text,
            scores=(Score(1, 0, "detection", "captions", "auroc", value, baseline, 16, details=details),),
        )

    coin = label("worse than a coin", 0.45, 0.40, 0.6)
    assert not coin.scores[0].beats_baseline and not coin.scores[0].names_feature
    assert naming([coin]) == (None, None)  # neither a name nor a best guess
    clear = label("clear", 0.70, 0.60, 0.01)
    assert clear.scores[0].beats_baseline and clear.scores[0].names_feature
    assert naming([coin, clear]) == (clear, None) and headline([coin, clear]) is clear
    # beats its baseline and chance but misses p <= 0.05 (8 + 8 images): the best guess, never the name
    near = label("dark birds", 0.95, 0.62, 0.061)
    assert near.scores[0].beats_baseline and not near.scores[0].names_feature
    assert naming([coin, near]) == (None, near) and naming([near, coin])[1] is near and headline([near]) is None
    assert naming([near, clear])[1] is None  # a named feature has no best guess
    # beating its baseline with p 0.3 (a coin-flip's evidence): not even a best guess; p 0.1 still is one
    weak = label("weak", 0.95, 0.62, 0.3)
    assert weak.scores[0].beats_baseline and naming([weak]) == (None, None) and naming([weak, near])[1] is near
    assert naming([label("edge", 0.9, 0.6, 0.1)])[1] is not None
    # at chance exactly, or with a baseline above the value: not beating
    assert not label("chance", 0.5, 0.3, 0.5).scores[0].beats_baseline
    assert not label("below baseline", 0.7, 0.72, 0.01).scores[0].beats_baseline
    # intruder accuracy has no fixed chance: its stored baseline is chance (1 / 5 with four activating images)
    assert Score(1, None, "intruder", "captions", "accuracy", 0.3, 0.2, 10).beats_baseline
    assert not Score(1, None, "intruder", "captions", "accuracy", 0.2, 0.2, 10).beats_baseline


def test_headline_when_labels_of_one_feature_were_scored_by_different_judges():
    # one label scored only by the captions judge, another only by the VLM judge; both beat their baselines
    by_captions = Label(3, "captions", "red", scores=(scored(3, 1, 0.9, judge="captions"),), id=1)
    by_vlm = Label(3, "vlm", "a red ball", scores=(scored(3, 2, 0.7, judge="vlm"),), id=2)
    assert headline([by_captions, by_vlm]) == by_vlm == headline([by_vlm, by_captions])  # the VLM judge is trusted more
