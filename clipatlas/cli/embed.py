"""`clipatlas embed`: images to embeddings in the workspace's store (resumes if interrupted)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_workspace, given
from clipatlas.store.config import EmbedConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed images into the workspace's store", description=__doc__)
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a folder of images, a WebDataset .tar shard, a .txt/.parquet list of paths, "
        "or demo:samples, demo:tuxpaint, demo:emoji",
    )
    add_workspace(parser, help="workspace directory (created if missing)")
    add_config_flags(parser, EmbedConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.store.pipeline import embed

    summary = embed(
        args.sources, args.workspace, config=EmbedConfig(**given(args, EmbedConfig)), progress=not args.no_progress
    )
    print(summary.format())
    return 0
