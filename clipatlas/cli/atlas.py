"""`clipatlas atlas`: build the feature encyclopedia of a trained SAE (resumes if interrupted)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("atlas", help="build the feature encyclopedia (atlas.sqlite)", description=__doc__)
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument("--name", default=None, help="SAE name (default: the workspace's only SAE)")
    parser.add_argument("--top-k", type=int, default=32, help="top images kept per feature (default 32)")
    parser.add_argument(
        "--per-decile", type=int, default=3, help="sample images per tenth of the activation range (default 3)"
    )
    parser.add_argument(
        "--codes-per-image", type=int, default=64, help="strongest features kept per image (default 64)"
    )
    parser.add_argument("--chunk-size", type=int, default=4096, help="store rows per encoder call (default 4096)")
    parser.add_argument(
        "--map", choices=("umap", "pca"), default="umap", help="2-D layout of the features (default umap)"
    )
    parser.add_argument(
        "--vocab", default=None, help="text file of words for CLIP text-tower labels (default: caption words)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the pass, e.g. cuda (default cpu)")
    parser.add_argument("--no-thumbnails", action="store_true", help="skip the example-image thumbnails")
    parser.add_argument(
        "--checkpoint-seconds", type=float, default=30.0, help="save progress at most this often (default 30)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.atlas import AtlasConfig, build_atlas

    config = AtlasConfig(
        top_k=args.top_k,
        per_decile=args.per_decile,
        codes_per_image=args.codes_per_image,
        chunk_size=args.chunk_size,
        map_method=args.map,
        vocab_file=args.vocab,
        device=args.device,
        thumbnails=not args.no_thumbnails,
        checkpoint_seconds=args.checkpoint_seconds,
    )
    atlas = build_atlas(args.workspace, args.name, config=config)
    summary = atlas.summary()
    print(
        f"atlas of {summary['sae']}: {summary['n_alive']}/{summary['n_features']} features alive over "
        f"{summary['n_images']} images, {summary['n_labelled']} labelled -> {atlas.db_path}"
    )
    return 0
