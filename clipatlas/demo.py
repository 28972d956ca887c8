"""`clipatlas demo`: the whole pipeline, offline, on the demo images this machine has.

embed (efficientnet-lite0) -> train a TopK SAE -> evaluate -> build the atlas -> offline labels (captions,
classifier) scored by the captions judge -> icons (montage, or --icons retrieval) and an example steering
recipe on a named feature -> the evaluation suite against its baselines (a short table) -> serve.
Every step resumes or reuses finished work, so running the demo again after an interruption (or to
serve again) only does what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clipatlas.errors import UserError
from clipatlas.sources import available_demo_sets
from clipatlas.sources.demo import INSTALL_HINTS

DEMO_ENCODER = "efficientnet-lite0"
# Trains in seconds on two CPU cores. On the ~2,200 demo images a wider SAE or more epochs only
# memorises: held-out explained variance stays near 0.49 at 4x and 2x, so 2x it is.
DEMO_SAE = dict(arch="topk", expansion=2, k=16, k_aux=128, batch_size=256, lr=1e-3, warmup_steps=20)
DEMO_EPOCHS = 25
# The offline labellers the demo's encoder and captions allow; the captions judge reads the captions.
DEMO_LABELLERS = ("captions", "classifier")
DEMO_JUDGE = "captions"


@dataclass(frozen=True)
class DemoConfig:
    workspace: str = "demo-atlas"
    """Workspace directory."""
    name: str = "demo"
    """Name of the demo SAE."""
    limit: int | None = None
    """Use at most this many demo images."""
    serve: bool = True
    """Serve the atlas at the end."""
    host: str = "127.0.0.1"
    """Address to serve on."""
    port: int = 8000
    """Port to serve on."""
    icons: Literal["retrieval", "montage"] = "montage"
    """Icon decoder: montage (collages of each feature's top images, re-encoded: 92% of the demo's icons show their
    own feature first; about four encoder passes per feature, ~5 min on two cores) or retrieval (one store image
    per feature, seconds; 54%, its ceiling on the demo store)."""


def _step(title: str, action: Callable[[], str | None]) -> None:
    print(f"==> {title}", flush=True)
    started = time.perf_counter()
    detail = action()
    print(f"    {detail + ' ' if detail else ''}({time.perf_counter() - started:.1f} s)", flush=True)


def run_demo(config: DemoConfig = DemoConfig()) -> Path:
    from clipatlas.atlas import build_atlas
    from clipatlas.sae.metrics import evaluate
    from clipatlas.sae.training import train
    from clipatlas.steer.demo import write_demo_steering
    from clipatlas.store.pipeline import embed

    workspace = Path(config.workspace).expanduser().resolve()
    sets = available_demo_sets()
    if not sets:
        raise UserError("no demo images on this machine; " + "; ".join(INSTALL_HINTS.values()))
    missing = [name for name in INSTALL_HINTS if name not in sets]
    if missing:
        print("note: demo sets not installed: " + "; ".join(f"demo:{m} ({INSTALL_HINTS[m]})" for m in missing))
    sources = [f"demo:{name}" for name in sets]

    _step(
        f"embedding {', '.join(sources)} with {DEMO_ENCODER}",
        lambda: embed(sources, workspace, encoder=DEMO_ENCODER, limit=config.limit, batch_size=32).format(),
    )
    _step(
        f"training the TopK SAE {config.name!r}",
        lambda: str(train(workspace, _demo_train_config(workspace, config.name))),
    )
    _step("evaluating it on held-out images", lambda: _metrics_line(evaluate(workspace, config.name)))
    _step("building the atlas", lambda: _atlas_line(build_atlas(workspace, config.name)))
    for labeller in DEMO_LABELLERS:
        _step(
            f"labelling features: {labeller}", lambda labeller=labeller: _label_line(workspace, config.name, labeller)
        )
    _step("scoring the labels on held-out images (captions judge)", lambda: _score_line(workspace, config.name))
    _step(  # after scoring: the example edit sets a feature named by a scored label
        f"{config.icons} icons and an example steering recipe",
        lambda: (
            f"replay with: clipatlas steer --recipe {write_demo_steering(workspace, config.name, icons=config.icons)} "
            f"-w {workspace} -o out.png"
        ),
    )
    _step(
        "the evaluation suite, against PCA, k-means, random and raw baselines", lambda: _suite(workspace, config.name)
    )
    if config.serve:
        from clipatlas.web.config import ServeConfig
        from clipatlas.web.server import serve

        serve(workspace, config.name, ServeConfig(host=config.host, port=config.port))
    else:
        print(f"done. Browse it with: clipatlas serve -w {workspace}")
    return workspace


def _demo_train_config(workspace: Path, name: str):
    from clipatlas.sae import TrainConfig
    from clipatlas.store import Store

    steps = max(50, DEMO_EPOCHS * len(Store.open(workspace)) // DEMO_SAE["batch_size"])
    return TrainConfig.from_settings({**DEMO_SAE, "name": name, "steps": steps})


def _metrics_line(metrics) -> str:
    return (
        f"on {metrics.n_samples} held-out images: explained variance {metrics.explained_variance:.3f}, "
        f"L0 {metrics.l0:.1f}, cosine {metrics.cosine:.3f}, {metrics.silent_text()}, "
        f"{metrics.dense_fraction:.1%} dense"
    )


def _suite(workspace: Path, name: str) -> str:
    """Every section; stability trains the demo SAE again with the next seed (as fast as the first)."""
    from clipatlas.evaluate import EvaluateConfig, evaluate_suite, print_report
    from clipatlas.workspace import Workspace

    report = evaluate_suite(workspace, [name], EvaluateConfig(train_stability=True))[name]
    print_report(report, short=True)
    return f"full report: {Workspace(workspace).sae(name).eval_markdown}"


def _atlas_line(atlas) -> str:
    summary = atlas.summary()
    return (
        f"{summary['n_alive']}/{summary['n_features']} features fire on at least one "
        f"of the {summary['n_images']} images ({summary['dead_over_store']:.1%} dead over the store), "
        f"{summary['n_labelled']} labelled -> {atlas.db_path}"
    )


def _label_line(workspace: Path, name: str, labeller: str) -> str:
    from clipatlas.atlas import Atlas
    from clipatlas.interp.config import LabelConfig
    from clipatlas.interp.run import label

    labelled = Atlas.open(workspace, name).labels_by_feature().values()
    done = sum(any(lab.source == labeller for lab in labels) for labels in labelled)
    if done:
        return f"{done} features already labelled by {labeller}"
    return label(workspace, name, LabelConfig(labeller=labeller)).format()


def _score_line(workspace: Path, name: str) -> str:
    """The scores, and the headline labels' median detection AUROC against their shuffled baseline."""
    from clipatlas.interp.config import ScoreConfig, SplitConfig
    from clipatlas.interp.report import headline_line, write_report
    from clipatlas.interp.run import open_data, score

    config = ScoreConfig(judge=DEMO_JUDGE, report=True)
    atlas, data = open_data(workspace, name, SplitConfig())
    labels = [lab for labels in atlas.labels_by_feature().values() for lab in labels]
    if any(lab.score(judge=DEMO_JUDGE) is None for lab in labels):
        run = score(workspace, name, config)
        done, report, found = run.format(), run.report, run.found
    else:
        report, found = write_report(atlas, data, config.report_min_activating)
        done = f"all {len(labels)} labels already scored"
    return f"{done}\n    {headline_line(found, DEMO_JUDGE, config.report_min_activating)} -> {report}"
