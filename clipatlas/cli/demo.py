"""`clipatlas demo`: embed the demo images, train, evaluate, build the atlas, steer, and serve."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.demo import DemoConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline offline on the demo images", description=__doc__
    )
    add_config_flags(parser, DemoConfig, aliases={"workspace": ["-w"]})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.demo import run_demo

    run_demo(DemoConfig(**given(args, DemoConfig)))
    return 0
