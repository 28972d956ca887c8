"""`clipatlas index`: build the approximate retrieval index over the store, once, and check its recall."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_workspace, given
from clipatlas.steer.config import IndexConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="build the approximate retrieval index (FAISS) over the store", description=__doc__
    )
    add_workspace(parser)
    add_config_flags(parser, IndexConfig, skip=("kind", "min_rows"))
    parser.add_argument(
        "--check", type=int, default=200, metavar="N", help="measure recall@16 against exact search on N store rows"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from clipatlas.steer.ann import ApproximateIndex, ensure_index, recall_at
    from clipatlas.steer.ranking import CosineIndex
    from clipatlas.store import Store

    config = IndexConfig(**given(args, IndexConfig))
    store = Store.open(args.workspace)
    build = ensure_index(args.workspace, store, config)
    what = f"built in {build.seconds:.0f} s" if build.built else "up to date"
    print(
        f"retrieval index {build.path}: {build.rows} rows, {build.nlist} cells, {build.file_bytes / 1e6:.1f} MB, {what}"
    )
    if args.check:
        import faiss

        approximate = ApproximateIndex(store, faiss.read_index(str(build.path)), config)
        rows = np.random.default_rng(0).choice(len(store), min(args.check, len(store)), replace=False)
        recall = recall_at(approximate, CosineIndex(store), store.rows(np.sort(rows)), 16)
        print(f"recall@16 against exact search on {len(rows)} store rows: {recall:.3f} (nprobe {config.nprobe})")
    return 0
