"""`clipatlas serve`: the feature library and playground in the browser."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given
from clipatlas.web.config import ServeConfig, WebConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="browse the atlas and steer images in the browser", description=__doc__
    )
    add_workspace(parser)
    add_sae_name(parser)
    add_config_flags(parser, ServeConfig)
    add_config_flags(
        parser, WebConfig, skip=[f for f in ("limits", "devices", "max_cached_results", "max_uploads_kept")]
    )
    parser.set_defaults(func=run, reads=("store", "sae", "atlas"))


def run(args: argparse.Namespace) -> int:
    from clipatlas.web.server import serve

    serve(args.workspace, args.name, ServeConfig(**given(args, ServeConfig)), WebConfig(**given(args, WebConfig)))
    return 0
