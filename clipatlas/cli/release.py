"""`clipatlas release`: a folder ready for the Hugging Face hub (cfg.json, sae.safetensors, a model card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipatlas.cli.flags import add_config_flags, add_sae_name, add_workspace, given
from clipatlas.share.config import ReleaseConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "release", help="write a hub-ready SAE folder with a model card", description=__doc__
    )
    add_workspace(parser)
    add_sae_name(parser)
    parser.add_argument("-o", "--out", required=True, type=Path, help="folder to write the release into")
    parser.add_argument("--push", metavar="REPO", help="also upload it to this Hugging Face hub model repo")
    add_config_flags(parser, ReleaseConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.share.release import push, release

    made = release(args.workspace, args.name, args.out, ReleaseConfig(**given(args, ReleaseConfig)))
    print(made.summary_line())
    if args.push:
        print(f"pushed to {args.push}: {push(made.dir, args.push)}")
    else:
        print(f"upload it with: huggingface-cli upload REPO {made.dir}  (or re-run with --push REPO)")
    return 0
