"""`clipatlas info`: what a workspace holds (store, SAEs and their metrics, atlases)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_workspace


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="summarise a workspace", description=__doc__)
    add_workspace(parser)
    parser.add_argument("--verify", action="store_true", help="also re-hash every shard against the manifest")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.info import workspace_summary

    text, problems = workspace_summary(args.workspace, verify=args.verify)
    print(text)
    return 1 if problems else 0
