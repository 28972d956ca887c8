"""`clipatlas icons`: one preview image per feature (the template with the feature boosted)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "icons",
        help="make feature icons (template image with one feature boosted)",
        description="Write icons/<feature>.png for each feature and record them in the "
        "atlas; re-running continues where it stopped.",
    )
    parser.add_argument("-w", "--workspace", required=True, type=Path)
    parser.add_argument("--name", help="SAE name (default: the workspace's only SAE)")
    parser.add_argument("--features", default="alive", help="all | alive | comma-separated feature ids")
    parser.add_argument("--decoder", default="retrieval", help="retrieval | kandinsky[:PATH_OR_ID]")
    parser.add_argument("--strength", type=float, default=7.5, help="times the feature's max activation")
    parser.add_argument("--template", help="template image file or store image id (default: the packaged one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
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
    from clipatlas.cli.steer import parse_settings
    from clipatlas.steer.icons import IconConfig, make_icons, verify_icons

    config = IconConfig(
        features=args.features,
        decoder=args.decoder,
        strength=args.strength,
        template=args.template,
        seed=args.seed,
        batch_size=args.batch_size,
        settings=parse_settings(args.settings),
    )
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
