"""`clipatlas score`: score an atlas's labels (detection) or features (intruder) with a judge,
each against its baseline (flags: clipatlas.interp.config ScoreConfig, SplitConfig, VLMConfig)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.cli.label import add_split_and_vlm_flags, add_workspace_flags
from clipatlas.interp.config import ScoreConfig, SplitConfig, VLMConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score labels against a shuffled baseline on held-out images",
        description="Score every label on images its labeller never saw (detection) or every feature's "
        "coherence (intruder); the split flags must match those the labels were made with.",
    )
    add_workspace_flags(parser)
    add_config_flags(parser, ScoreConfig)
    add_split_and_vlm_flags(parser)
    parser.set_defaults(func=run, reads=("store", "sae", "atlas"))


def run(args: argparse.Namespace) -> int:
    from clipatlas.interp.run import score

    result = score(
        args.workspace,
        args.name,
        ScoreConfig(**given(args, ScoreConfig)),
        SplitConfig(**given(args, SplitConfig)),
        VLMConfig(**given(args, VLMConfig)),
    )
    print(result.format())
    for line in result.summary_lines():
        print(line)
    if result.report:
        from clipatlas.interp.report import headline_line

        config = ScoreConfig(**given(args, ScoreConfig))
        print(headline_line(result.found, config.judge, config.report_min_activating))
        print(f"report: {result.report}")
    return 0
