"""`clipatlas eval`: metrics of one or every SAE on its held-out rows, and the Pareto plot."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given
from clipatlas.sae.config import EvalConfig

# (metrics.json key, column header, format)
COLUMNS = (
    ("arch", "arch", "{}"),
    ("n_samples", "held-out rows", "{:,}"),
    ("explained_variance", "explained variance", "{:.3f}"),
    ("fvu", "FVU", "{:.3f}"),
    ("train_fvu", "FVU on training rows", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("silent_fraction", "silent on held-out rows", "{:.1%}"),
    ("dense_fraction", "dense (>10% of rows)", "{:.1%}"),
    ("cosine", "cosine", "{:.3f}"),
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate SAEs on held-out rows: FVU, L0, silent and dense latents",
        description="Evaluate SAEs on their held-out rows; writes saes/NAME/metrics.json.",
    )
    add_workspace(p)
    add_sae_name(p, help="SAE to evaluate (default: every SAE in the workspace)")
    add_config_flags(p, EvalConfig)
    p.add_argument("--plot", action="store_true", help="also draw FVU against L0 of all SAEs to saes/pareto.png")
    p.set_defaults(func=run)


def print_metrics(rows: dict[str, dict]) -> None:
    """One row per SAE, then each SAE's warnings (memorisation, too few held-out rows)."""
    from clipatlas.cli.tables import print_table
    from clipatlas.sae.metrics import Metrics

    def cell(metrics: dict, key: str, fmt: str) -> str:
        return "-" if metrics.get(key) is None else fmt.format(metrics[key])

    table = [[name, *(cell(metrics, key, fmt) for key, _, fmt in COLUMNS)] for name, metrics in rows.items()]
    print_table(["sae", *(header for _, header, _ in COLUMNS)], table)
    for name, metrics in rows.items():
        for warning in Metrics.from_dict(metrics).warnings():
            print(f"warning: {name}: {warning}")


def run(args: argparse.Namespace) -> int:
    from clipatlas.errors import UserError
    from clipatlas.sae import evaluate, plot_pareto
    from clipatlas.workspace import Workspace

    ws = Workspace(args.workspace)
    config = EvalConfig(**given(args, EvalConfig))
    names = [args.name] if args.name else ws.sae_names()
    if not names:
        raise UserError(f"no trained SAE in {ws.root}; run: clipatlas train -w {ws.root}")
    rows = {}
    for name in names:
        metrics = evaluate(ws, name, config)
        rows[name] = {"arch": _arch(ws, name), **metrics.to_dict()}
    print_metrics(rows)
    if args.plot:
        print(f"Pareto plot: {plot_pareto(ws)}")
    return 0


def _arch(ws, name: str) -> str:
    from clipatlas._io import read_json

    return read_json(ws.sae(name).config)["arch"]
