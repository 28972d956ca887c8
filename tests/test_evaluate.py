"""`clipatlas evaluate` end to end: a labelled store, SAEs and baselines through every section,
the report files, stores without labels, stability pairs, the steering hook, resuming, --compare."""

from __future__ import annotations

import numpy as np
import pytest

from clipatlas._io import atomic_write_json, read_json
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.evaluate import EvaluateConfig, evaluate_suite
from clipatlas.evaluate import suite as suite_module
from clipatlas.evaluate.external import HEADLINE_MIN_ACTIVATING
from clipatlas.evaluate.labels import NO_LABELS_HINT, read_labels
from clipatlas.sae import TopKConfig, TrainConfig, train
from clipatlas.steer.success import StrengthPoint, SuccessCurve
from clipatlas.store import Store, write_store
from clipatlas.workspace import Workspace

N, D, CLASSES = 480, 12, 4
FAST = dict(max_train_rows=10_000, kmeans_iters=2, probe_ks=(1, 4), purity_k=5, device="cpu")


def labelled_rows(n=N, d=D, seed=0, labels=True):
    """Clustered embeddings whose cluster is the label; every tenth row has no label."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, d)) * 3
    y = rng.integers(0, CLASSES, n)
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    meta = [
        {"image_id": f"i{i:04d}", "uri": f"synthetic:{i}", "source": "t", **({"label": f"c{c}"} if i % 10 else {})}
        for i, c in enumerate(y)
    ]
    return x, (meta if labels else [{k: v for k, v in m.items() if k != "label"} for m in meta])


def train_sae(ws, name, seed=0):
    return train(
        ws, TrainConfig(name=name, sae=TopKConfig(k=3, k_aux=8), expansion=2, steps=40, batch_size=64, seed=seed)
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("evaluate")
    write_store(ws, *labelled_rows())
    train_sae(ws, "a", seed=0)
    train_sae(ws, "b", seed=1)  # the same but for the seed: a stability pair
    return ws


@pytest.fixture(scope="module")
def reports(workspace):
    return evaluate_suite(workspace, ["a", "b"], EvaluateConfig(compare=True, **FAST))


def test_every_section_reports_the_sae_and_each_baseline(workspace, reports):
    report = reports["a"]
    assert list(report["coders"]) == ["sae", "pca", "pca-width", "kmeans", "random", "raw"]
    sections = report["sections"]
    assert set(sections) == {
        "reconstruction",
        "fidelity",
        "probing",
        "purity",
        "stability",
        "interpretability",
        "steering",
    }
    for coder in ("sae", "pca", "pca-width", "kmeans", "random"):
        recon = sections["reconstruction"]["coders"][coder]
        assert 0 <= recon["fvu"] < 1.5 and recon["n_samples"] == report["rows"]["held_out"]
        assert sections["stability"]["coders"][coder]["partner"] == "b"
    assert sections["reconstruction"]["coders"]["raw"] == {"skipped": "does not rebuild embeddings"}
    assert sections["stability"]["coders"]["raw"]["skipped"]
    for coder in report["coders"]:
        assert sections["probing"]["coders"][coder]["mean"]["classes"] == CLASSES
        assert sections["purity"]["coders"][coder]["latents"] > 0
    assert report["k"] == 3 and sections["reconstruction"]["coders"]["pca"]["l0"] == 3
    assert sections["reconstruction"]["coders"]["kmeans"]["l0"] <= 3
    # PCA fit on another training split finds nearly the same directions; random ones do not
    stability = sections["stability"]["coders"]
    assert stability["pca"]["mean_cosine"] > 0.9 > stability["random"]["mean_cosine"]
    assert sections["fidelity"]["skipped"] == "the store's encoder (synthetic) has no task head"
    # the raw dimensions of clustered data separate the classes well
    assert sections["probing"]["coders"]["raw"]["mean"]["probe_f1"]["4"] > 0.8


def test_the_sae_reconstruction_is_the_sae_stage_metric_and_dead_counts_the_whole_store(workspace, reports):
    import torch

    from clipatlas.sae import SAE
    from clipatlas.sae.metrics import evaluate

    recon = reports["a"]["sections"]["reconstruction"]["coders"]["sae"]
    stage = evaluate(workspace, "a").to_dict()
    del stage["train_fvu"]  # the sae stage's own check of the training rows; evaluate codes held-out rows
    assert {k: recon[k] for k in stage} == pytest.approx(stage)
    sae = SAE.from_pretrained(Workspace(workspace).sae("a").dir)
    with torch.no_grad():
        fired = (sae.encode(torch.from_numpy(Store.open(workspace).to_array())) != 0).any(dim=0).numpy()
    assert recon["dead_over_store"] == pytest.approx(1 - fired.mean()) and recon["rows_coded"] == N


def test_report_files_and_plots_are_written(workspace, reports):
    files = Workspace(workspace).sae("a")
    saved = read_json(files.eval_report)
    assert saved["sections"]["probing"] == reports["a"]["sections"]["probing"]
    assert set(saved["plots"]) == {"fvu_l0.png", "probing.png", "purity.png", "stability.png"}
    for plot in saved["plots"]:
        assert (files.eval_dir / plot).read_bytes()[:4] == b"\x89PNG"
    markdown = files.eval_markdown.read_text()
    assert (
        "| FVU (held-out) |" in markdown and "## Sparse probing of the SAE" in markdown and "## Stability" in markdown
    )
    compare = Workspace(workspace).compare_markdown.read_text()
    assert "| a |" in compare and "| b |" in compare and "pca (k=3, for a)" in compare and "| raw (for a) |" in compare
    assert (Workspace(workspace).compare_plot("fvu_l0")).is_file() and Workspace(workspace).compare_plot(
        "f1_l0"
    ).is_file()


def test_a_rerun_reuses_finished_sections_and_new_settings_recompute(workspace, reports, monkeypatch):
    def no_passes(*args, **kwargs):
        raise AssertionError("a finished section was computed again")

    monkeypatch.setattr(suite_module, "code_rows", no_passes)
    again = evaluate_suite(workspace, ["a", "b"], EvaluateConfig(**FAST))
    assert again["a"]["sections"]["probing"] == reports["a"]["sections"]["probing"]
    with pytest.raises(AssertionError, match="computed again"):
        evaluate_suite(workspace, ["a"], EvaluateConfig(**{**FAST, "purity_k": 6}))


def test_store_without_labels_gets_the_label_free_metrics_and_one_line(tmp_path, capsys):
    x, meta = labelled_rows(labels=False)
    write_store(tmp_path, x, meta)
    train_sae(tmp_path, "s")
    assert read_labels(Store.open(tmp_path)) is None
    code = main(["evaluate", "-w", str(tmp_path), "--name", "s", "--kmeans-iters", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("--labels-from") == 1 and NO_LABELS_HINT.split(":")[0] in out
    report = read_json(Workspace(tmp_path).sae("s").eval_report)
    assert report["sections"]["probing"] == {"skipped": NO_LABELS_HINT}
    assert report["sections"]["purity"] == {"skipped": NO_LABELS_HINT}
    assert report["sections"]["reconstruction"]["coders"]["sae"]["fvu"] < 1
    assert "needs a second SAE" in report["sections"]["stability"]["skipped"]


def test_train_stability_trains_the_next_seed_once(tmp_path):
    write_store(tmp_path, *labelled_rows(n=200))
    train_sae(tmp_path, "s", seed=3)
    config = EvaluateConfig(suite=("stability",), train_stability=True, **FAST)
    report = evaluate_suite(tmp_path, ["s"], config)["s"]
    assert report["sections"]["stability"]["partner"] == ".s-seed4"
    partner = read_json(Workspace(tmp_path).sae(".s-seed4").config)["training"]
    assert partner["seed"] == 4 and partner["steps"] == 40
    assert report["sections"]["stability"]["coders"]["sae"]["matched"] == 24
    assert Workspace(tmp_path).sae().name == "s"  # the hidden partner leaves "s" the workspace's one SAE


def test_label_column_errors_and_non_string_columns(tmp_path):
    x, meta = labelled_rows(n=40)
    for i, row in enumerate(meta):
        row["width"] = 100 + i % 3
    store = write_store(tmp_path, x, meta)
    labels = read_labels(store)
    assert labels.codes[[0, 10, 20]].tolist() == [-1, -1, -1]  # rows without a label
    assert [labels.classes[c] for c in labels.codes[11:14]] == [meta[i]["label"] for i in range(11, 14)]
    widths = read_labels(store, "width")  # an integer column works as a label column too
    assert [widths.classes[c] for c in widths.codes[:4]] == ["100", "101", "102", "100"]
    with pytest.raises(UserError, match="no metadata column 'species'"):
        read_labels(store, "species")
    assert read_labels(store, "caption") is None  # a column with no value at all


def test_interpretability_reads_label_scores_and_steering_reads_the_hook(workspace):
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.atlas.annotations import add_labels, add_scores
    from clipatlas.atlas.types import Label, Score

    atlas = build_atlas(workspace, "a", config=AtlasConfig(top_k=4, map_method="pca", device="cpu"))
    counts = atlas.feature_table().count
    frequent = np.flatnonzero(counts >= HEADLINE_MIN_ACTIVATING)[:3].tolist()
    rare = int(np.flatnonzero((counts > 0) & (counts < HEADLINE_MIN_ACTIVATING))[0])
    # the third is above its shuffled baseline but below chance (AUROC 0.45 against 0.40): it beats nothing
    # and names nothing; the rare feature's label is counted per labeller but left out of the headline
    # summary (too few images to score it well)
    features, values, baselines = [*frequent, rare], [0.9, 0.7, 0.45, 0.99], [0.5, 0.5, 0.4, 0.5]
    ids = add_labels(atlas, [Label(f, "vlm", f"thing {f}", model="m") for f in features])
    add_scores(
        atlas,
        [
            Score(f, i, "detection", "vlm", "auroc", v, baseline=b, n=20, validation=v)
            for f, i, v, b in zip(features, ids, values, baselines)
        ],
    )
    files = Workspace(workspace).sae("a")
    points = [
        StrengthPoint(
            strength=t,
            n=30,
            success=r,
            differs=1.0,
            shown=r,
            rank0=0.1,
            activation=0.5,
            source_cosine=0.4,
            unedited_cosine=0.1,
        )
        for t, r in ((1.0, 0.5), (4.0, 0.85))
    ]
    curve = SuccessCurve("a", atlas.build_id, "retrieval", {}, {"top": 5, "target": 0.8}, 10, points)
    atomic_write_json(files.steering_success("retrieval"), curve.to_dict())
    atomic_write_json(
        files.icon_verify_report, {"decoder": "retrieval", "n_icons": 10, "top1_share": 0.4, "checks": []}
    )
    try:
        report = evaluate_suite(workspace, ["a"], EvaluateConfig(suite=("interpretability", "steering"), **FAST))["a"]
        interp = report["sections"]["interpretability"]
        by_labeller = {"labels": 4, "median": 0.8, "median_baseline": 0.5, "beats_baseline": 0.75}
        assert interp["by_source"]["vlm"]["detection/vlm"] == by_labeller
        # only labels that beat their baseline name a feature, but the headline summary covers every
        # frequent labelled feature's preferred label: summarising the names alone would be 100% beating
        assert interp["features_named"] == 3
        headline = {"labels": 3, "median": 0.7, "median_baseline": 0.5, "beats_baseline": pytest.approx(2 / 3)}
        assert interp["headline"]["detection/vlm"] == headline
        success = report["sections"]["steering"]["success"]
        # the rate at the default strength: the smallest strength that reached the target
        assert (success["success_rate"], success["strength"], success["default_strength"]) == (0.85, 4.0, 4.0)
        assert success["curve"] == [{"strength": 1.0, "success_rate": 0.5}, {"strength": 4.0, "success_rate": 0.85}]
        assert report["sections"]["steering"]["icons"] == {"decoder": "retrieval", "n_icons": 10, "top1_share": 0.4}
        assert files.eval_plot("steering").is_file()
    finally:
        files.steering_success("retrieval").unlink()
        files.icon_verify_report.unlink()


def test_cli_prints_markdown_when_piped(workspace, reports, capsys):
    code = main(["evaluate", "-w", str(workspace), "--name", "a", "--name", "b", "--compare", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    written = read_json(Workspace(workspace).sae("a").eval_report)["sections"]["reconstruction"]["coders"]
    assert f"| FVU (held-out) | {written['sae']['fvu']:.3f} | {written['pca']['fvu']:.3f} |" in out
    assert f"| pca (k=3, for a) | 3.000 | {written['pca']['fvu']:.3f} |" in out
    assert f"side by side: {Workspace(workspace).compare_markdown}" in out


def test_terminal_tables_fold_cells_instead_of_cutting_them():
    from collections import Counter

    from rich.console import Console

    from clipatlas.evaluate.render import print_table

    header = ["metric", "sae", "pca-width", "kmeans", "random"]
    rows = [["ImageNet top-1 agreement", "0.123", "0.456", "0.789", "12345678"], ["FVU (held-out)", "1", "2", "3", "4"]]
    console = Console(width=30, force_terminal=True, record=True)
    print_table("a table far wider than the terminal", header, rows, console)
    text = console.export_text()
    assert "…" not in text

    def characters(strings):
        return Counter(ch for s in strings for ch in s if ch.isalnum())

    assert characters([text]) >= characters(header + [c for row in rows for c in row])


def test_bad_settings_are_one_line_errors(workspace, capsys):
    assert main(["evaluate", "-w", str(workspace), "--name", "a", "--suite", "probing,vibes"]) == 2
    assert "unknown vibes" in capsys.readouterr().err
    assert main(["evaluate", "-w", str(workspace), "--name", "zzz"]) == 2
    assert "no SAE named 'zzz'" in capsys.readouterr().err
    with pytest.raises(UserError, match="probe-ks"):
        EvaluateConfig(probe_ks="1,x")
    assert EvaluateConfig(probe_ks="8,2,2").probe_ks == (2, 8) and EvaluateConfig(baselines="none").baselines == ()


def test_an_sae_trained_elsewhere_gets_a_seeded_held_out_tenth(tmp_path):
    from clipatlas.sae import ARCHITECTURES, make_config

    write_store(tmp_path, *labelled_rows(n=200))
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=D, d_sae=24, k=3))
    sae.save_pretrained(Workspace(tmp_path).sae("imported", must_exist=False).dir)  # no training settings
    report = evaluate_suite(
        tmp_path, ["imported"], EvaluateConfig(suite=("reconstruction", "probing", "stability"), **FAST)
    )
    report = report["imported"]
    assert report["rows"] == {"held_out": 20, "training_sample": 180}
    assert report["sections"]["reconstruction"]["coders"]["sae"]["n_samples"] == 20
    assert report["sections"]["probing"]["coders"]["pca"]["mean"]["classes"] == CLASSES
    assert "needs a second SAE" in report["sections"]["stability"]["skipped"]
