"""The interp stage offline: the split never lets a scoring image reach a labeller, Fightin' Words
and the scorers' arithmetic against hand-computed and scikit-learn references, the offline
labellers and judges on a workspace whose features are known (feature t fires on topic t)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOPICS
from scipy.stats import mannwhitneyu
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from clipatlas.atlas import Atlas
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig
from clipatlas.interp.labellers import CaptionsLabeller, ClassifierLabeller
from clipatlas.interp.metrics import (
    auroc,
    aurocs,
    balanced_accuracy,
    p_above_chance,
    p_against_shuffled,
    shuffled_partners,
    top_half_predictions,
)
from clipatlas.interp.run import label, open_data, score
from clipatlas.interp.text import choose_terms, fightin_words, terms
from clipatlas.interp.types import LABELLING, VALIDATION, LeakError

TOPIC_FEATURES = range(len(TOPICS))


# ---- arithmetic -------------------------------------------------------------------------------
def test_fightin_words_matches_a_hand_computed_case():
    # y_i = (2, 0, 1), y_j = (1, 3, 2), prior strength 6: pooled 1/3 each, so alpha = (2, 2, 2), n_i = 3, n_j = 6.
    # Term 0: delta = log(4 / 5) - log(3 / 9) = 0.875469, var = 1/4 + 1/3, z = 0.875469 / 0.763763 = 1.146258.
    # Term 1: delta = log(2 / 7) - log(5 / 7) = -0.916291, var = 1/2 + 1/5, z = -0.916291 / 0.836660 = -1.095177.
    # Term 2: delta = log(3 / 6) - log(4 / 8) = 0, z = 0.
    z = fightin_words(np.array([2.0, 0, 1]), np.array([1.0, 3, 2]), prior_strength=6)
    np.testing.assert_allclose(z, [1.146258, -1.095177, 0.0], atol=1e-6)
    assert fightin_words(np.array([0.0, 1]), np.array([0.0, 2]), 1.0)[0] == -np.inf  # a term nobody used


def test_terms_and_their_choice():
    assert terms("A red traffic light, the traffic light!") == {
        "red",
        "traffic",
        "light",
        "red traffic",
        "traffic light",
    }
    assert terms("the photo of a cat") == {"cat"}  # stopwords and medium words go, and break bigrams
    vocab = np.array(["light", "traffic light", "traffic", "red", "blue"], dtype=object)
    z = np.array([5.0, 4.5, 4.0, 3.0, 2.0])
    seen = np.array([3, 3, 3, 2, 1])
    # "traffic light" (z >= 0.8 of light's) replaces "light"; "traffic" is then covered; "blue" was seen once
    assert choose_terms(z, seen, vocab, m=3) == ["traffic light", "red"]


def test_auroc_and_balanced_accuracy_equal_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = np.round(rng.normal(0.3, 1, rng.integers(2, 40)), 1)  # rounded: ties happen
        neg = np.round(rng.normal(0.0, 1, len(pos)), 1)
        truth = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(bool)
        scores = np.r_[pos, neg]
        assert auroc(pos, neg) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
        predicted = top_half_predictions(scores, len(pos))
        assert predicted.sum() == len(pos) and scores[predicted].min() >= scores[~predicted].max()
        assert balanced_accuracy(truth, predicted) == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert auroc(np.array([]), np.array([1.0])) == 0.5
    partners = shuffled_partners(7, 4, np.random.default_rng(1))
    assert partners.shape == (7, 4) and not np.any(partners == np.arange(7)[:, None])
    assert all(len(set(row)) == 4 and set(row) <= set(range(7)) for row in partners.tolist())
    assert shuffled_partners(3, 32, np.random.default_rng(1)).shape == (3, 2)  # at most the n - 1 others


def test_aurocs_and_p_values_equal_brute_force():
    from itertools import combinations

    rng = np.random.default_rng(5)
    for _ in range(20):
        n_pos, n_neg = rng.integers(2, 8, size=2)
        fits = rng.normal(size=(3, n_pos + n_neg)) + np.r_[np.ones(n_pos), np.zeros(n_neg)] * rng.uniform(0, 2)
        assert aurocs(fits, n_pos) == pytest.approx([auroc(f[:n_pos], f[n_pos:]) for f in fits], abs=1e-12)
        own = fits[0]
        # every way of calling n_pos of these images "activating": how often does it separate at least as well?
        observed = auroc(own[:n_pos], own[n_pos:])
        at_least = [
            auroc(own[list(pick)], np.delete(own, list(pick))) >= observed - 1e-12
            for pick in combinations(range(n_pos + n_neg), n_pos)
        ]
        assert p_above_chance(own[:n_pos], own[n_pos:]) == pytest.approx(np.mean(at_least), abs=1e-9)
    assert p_above_chance(np.array([]), np.array([1.0])) == 1.0
    assert p_against_shuffled(0.9, np.array([0.5, 0.95, 0.9, 0.1])) == pytest.approx(3 / 5)
    assert p_against_shuffled(0.9, np.full(31, 0.5)) == pytest.approx(1 / 32)


# ---- the split --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(captioned_workspace):
    return open_data(captioned_workspace, "t", SplitConfig())[1]


def test_split_keeps_groups_apart_and_spans_every_activation_level(data):
    for feature in range(14):
        split = data.splitter(feature)
        act = data.splitter.activation(feature)
        on = set(np.flatnonzero(act > 0).tolist())
        labelling, scoring = set(split.labelling.tolist()), set(split.scoring.tolist())
        assert labelling | scoring == on and not labelling & scoring
        assert not set(data.groups[split.labelling]) & set(data.groups[split.scoring])
        assert set(split.positives) <= scoring and set(split.labelling_1) | set(split.validation_positives) <= labelling
        assert len(split.negatives) == len(split.positives) and (act[split.negatives] == 0).all()
        assert (act[split.validation_negatives] == 0).all() and not set(split.negatives) & set(
            split.validation_negatives
        )
        # interleaved: the strongest two images are one on each side, and so are the weakest two
        ranked = np.argsort(-act)[: len(on)]
        assert {ranked[0] in labelling, ranked[1] in labelling} == {True, False}
        assert data.splitter(feature).labelling.tolist() == split.labelling.tolist()  # deterministic


def test_no_scoring_image_ever_reaches_a_labeller(data, monkeypatch):
    from clipatlas.interp.data import FeatureView

    split = data.splitter(3)
    view = data.view(split)
    for read in (view.captions, view.unit_embeddings, view.image_ids, view.activations):
        with pytest.raises(LeakError):
            read(split.positives[:1])
        with pytest.raises(LeakError):
            read(split.negatives[:1])
    with pytest.raises(LeakError):
        view.open_image(int(split.scoring[0]))
    validation = data.view(split, VALIDATION)
    with pytest.raises(LeakError):
        validation.captions(split.validation_positives[:1])
    # every row any labeller reads, over every feature and both phases, is outside its held-out set
    asked: list[tuple[FeatureView, np.ndarray]] = []
    original = FeatureView.check

    def spy(self, rows):
        checked = original(self, rows)
        asked.append((self, checked))
        return checked

    monkeypatch.setattr(FeatureView, "check", spy)
    features = [f for f in range(14) if data.splitter(f) is not None]
    labeller = CaptionsLabeller(data, LabelConfig())
    views = [data.view(data.splitter(f), phase) for f in features for phase in (LABELLING, VALIDATION)]
    for v in views:
        labeller(v)
        assert set(v.background(50).tolist()).isdisjoint(v.hidden.tolist())
    assert all(not set(rows.tolist()) & set(v.hidden.tolist()) for v, rows in asked)


def test_caption_counts_leave_out_every_held_out_caption(data):
    split = data.splitter(5)
    view = data.view(split)
    inside, outside = view.term_counts()
    shown, held = set(data.groups[view.rows]), set(data.groups[view.hidden]) - set(data.groups[view.rows])
    vocab = {t: j for j, t in enumerate(data.terms.vocab)}
    brute_in, brute_out = np.zeros(len(vocab)), np.zeros(len(vocab))
    first_caption = {}
    for row, group in enumerate(data.groups.tolist()):
        first_caption.setdefault(group, data.captions[row])
    for group, caption in first_caption.items():
        target = brute_in if group in shown else None if group in held else brute_out
        if target is not None:
            for term in terms(caption):
                target[vocab[term]] += 1
    np.testing.assert_array_equal(inside, brute_in)
    np.testing.assert_array_equal(outside, brute_out)


# ---- labellers and judges ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(captioned_workspace):
    run = label(captioned_workspace, "t", LabelConfig(labeller="captions", terms=3))
    scored = score(captioned_workspace, "t", ScoreConfig(judge="captions", report=True))
    return run, scored, Atlas.open(captioned_workspace, "t")


def test_captions_labels_name_the_topic_and_beat_their_baseline(labelled):
    run, scored, atlas = labelled
    assert run.labelled == 14 and run.failed == 0 and run.too_few_images == 0  # features 14, 15 never fire
    for feature in TOPIC_FEATURES:
        (lab,) = atlas.labels(feature)
        assert lab.text.split(", ")[0] == TOPICS[feature] and lab.source == "captions"
        assert lab.evidence["validation_text"].split(", ")[0] == TOPICS[feature]
        s = lab.score()
        assert s.judge == "captions" and s.judge_model == "all-MiniLM-L6-v2" and s.scorer == "detection"
        assert s.value > 0.85 and s.beats_baseline and s.value > s.baseline and s.validation > 0.85
        assert s.n == s.details["positives"] + s.details["negatives"] and feature not in s.details["baseline_labels_of"]
        assert len(s.details["baseline_labels_of"]) == 13  # the judge's 32 shuffled labels, capped by the 13 others
        assert s.evidence_p <= 0.05 and s.names_feature
        assert atlas.feature(feature).label == lab.text
    summary = scored.summary_lines()
    assert len(summary) == 1 and "captions: median auroc" in summary[0]


def test_detection_auroc_equals_a_brute_force_recomputation(labelled, data):
    from clipatlas.interp.judges import load_sentence_model

    _, _, atlas = labelled
    model = load_sentence_model()
    for feature in (2, 9):
        lab = atlas.labels(feature)[0]
        s = lab.score()
        split = data.splitter(feature)
        rows = np.concatenate([split.positives, split.negatives])
        captions = model.encode([data.captions[r] for r in rows], normalize_embeddings=True)
        truth = np.arange(len(rows)) < len(split.positives)
        fit = captions @ model.encode(lab.text, normalize_embeddings=True)
        assert s.value == pytest.approx(roc_auc_score(truth, fit), abs=1e-6)
        others = [atlas.labels(f)[0].text for f in s.details["baseline_labels_of"]]
        shuffled = [roc_auc_score(truth, captions @ v) for v in model.encode(others, normalize_embeddings=True)]
        assert s.baseline == pytest.approx(np.median(shuffled), abs=1e-6)
        assert "p_against_shuffled" not in s.details  # 13 other labels: too few for a permutation p-value
        assert s.details["p_against_chance"] == pytest.approx(
            mannwhitneyu(fit[truth], fit[~truth], alternative="greater").pvalue
        )
        assert s.details["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(truth, top_half_predictions(fit, len(split.positives)))
        )


def test_detection_p_values_and_the_median_baseline_from_many_shuffled_labels():
    """25 features; label f rates images by a fixed row x text table: its own feature's positives high for
    the 'clear' labels, and features 0-4 only weakly (their labels should not clear the permutation test)."""
    from clipatlas.atlas.types import Label
    from clipatlas.interp.judges import Judge
    from clipatlas.interp.scorers import ScoringTask, make_scorer
    from clipatlas.interp.types import FeatureSplit

    n_features, rng = 25, np.random.default_rng(3)
    table = rng.normal(size=(n_features * 20, n_features))  # (store row, label's feature) -> fit
    for f in range(n_features):
        table[f * 20 : f * 20 + 10, f] += 0.3 if f < 5 else 4.0  # rows f*20..f*20+9 are feature f's positives
    # feature 1: its label rates its positives a little below its negatives (worse than a coin flip), every
    # other label far below: above its shuffled baseline, below chance
    table[20:30, :] -= 2.0
    table[20:30, 1] += 2.0 - 0.9

    class TableJudge(Judge):
        name, shuffled_labels = "table", 24

        def __call__(self, items):
            return [table[rows, int(text.split()[1])] for text, rows in items]

        def odd_one_out(self, trials):
            return [0 for _ in trials]

    empty = np.array([], dtype=int)
    splits = {
        f: FeatureSplit(
            f, empty, empty, empty, empty, np.arange(f * 20, f * 20 + 10), np.arange(f * 20 + 10, f * 20 + 20), empty
        )
        for f in range(n_features)
    }
    labels = [Label(f, "t", f"label {f}", id=f) for f in range(n_features)]
    scores = make_scorer("detection")(ScoringTask(labels, splits, TableJudge()))
    for s in scores:
        rows = np.arange(s.feature * 20, s.feature * 20 + 20)
        truth = np.arange(20) < 10
        own = roc_auc_score(truth, table[rows, s.feature])
        shuffled = [roc_auc_score(truth, table[rows, g]) for g in s.details["baseline_labels_of"]]
        assert len(set(s.details["baseline_labels_of"])) == 24 and s.feature not in s.details["baseline_labels_of"]
        assert s.value == pytest.approx(own) and s.baseline == pytest.approx(np.median(shuffled))
        assert s.details["p_against_shuffled"] == pytest.approx(
            (1 + sum(v >= own - 1e-9 for v in shuffled)) / 25
        )  # ties count
        assert s.details["p_against_chance"] == pytest.approx(
            mannwhitneyu(table[rows[:10], s.feature], table[rows[10:], s.feature], alternative="greater").pvalue
        )
        assert s.evidence_p == max(s.details["p_against_chance"], s.details["p_against_shuffled"])
        assert s.beats_baseline == (own > max(np.median(shuffled), 0.5))
    coin = next(s for s in scores if s.feature == 1)
    assert coin.baseline < coin.value < 0.5 and not coin.beats_baseline and not coin.names_feature
    clear = [s for s in scores if s.feature >= 5]
    assert [
        s.details for s in clear if not s.names_feature
    ] == []  # +4 sigma on every positive: AUROC 1, p = 1/184756 and 1/25
    assert sum(s.names_feature for s in scores if s.feature < 5) <= 1  # +0.3 sigma: mostly indistinguishable


def test_intruder_scores_the_features_against_chance(captioned_workspace, labelled):
    run = score(
        captioned_workspace, "t", ScoreConfig(scorer="intruder", judge="captions", intruder_k=4, intruder_trials=6)
    )
    by_feature = {s.feature: s for s in run.scores}
    assert set(by_feature) == set(range(14))
    for feature in TOPIC_FEATURES:
        s = by_feature[feature]
        assert s.baseline == pytest.approx(1 / 5) and s.n == 6 and s.label_id is None
        assert s.value >= 0.5 and s.beats_baseline  # four cats and a dog: the dog's caption is the odd one
    assert Atlas.open(captioned_workspace, "t").feature(0).coherence[0].scorer == "intruder"


def test_report_has_every_labeller_and_the_plot(labelled):
    _, scored, atlas = labelled
    text = scored.report.read_text()
    assert "## Detection, captions judge" in text and "captions (shares its source with this judge)" in text
    assert "headline (chosen on the labelling half)" in text
    assert atlas.files.interp_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_counts_a_label_as_beating_its_baseline_only_above_chance_too():
    from clipatlas.atlas.types import P_AGAINST_CHANCE, P_AGAINST_SHUFFLED, Score
    from clipatlas.interp.report import stats

    def detection(value, baseline, p):
        details = {P_AGAINST_CHANCE: p, P_AGAINST_SHUFFLED: p}
        return Score(1, 0, "detection", "captions", "auroc", value, baseline, 16, details=details)

    below_chance, clear, unclear = detection(0.45, 0.40, 0.6), detection(0.70, 0.60, 0.01), detection(0.8, 0.6, 0.2)
    st = stats([below_chance, clear, unclear])
    assert (st["share_beating"], st["share_naming"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert (st["median"], st["median_baseline"]) == (0.70, 0.60)
    # intruder accuracy against its chance (the stored baseline): above it beats, at it does not
    intruder = [Score(1, None, "intruder", "captions", "accuracy", v, 0.2, 10) for v in (0.3, 0.2)]
    assert stats(intruder)["share_beating"] == 0.5


def test_classifier_labeller_ranks_classes_by_lift_over_the_base_rate(data):
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(0, 1, (6, 16)).astype(np.float32), np.zeros(6, np.float32)
    names = [f"class {c}, synonym" for c in range(6)]
    data.__dict__["class_head"] = (weight, bias, names)  # a stand-in class head over the 16-d store
    data.__dict__.pop("_probability_table", None)
    data.__dict__.pop("class_probability_sum", None)
    labeller = ClassifierLabeller.__new__(ClassifierLabeller)
    labeller.names, labeller.classes, labeller.model = [f"class {c}" for c in range(6)], 3, "test"
    view = data.view(data.splitter(4))
    x = data.store.to_array()
    p = np.exp(x @ weight.T)
    p /= p.sum(1, keepdims=True)
    keep = np.setdiff1d(np.arange(len(x)), view.hidden)
    lift = np.log((p[view.rows].mean(0) + 1e-3) / (p[keep].mean(0) + 1e-3))
    draft = labeller(view)
    assert draft.text == ", ".join(f"class {c}" for c in np.argsort(-lift)[:3])
    np.testing.assert_allclose(draft.evidence["lift"], np.sort(lift)[::-1][:3], atol=1e-3)


# ---- bad input: one line ----------------------------------------------------------------------
def test_bad_input_is_one_clear_line(captioned_workspace, tmp_path, capsys):
    assert main(["label", "-w", str(captioned_workspace), "--name", "t", "--features", "0-3,999"]) == 2
    assert "feature 999 does not exist; this SAE has features 0..15" in capsys.readouterr().err
    assert main(["label", "-w", str(captioned_workspace), "--name", "t", "--labeller", "classifier"]) == 2
    assert "no encoder to label or judge with" in capsys.readouterr().err
    assert main(["score", "-w", str(captioned_workspace), "--name", "t", "--labellers", "nobody"]) == 2
    assert "no labels to score" in capsys.readouterr().err
    with pytest.raises(UserError, match="at least 4"):
        SplitConfig(min_activating=2)


def test_store_without_captions_is_refused_for_captions(tmp_path, capsys):
    from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas

    ws = write_synthetic_atlas(tmp_path, SyntheticAtlasConfig(n_features=64, n_images=64))
    capsys.readouterr()
    assert main(["label", "-w", str(ws.root), "--labeller", "captions"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the store has no captions") and "\n" not in err
