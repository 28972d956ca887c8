"""The `clipatlas` command: a thin layer over the Python API.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds a parser
whose `func` default takes the parsed arguments, and whose `reads` default names the workspace
parts it reads (store, sae, atlas), checked before it runs (`clipatlas.atlas.check`). Modules
import their stage lazily inside `func` so `clipatlas --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown in --help: the data flow.
SUBCOMMAND_MODULES = [
    "embed",
    "info",
    "train",
    "eval",
    "atlas",
    "index",
    "steer",
    "icons",
    "generate",
    "evaluate",
    "label",
    "score",
    "serve",
    "export-site",
    "release",
    "import-sae",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipatlas", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"clipatlas.cli.{module_name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"clipatlas.cli.{module_name.replace('-', '_')}":
                continue  # stage not built yet in this checkout
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    tune_cpu_allocator()  # before any tensor work: the encoders ran 3.5x faster on a CPU with it
    try:
        if getattr(args, "reads", ()):  # the workspace parts the command reads: a broken file is named up front
            from clipatlas.atlas.check import check_workspace

            check_workspace(args.workspace, args.name, args.reads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


from clipatlas._alloc import tune_cpu_allocator  # noqa: E402
from clipatlas.errors import UserError  # noqa: E402
