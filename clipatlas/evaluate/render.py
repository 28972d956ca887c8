"""Reports as people read them: report.json, report.md, PNG plots, and the terminal table.

The summary is one table with a row per metric and a column per coder (the SAE, then each
baseline), so it stays narrow; the terminal prints it with rich, folding cells instead of cutting
them. `--compare` puts several SAEs side by side (a row per SAE and per baseline) with the Pareto
plots FVU against L0 and probe F1 against L0, the baselines on the same axes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipatlas._io import atomic_path, atomic_write_bytes, atomic_write_json
from clipatlas.evaluate.coders import SAE_CODER
from clipatlas.evaluate.labels import NO_LABELS_HINT
from clipatlas.workspace import SAEFiles, Workspace

MISSING = "—"


@dataclass(frozen=True)
class Metric:
    label: str
    section: str
    get: Callable[[dict[str, Any]], Any]  # from one coder's result in that section

    def value(self, report: dict[str, Any], coder: str) -> Any:
        result = report["sections"].get(self.section, {}).get("coders", {}).get(coder)
        if not result or "skipped" in result:
            return None
        try:
            return self.get(result)
        except (KeyError, TypeError):
            return None


def probe_label(k: int) -> str:
    return f"probe F1, top-{k}"


def summary_metrics(report: dict[str, Any]) -> list[Metric]:
    ks = report["config"]["probe_ks"]
    k = report["config"]["purity_k"]
    metrics = [
        Metric("FVU (held-out)", "reconstruction", lambda r: r["fvu"]),
        Metric("explained variance", "reconstruction", lambda r: r["explained_variance"]),
        Metric("L0", "reconstruction", lambda r: r["l0"]),
        Metric("cosine", "reconstruction", lambda r: r["cosine"]),
        Metric("silent on held-out rows", "reconstruction", lambda r: r["silent_fraction"]),
        Metric("dead over the store", "reconstruction", lambda r: r["dead_over_store"]),
        Metric("dense", "reconstruction", lambda r: r["dense_fraction"]),
        Metric("ImageNet top-1 agreement", "fidelity", lambda r: r["imagenet_top1_agreement"]),
        Metric("ImageNet KL (nats)", "fidelity", lambda r: r["imagenet_kl"]),
        Metric("ImageNet KL recovered", "fidelity", lambda r: r["imagenet_kl_recovered"]),
        Metric("zero-shot accuracy", "fidelity", lambda r: r["zero_shot_accuracy"]),
        Metric("best-latent AUROC", "probing", lambda r: r["mean"]["best_latent_auroc"]),
        Metric("best-latent F1", "probing", lambda r: r["mean"]["best_latent_f1"]),
        *(Metric(probe_label(n), "probing", lambda r, n=n: r["mean"]["probe_f1"][str(n)]) for n in ks),
        Metric(f"purity@{k} median", "purity", lambda r: r["median"]),
        Metric(f"purity@{k} mean", "purity", lambda r: r["mean"]),
        Metric("latents with purity", "purity", lambda r: r["latents"]),
        Metric("matched cosine (stability)", "stability", lambda r: r["mean_cosine"]),
        Metric("matched > 0.7", "stability", lambda r: r["share_above_0.7"]),
    ]
    return [m for m in metrics if any(m.value(report, c) is not None for c in report["coders"])]


def fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"  # L0 and counts need no 3 decimals
    return str(value)


def summary_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    coders = list(report["coders"])
    rows = [[m.label, *(fmt(m.value(report, c)) for c in coders)] for m in summary_metrics(report)]
    return ["metric", *coders], rows


def sae_lines(report: dict[str, Any]) -> list[str]:
    """What only the SAE has (labels, steering), and why any section was skipped, one line each."""
    sections = report["sections"]
    lines = []
    interp = sections.get("interpretability", {})
    for key, summary in interp.get("headline", {}).items():
        lines.append(
            f"interpretability: headline labels of the {summary['labels']} labelled features active on at least "
            f"{interp.get('headline_min_activating')} images, {key}: median {summary['median']:.3f} (shuffled "
            f"baseline {summary['median_baseline']:.3f}; {summary['beats_baseline']:.0%} beat their own and chance); "
            f"{interp.get('features_named')} features named over the whole atlas (any number of images)"
        )
    steer = sections.get("steering", {})
    if "icons" in steer:
        icons = steer["icons"]
        lines.append(
            f"steering: {fmt(icons.get('top1_share'))} of {icons.get('n_icons')} icons make their own feature "
            f"fire most ({icons.get('decoder')} decoder)"
        )
    if "success" in steer:
        success = steer["success"]
        lines.append(
            f"steering: {success['success_rate']:.1%} of edits succeed at {success['strength']:g}x max activation "
            f"({success['criterion']})"
        )
    labels_missing = report["labels"] is None
    for name, section in sections.items():
        reason = section.get("skipped")
        if reason and not (labels_missing and reason == NO_LABELS_HINT):
            lines.append(f"{name}: {reason}")
    if labels_missing:
        lines.append(NO_LABELS_HINT)
    return lines


def print_table(title: str, header: list[str], rows: list[list[str]], console=None) -> None:
    """On a terminal, a rich table whose cells fold instead of being cut; piped, a Markdown table
    (no width to fit, nothing to cut)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        print(f"{title}\n\n{markdown_table(header, rows)}\n")
        return
    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold", justify="left" if name == header[0] else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


SHORT = ("FVU (held-out)", "L0", "ImageNet top-1 agreement", "best-latent F1", "matched cosine (stability)")


def print_report(report: dict[str, Any], short: bool = False) -> None:
    """The summary table and the SAE-only lines; `short`: a few headline metrics (the demo's)."""
    header, rows = summary_table(report)
    if short:
        wanted = {
            *SHORT,
            probe_label(report["config"]["probe_ks"][-1]),
            f"purity@{report['config']['purity_k']} median",
        }
        rows = [row for row in rows if row[0] in wanted]
    print_table(f"SAE {report['sae']} and its baselines ({report['store_rows']} images)", header, rows)
    for line in sae_lines(report):
        print(line)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


# -- report.md ---------------------------------------------------------------------------------------
def report_markdown(report: dict[str, Any], plots: list[str]) -> str:
    header, rows = summary_table(report)
    labels = report["labels"]
    parts = [
        f"# Evaluation of SAE `{report['sae']}`",
        f"{report['arch']}, {report['d_sae']} latents on {report['d_in']}-d `{report['encoder']}` embeddings; "
        f"{report['store_rows']} images, {report['rows']['held_out']} held out, a training sample of "
        f"{report['rows']['training_sample']}; "
        + (f"labels from `{labels['column']}` ({labels['classes']} classes)." if labels else "no labels."),
        "## Summary",
        markdown_table(header, rows),
        "\n".join(f"- {line}" for line in sae_lines(report)),
        "## Coders",
        "\n".join(f"- `{name}`: {info['description']}" for name, info in report["coders"].items()),
    ]
    parts += _probing_markdown(report) + _purity_markdown(report) + _stability_markdown(report)
    parts += _interpretability_markdown(report)
    parts += ["## Plots", "\n".join(f"![{p}]({p})" for p in plots)] if plots else []
    return "\n\n".join(p for p in parts if p) + "\n"


def _probing_markdown(report) -> list[str]:
    result = report["sections"].get("probing", {}).get("coders", {}).get(SAE_CODER)
    if not result or not result.get("classes"):
        return []
    ks = report["config"]["probe_ks"]
    header = ["class", "train", "held-out", "best latent", "AUROC", "F1", *(f"F1 top-{k}" for k in ks)]
    rows = [
        [
            c["class"],
            c["train_rows"],
            c["test_rows"],
            c["best_latent"],
            fmt(c["best_latent_auroc"]),
            fmt(c["best_latent_f1"]),
            *(fmt(c["probe"][str(k)]["f1"]) for k in ks),
        ]
        for c in result["classes"]
    ]
    return ["## Sparse probing of the SAE, per class (held-out rows)", markdown_table(header, rows)]


def _purity_markdown(report) -> list[str]:
    coders = report["sections"].get("purity", {}).get("coders", {})
    rows = [
        [name, r["latents"], fmt(r["mean"]), fmt(r["median"]), fmt(r["q25"]), fmt(r["q75"]), fmt(r["share_pure"])]
        for name, r in coders.items()
        if "skipped" not in r
    ]
    if not rows:
        return []
    chance = next(r["chance"] for r in coders.values() if "chance" in r)
    header = ["coder", "latents", "mean", "median", "q25", "q75", "share pure"]
    k = report["config"]["purity_k"]
    return [f"## Purity@{k} (chance: {chance:.3f})", markdown_table(header, rows)]


def _stability_markdown(report) -> list[str]:
    coders = report["sections"].get("stability", {}).get("coders", {})
    rows = [
        [name, r["partner"], r["matched"], fmt(r["mean_cosine"]), fmt(r["share_above_0.7"])]
        for name, r in coders.items()
        if "skipped" not in r
    ]
    if not rows:
        return []
    return ["## Stability", markdown_table(["coder", "second fit", "matched", "mean cosine", "> 0.7"], rows)]


def _interpretability_markdown(report) -> list[str]:
    by_source = report["sections"].get("interpretability", {}).get("by_source", {})
    rows = [
        [source, key, s["labels"], fmt(s["median"]), fmt(s["median_baseline"]), f"{s['beats_baseline']:.0%}"]
        for source, keys in by_source.items()
        for key, s in keys.items()
    ]
    if not rows:
        return []
    headers = ["labeller", "scorer/judge", "labels", "median", "shuffled baseline", "beat their own and chance"]
    return ["## Label scores", markdown_table(headers, rows)]


# -- plots -------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def _coder_results(report, section) -> dict[str, dict]:
    coders = report["sections"].get(section, {}).get("coders", {})
    return {name: r for name, r in coders.items() if r and "skipped" not in r}


def write_plots(files: SAEFiles, report: dict[str, Any]) -> list[str]:
    """The report's PNGs; returns their file names."""
    plt = _pyplot()
    written = []
    recon = _coder_results(report, "reconstruction")
    if recon:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, r in recon.items():
            ax.scatter(r["l0"], r["fvu"], s=30, marker="o" if name == SAE_CODER else "s")
            ax.annotate(name, (r["l0"], r["fvu"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set(xlabel="L0 (active latents per image)", ylabel="FVU (held-out)", title=f"{report['sae']}: FVU vs L0")
        ax.set_xscale("log")
        _save(fig, files.eval_plot("fvu_l0"))
        written.append("fvu_l0")
    probing = {name: r for name, r in _coder_results(report, "probing").items() if r.get("mean")}
    if probing:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, r in probing.items():
            ks = sorted(int(k) for k in r["mean"]["probe_f1"])
            ax.plot(ks, [r["mean"]["probe_f1"][str(k)] for k in ks], marker="o", label=name)
        ax.set(xlabel="latents in the probe (k)", ylabel="mean F1 over classes (held-out)", title="Sparse probing")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
        _save(fig, files.eval_plot("probing"))
        written.append("probing")
    for section, xlabel, lo in (("purity", "purity@k", 0.0), ("stability", "matched cosine", -1.0)):
        results = {name: r for name, r in _coder_results(report, section).items() if "hist" in r}
        if results:
            fig, ax = plt.subplots(figsize=(6, 4.5))
            for name, r in results.items():
                counts = r["hist"]
                edges = [lo + (1 - lo) * i / len(counts) for i in range(len(counts) + 1)]
                total = max(sum(counts), 1)
                ax.stairs([c / total for c in counts], edges, label=f"{name} ({sum(counts)})")
            ax.set(xlabel=xlabel, ylabel="share of latents", title=f"{section.capitalize()} of {report['sae']}")
            ax.legend(fontsize=8)
            _save(fig, files.eval_plot(section))
            written.append(section)
    curve = report["sections"].get("steering", {}).get("success", {}).get("curve")
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.plot([p["strength"] for p in curve], [p["success_rate"] for p in curve], marker="o")
        ax.set(xlabel="edit strength (x max activation)", ylabel="success rate", title="Steering success")
        _save(fig, files.eval_plot("steering"))
        written.append("steering")
    return [files.eval_plot(name).name for name in written]


def write_report(files: SAEFiles, report: dict[str, Any]) -> None:
    plots = write_plots(files, report)
    atomic_write_json(files.eval_report, {**report, "plots": plots})
    atomic_write_bytes(files.eval_markdown, report_markdown(report, plots).encode())


# -- several SAEs side by side -----------------------------------------------------------------------
COMPARE_COLUMNS = ("L0", "FVU (held-out)", "dead (all rows coded)", "ImageNet top-1 agreement", "best-latent F1")


def compare_rows(reports: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """A row per SAE and per baseline of each, with the summary metrics they share."""
    first = next(iter(reports.values()))
    ks = first["config"]["probe_ks"]
    wanted = [*COMPARE_COLUMNS, probe_label(ks[-1]), "matched cosine (stability)"]
    wanted += [m.label for m in summary_metrics(first) if m.label.startswith("purity") and "median" in m.label]
    entries, rows = [], []
    for name, report in reports.items():
        metrics = {m.label: m for m in summary_metrics(report)}
        for coder, info in report["coders"].items():
            values = {label: metrics[label].value(report, coder) if label in metrics else None for label in wanted}
            k = f"k={info['k']}, " if info.get("k") else ""
            entry = name if coder == SAE_CODER else f"{coder} ({k}for {name})"
            entries.append({"entry": entry, "sae": name, "coder": coder, **values})
            rows.append([entry, *(fmt(values[label]) for label in wanted)])
    return ["SAE / baseline", *wanted], rows, entries


def _pareto_plot(ws: Workspace, entries: list[dict], y_label: str, kind: str, lower_is_better: bool) -> bool:
    from clipatlas.sae.metrics import pareto_front

    points = [e for e in entries if e["L0"] is not None and e[y_label] is not None]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"pca": "s", "pca-width": "D", "kmeans": "^", "random": "x", "raw": "+"}
    for coder in dict.fromkeys(e["coder"] for e in points):
        group = [e for e in points if e["coder"] == coder]
        ax.scatter([e["L0"] for e in group], [e[y_label] for e in group], s=34, marker=markers.get(coder, "o"))
        for e in group:
            ax.annotate(e["entry"], (e["L0"], e[y_label]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    sign = 1 if lower_is_better else -1
    front = pareto_front([(e["L0"], sign * e[y_label]) for e in points])
    ax.plot([points[i]["L0"] for i in front], [points[i][y_label] for i in front], "k--", lw=1, label="Pareto front")
    ax.set(xlabel="L0 (active latents per image)", ylabel=y_label, title=f"{y_label} against L0")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    _save(fig, ws.compare_plot(kind))
    return True


def write_compare(ws: Workspace, reports: dict[str, dict[str, Any]]) -> list[str]:
    """compare.json, compare.md and the Pareto plots in W/eval/; prints the table. Returns plot names."""
    header, rows, entries = compare_rows(reports)
    plots = []
    if _pareto_plot(ws, entries, "FVU (held-out)", "fvu_l0", lower_is_better=True):
        plots.append(ws.compare_plot("fvu_l0").name)
    f1 = probe_label(next(iter(reports.values()))["config"]["probe_ks"][-1])
    if _pareto_plot(ws, entries, f1, "f1_l0", lower_is_better=False):
        plots.append(ws.compare_plot("f1_l0").name)
    atomic_write_json(ws.compare_report, {"saes": list(reports), "entries": entries, "plots": plots})
    markdown = "\n\n".join(
        ["# SAEs side by side", markdown_table(header, rows), "\n".join(f"![{p}]({p})" for p in plots)]
    )
    atomic_write_bytes(ws.compare_markdown, (markdown + "\n").encode())
    return plots


def print_compare(reports: dict[str, dict[str, Any]]) -> None:
    header, rows, _ = compare_rows(reports)
    print_table("SAEs and their baselines side by side", header, rows)
