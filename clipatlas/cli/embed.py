"""`clipatlas embed`: images to embeddings in the workspace's store (resumes if interrupted)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed images into the workspace's store", description=__doc__)
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a folder of images, a WebDataset .tar shard, a .txt/.parquet list of paths, "
        "or demo:samples, demo:tuxpaint, demo:emoji",
    )
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory (created if missing)")
    parser.add_argument(
        "--encoder",
        default="kandinsky-clip",
        help="kandinsky-clip[:PATH] (default), hf:PATH_OR_ID, or efficientnet-lite0 (offline)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when present)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="model dtype: float32, float16, bfloat16 (default: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--store-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="dtype of the stored embeddings (default float16)",
    )
    parser.add_argument("--limit", type=int, default=None, help="embed at most this many inputs")
    parser.add_argument("--shard-size", type=int, default=10_000, help="embeddings per shard file (default 10000)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes (default: up to 4)")
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="skip images with more pixels than this (default 64M)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.store.pipeline import EmbedConfig, embed

    config = EmbedConfig(
        encoder=args.encoder,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        shard_size=args.shard_size,
        limit=args.limit,
        workers=args.workers,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    summary = embed(args.sources, args.workspace, config=config, progress=not args.no_progress)
    print(summary.format())
    return 0
