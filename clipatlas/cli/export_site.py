"""`clipatlas export-site`: the atlas as a static site (HTML, JS, JSON chunks, WebP sprite sheets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given
from clipatlas.share.config import SiteConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-site", help="write a static feature browser for any static host", description=__doc__
    )
    add_workspace(parser)
    add_sae_name(parser)
    parser.add_argument("-o", "--out", required=True, type=Path, help="folder to write the site into (new or a site)")
    add_config_flags(parser, SiteConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.share.site import export_site

    print(export_site(args.workspace, args.name, args.out, SiteConfig(**given(args, SiteConfig))).summary_line())
    return 0
