"""`clipatlas atlas`: build the feature encyclopedia of a trained SAE (resumes if interrupted)."""

from __future__ import annotations

import argparse

from clipatlas.atlas.config import AtlasConfig
from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given


def register(subparsers) -> None:
    parser = subparsers.add_parser("atlas", help="build the feature encyclopedia (atlas.sqlite)", description=__doc__)
    add_workspace(parser)
    add_sae_name(parser)
    add_config_flags(parser, AtlasConfig)
    parser.set_defaults(func=run, reads=("store", "sae"))


def run(args: argparse.Namespace) -> int:
    from clipatlas.atlas import build_atlas

    atlas = build_atlas(args.workspace, args.name, config=AtlasConfig(**given(args, AtlasConfig)))
    summary = atlas.summary()
    print(
        f"atlas of {summary['sae']}: {summary['n_alive']}/{summary['n_features']} features alive over "
        f"{summary['n_images']} images, {summary['n_labelled']} labelled -> {atlas.db_path}"
    )
    return 0
