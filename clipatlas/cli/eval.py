"""`clipatlas eval`: metrics of one or every SAE on its held-out rows, and the Pareto plot."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.sae.config import EvalConfig

COLUMNS = ("arch", "n_samples", "explained_variance", "fvu", "l0", "dead_fraction", "dense_fraction", "cosine")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate SAEs: FVU, L0, dead and dense latents",
        description="Evaluate SAEs on their held-out rows; writes saes/NAME/metrics.json.",
    )
    p.add_argument("-w", "--workspace", required=True, help="workspace directory")
    p.add_argument("--name", help="SAE to evaluate (default: every SAE in the workspace)")
    add_config_flags(p, EvalConfig)
    p.add_argument("--plot", action="store_true", help="also draw FVU against L0 of all SAEs to saes/pareto.png")
    p.set_defaults(func=run)


def print_table(rows: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("sae", *COLUMNS)
    for name, metrics in rows.items():
        table.add_row(name, *(_fmt(metrics.get(col)) for col in COLUMNS))
    Console().print(table)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


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
    print_table(rows)
    if args.plot:
        print(f"Pareto plot: {plot_pareto(ws)}")
    return 0


def _arch(ws, name: str) -> str:
    from clipatlas._io import read_json

    return read_json(ws.sae(name).config)["arch"]
