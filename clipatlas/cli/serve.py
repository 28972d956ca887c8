"""`clipatlas serve`: the feature library and playground in the browser."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.web.config import ServeConfig, WebConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="browse the atlas and steer images in the browser", description=__doc__
    )
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument("--name", default=None, help="SAE name (default: the workspace's only SAE)")
    add_config_flags(parser, ServeConfig)
    add_config_flags(
        parser, WebConfig, skip=[f for f in ("limits", "devices", "max_cached_results", "max_uploads_kept")]
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.web.server import serve

    serve(args.workspace, args.name, ServeConfig(**given(args, ServeConfig)), WebConfig(**given(args, WebConfig)))
    return 0
