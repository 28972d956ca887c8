"""`clipatlas score --report`: a Markdown summary of every score in the atlas and a plot of the
detection AUROC of each labeller against its shuffled baseline (saes/NAME/interp/)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np

from clipatlas._io import atomic_path
from clipatlas.atlas.query import Atlas
from clipatlas.atlas.types import NAMING_P, Label, Score, headline, preferred_by_judge
from clipatlas.interp.data import StoreData
from clipatlas.interp.judges import SHARED_SOURCE

HEADLINE_ROW = "headline (chosen on the labelling half)"


def collect(atlas: Atlas, data: StoreData, min_activating: int) -> dict:
    """Per judge: each labeller's detection scores, the preferred label's, and the intruder scores,
    over features active on at least `min_activating` images."""
    features = np.flatnonzero(data.counts >= min_activating).tolist()
    by_judge: dict[str, dict[str, list[Score]]] = defaultdict(lambda: defaultdict(list))
    named = 0
    labelled = atlas.labels_by_feature()
    for feature in features:
        labels = labelled.get(feature, [])
        named += headline(labels) is not None
        for judge, best in preferred_by_judge(labels).items():
            for label in labels:
                found = label.score(judge=judge)
                if found is not None:
                    by_judge[judge][labeller_key(label)].append(found)
            by_judge[judge][HEADLINE_ROW].append(best)
    intruder: dict[str, list[Score]] = defaultdict(list)
    wanted = set(features)
    for s in atlas.coherence_scores():
        if s.feature in wanted and s.scorer == "intruder":
            intruder[s.judge].append(s)
    return {"features": len(features), "named": named, "detection": by_judge, "intruder": intruder}


def labeller_key(label: Label) -> str:
    return " / ".join(part for part in (label.source, label.model, label.prompt_version) if part)


def stats(scores: list[Score]) -> dict[str, float]:
    """Median value, median baseline, share beating the baseline and chance (`Score.beats_baseline`: at all,
    and clearly enough to name the feature: `Score.names_feature`), median balanced accuracy."""
    bacc = [s.details["balanced_accuracy"] for s in scores if "balanced_accuracy" in s.details]
    return {
        "n": len(scores),
        "median": float(np.median([s.value for s in scores])),
        "median_baseline": float(np.median([s.baseline for s in scores])),
        "share_beating": float(np.mean([s.beats_baseline for s in scores])),
        "share_naming": float(np.mean([s.names_feature for s in scores])),
        "median_balanced_accuracy": float(np.median(bacc)) if bacc else float("nan"),
    }


def headline_line(found: dict, judge: str, min_activating: int) -> str:
    """One sentence: the headline labels' median detection AUROC against their shuffled baseline."""
    scores = found["detection"].get(judge, {}).get(HEADLINE_ROW)
    if not scores:
        return f"no label of a feature active on at least {min_activating} images was scored by the {judge} judge"
    st = stats(scores)
    return (
        f"headline labels of the {st['n']} features active on at least {min_activating} images, {judge} judge: "
        f"median detection AUROC {st['median']:.3f} against {st['median_baseline']:.3f} for shuffled labels, "
        f"{st['share_beating']:.0%} beat their own baseline and chance "
        f"({st['share_naming']:.0%} with p <= {NAMING_P}); "
        f"{found['named']} of them named"
    )


def write_report(atlas: Atlas, data: StoreData, min_activating: int) -> tuple[Path, dict]:
    """The report and the plot; returns the report's path and what it summarised (`collect`)."""
    found = collect(atlas, data, min_activating)
    files = atlas.files
    plot = write_plot(found["detection"], files.interp_plot)
    lines = [
        f"# Label scores: SAE {atlas.name}",
        "",
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Features active on at least {min_activating} "
        f"images: {found['features']:,}; named (a scored label beat its baseline and chance with p <= {NAMING_P}): "
        f"{found['named']:,}.",
        "",
        "Detection: a judge rates the feature's held-out images (activating ones spread over the activation range, "
        "as many silent ones) against the label; AUROC 0.5 is chance. The baseline scores the same images with "
        "other features' labels from the same labeller (their median); a label beats it only when it also beats "
        "chance (AUROC above 0.5). p: the larger of the p-values against "
        "chance (Mann-Whitney) and against those shuffled labels (permutation, where 19 or more were judged). "
        "No image that scores a label was shown to its labeller.",
        "The headline row takes, per feature, the label of the labeller with the best median score on the "
        "labelling half (its own labelling-half score breaking ties): no scoring image picks it.",
        "",
    ]
    for judge, rows in sorted(found["detection"].items()):
        lines += [
            f"## Detection, {judge} judge",
            "",
            f"| labels | features | median AUROC | median baseline | beat their baseline | with p <= {NAMING_P} "
            "| median balanced accuracy |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, scores in sorted(rows.items(), key=lambda item: item[0] == HEADLINE_ROW):
            st = stats(scores)
            shared = (
                " (shares its source with this judge)" if key.split(" / ")[0] in SHARED_SOURCE.get(judge, ()) else ""
            )
            lines.append(
                f"| {key}{shared} | {st['n']:,} | {st['median']:.3f} | {st['median_baseline']:.3f} | "
                f"{st['share_beating']:.1%} | {st['share_naming']:.1%} | {st['median_balanced_accuracy']:.3f} |"
            )
        lines.append("")
    if found["intruder"]:
        lines += [
            "## Intruder (coherence of the feature itself, no label)",
            "",
            "| judge | features | median accuracy | chance | beat chance |",
            "|---|---|---|---|---|",
        ]
        for judge, scores in sorted(found["intruder"].items()):
            st = stats(scores)
            cells = [
                judge,
                f"{st['n']:,}",
                f"{st['median']:.3f}",
                f"{st['median_baseline']:.3f}",
                f"{st['share_beating']:.1%}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if plot:
        lines += [f"![detection AUROC against the shuffled baseline]({plot.name})", ""]
    with atomic_path(files.interp_report) as tmp:
        tmp.write_text("\n".join(lines))
    return files.interp_report, found


def write_plot(detection: dict[str, dict[str, list[Score]]], path: Path) -> Path | None:
    """One panel per judge: each labeller's AUROC distribution (solid) and its baseline's (dashed)."""
    if not detection:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = sorted(detection)
    fig, axes = plt.subplots(1, len(judges), figsize=(6 * len(judges), 4), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, judge in zip(axes[0], judges):
        for j, (key, scores) in enumerate(sorted(detection[judge].items())):
            colour = f"C{j}"
            ax.hist([s.value for s in scores], bins=bins, histtype="step", color=colour, linewidth=2, label=key)
            ax.hist([s.baseline for s in scores], bins=bins, histtype="step", color=colour, linestyle="--")
        ax.axvline(0.5, color="grey", linewidth=0.8)
        ax.set(title=f"{judge} judge (dashed: shuffled baseline)", xlabel="detection AUROC", ylabel="features")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
