"""`clipatlas icons`: one preview image per feature (the template with the feature boosted)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_decoder_settings_flag, add_sae_name, add_workspace, given
from clipatlas.steer.config import IconConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "icons",
        help="make feature icons (template image with one feature boosted)",
        description="Write icons/<feature>.png for each feature and record them in the "
        "atlas; re-running continues where it stopped and remakes the icons whose inputs changed.",
    )
    add_workspace(parser)
    add_sae_name(parser)
    add_config_flags(parser, IconConfig, skip=("settings",))
    add_decoder_settings_flag(
        parser, "decoder setting, e.g. steps=12 (kandinsky) or rank_weight=1 (retrieval; see clipatlas steer --help)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-embed the icons made and report how often their own feature fires most, and how many are distinct",
    )
    parser.set_defaults(func=run, reads=("store", "sae", "atlas"))


def run(args: argparse.Namespace) -> int:
    from clipatlas.steer.decoders import parse_settings
    from clipatlas.steer.icons import make_icons, verify_icons

    config = IconConfig(**given(args, IconConfig, skip=("settings",)), settings=parse_settings(args.settings))
    icons = make_icons(args.workspace, args.name, config)
    print(f"strength {icons.strength.source}")
    print(
        f"made {len(icons.made)} icons, kept {icons.kept} up to date; "
        f"{icons.distinct_share:.1%} of the {icons.n_icons} alive features' icons are distinct"
    )
    warnings = icons.warnings
    if args.verify:
        report = verify_icons(args.workspace, args.name, config.features)
        print(
            f"{report['n_icons']} icons: {report['top1_share']:.1%} activate their own feature most "
            f"(target {report['top1_target']:.0%}; at most {report['top1_ceiling']:.1%} can with retrieval on "
            "this store: the share of these features that is the strongest latent of some store image)\n"
            f"  other measures: {report['top5_share']:.1%} have it among their 5 strongest latents, "
            f"{report['normalised_top1_share']:.1%} fire it at the largest fraction of its max activation; "
            f"median rank {report['median_rank_before']:.0f} in the template -> {report['median_rank_after']:.0f} "
            "in the icon"
        )
        warnings = report["warnings"]  # the same distinct share, plus the causal check's
    for warning in warnings:
        print(warning)
    return 0
