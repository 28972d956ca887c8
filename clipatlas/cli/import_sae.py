"""`clipatlas import-sae`: bring an SAE trained with SAELens, saev or overcomplete into a workspace."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipatlas.cli.flags import add_config_flags, add_workspace, given
from clipatlas.share.config import ImportConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-sae", help="import an SAE from SAELens, saev or overcomplete", description=__doc__
    )
    parser.add_argument(
        "source", type=Path, help="a SAELens folder, a saev checkpoint or an overcomplete torch.save file"
    )
    add_workspace(parser)
    parser.add_argument("--name", required=True, help="name of the imported SAE in the workspace")
    add_config_flags(parser, ImportConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.share.peers import import_sae

    folder = import_sae(args.source, args.workspace, args.name, ImportConfig(**given(args, ImportConfig)))
    print(
        f"imported {args.source} as {folder}; "
        f"next: clipatlas eval -w {args.workspace} --name {args.name}, then clipatlas atlas"
    )
    return 0
