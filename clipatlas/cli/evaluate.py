"""`clipatlas evaluate`: the vision SAE suite, with baselines, in one report per SAE.

Writes W/saes/NAME/eval/report.json, report.md and PNG plots; with --compare also W/eval/compare.md
and the Pareto plots. Finished sections are reused when an interrupted run is started again.
"""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.evaluate.config import EvaluateConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="the vision SAE suite: reconstruction, fidelity, probing, purity, stability, against baselines",
        description=__doc__,
    )
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument(
        "--name",
        action="append",
        dest="names",
        metavar="NAME",
        help="SAE to evaluate; repeat for several (default: the workspace's only SAE)",
    )
    add_config_flags(parser, EvaluateConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.evaluate import evaluate_suite, print_compare, print_report
    from clipatlas.workspace import Workspace

    config = EvaluateConfig(**given(args, EvaluateConfig))
    reports = evaluate_suite(args.workspace, args.names, config)
    ws = Workspace(args.workspace)
    for name, report in reports.items():
        print_report(report)
        print(f"report: {ws.sae(name).eval_markdown}")
    if config.compare:
        print_compare(reports)
        print(f"side by side: {ws.compare_markdown}")
    return 0
