"""`clipatlas serve`: the feature library and playground in the browser."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="browse the atlas and steer images in the browser", description=__doc__
    )
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument("--name", default=None, help="SAE name (default: the workspace's only SAE)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other address requires the printed token)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        default=None,
        help="token for compute and upload endpoints (default: random on non-loopback addresses)",
    )
    parser.add_argument(
        "--decoder",
        default=None,
        help="playground decoder: retrieval, kandinsky[:PATH_OR_ID], kandinsky-img2img[:PATH_OR_ID] "
        "(default: kandinsky for a kandinsky-clip workspace, else retrieval)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.web.server import serve

    serve(args.workspace, name=args.name, host=args.host, port=args.port, token=args.token, decoder=args.decoder)
    return 0
