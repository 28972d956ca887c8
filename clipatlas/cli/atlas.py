"""`clipatlas atlas`: build the feature encyclopedia of a trained SAE (resumes if interrupted)."""

from __future__ import annotations

import argparse

from clipatlas.atlas.config import AtlasConfig
from clipatlas.cli.flags import add_config_flags, given


def register(subparsers) -> None:
    parser = subparsers.add_parser("atlas", help="build the feature encyclopedia (atlas.sqlite)", description=__doc__)
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument("--name", default=None, help="SAE name (default: the workspace's only SAE)")
    add_config_flags(parser, AtlasConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.atlas import build_atlas

    atlas = build_atlas(args.workspace, args.name, config=AtlasConfig(**given(args, AtlasConfig)))
    summary = atlas.summary()
    print(
        f"atlas of {summary['sae']}: {summary['n_alive']}/{summary['n_features']} features alive over "
        f"{summary['n_images']} images, {summary['n_labelled']} labelled -> {atlas.db_path}"
    )
    return 0
