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
        help="check the icons made (montage and generated ones: the icon files re-encoded by the store's encoder) and "
        "report how often their own feature fires most, is in their top 5, and how many are distinct",
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
        print(verify_summary(report))
        warnings = report["warnings"]  # the same distinct share, plus the causal check's
    for warning in warnings:
        print(warning)
    return 0


def verify_summary(report: dict) -> str:
    """The causal check's lines: rank 0 (with the store's cap for single-image icons), top 5, distinct, and the
    same for the features firing on many images."""
    ceiling = report["top1_ceiling"]
    cap = (
        f"; at most {ceiling:.1%} can with single store images on this store: the share of these features that "
        "is the strongest latent of some store image"
        if ceiling is not None
        else ""
    )
    frequent = report["frequent"]
    lines = [
        f"{report['n_icons']} icons checked: {report['top1_share']:.1%} activate their own feature most "
        f"(target {report['top1_target']:.0%}{cap}), {report['top5_share']:.1%} have it among their 5 strongest "
        f"latents, {report['distinct_share']:.1%} are distinct",
        f"  other measures: {report['normalised_top1_share']:.1%} fire it at the largest fraction of its max "
        f"activation; median rank {report['median_rank_before']:.0f} in the template -> "
        f"{report['median_rank_after']:.0f} in the icon",
    ]
    if frequent["n_icons"]:
        lines.append(
            f"  the {frequent['n_icons']} features firing on at least {frequent['min_images']} images: "
            f"{frequent['top1_share']:.1%} most, {frequent['top5_share']:.1%} in the top 5"
        )
    return "\n".join(lines)
