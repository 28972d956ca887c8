"""`clipatlas demo`: embed the demo images, train, evaluate, build the atlas, steer, and serve."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline offline on the demo images", description=__doc__
    )
    parser.add_argument("-w", "--workspace", default="demo-atlas", help="workspace directory (default demo-atlas)")
    parser.add_argument("--name", default="demo", help="name of the demo SAE (default demo)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many demo images")
    parser.add_argument("--no-serve", action="store_true", help="stop before serving the atlas")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            workspace=args.workspace,
            name=args.name,
            limit=args.limit,
            serve=not args.no_serve,
            host=args.host,
            port=args.port,
        )
    )
    return 0
