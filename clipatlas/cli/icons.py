"""`clipatlas icons`: one preview image per feature (the template with the feature boosted)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given
from clipatlas.steer.config import IconConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "icons",
        help="make feature icons (template image with one feature boosted)",
        description="Write icons/<feature>.png for each feature and record them in the "
        "atlas; re-running continues where it stopped.",
    )
    add_workspace(parser)
    add_sae_name(parser)
    add_config_flags(parser, IconConfig, skip=("settings",))
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decoder setting, e.g. steps=12",
    )
    parser.add_argument(
        "--verify", action="store_true", help="re-embed the icons and report the share whose own feature fires most"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.steer.decoders import parse_settings
    from clipatlas.steer.icons import make_icons, verify_icons

    config = IconConfig(**given(args, IconConfig, skip=("settings",)), settings=parse_settings(args.settings))
    made = make_icons(args.workspace, args.name, config)
    print(f"made {len(made)} icons")
    if args.verify:
        report = verify_icons(args.workspace, args.name, config)
        print(
            f"{report['n_icons']} icons: {report['top1_share']:.1%} activate their own feature most "
            f"({report['top10_share']:.1%} in the top 10); median rank {report['median_rank_before']:.0f} "
            f"in the template -> {report['median_rank_after']:.0f} in the icon"
        )
    return 0
