"""`clipatlas steer`: edit an image's features and decode it, or replay a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipatlas.cli.flags import (
    add_config_flags,
    add_decoder_settings_flag,
    add_edit_flag,
    add_sae_name,
    add_workspace,
    given,
    output_file,
)
from clipatlas.steer.recipe import Recipe


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "steer",
        help="edit an image's SAE features and decode the result",
        description="Edit SAE features of IMAGE (a store image id, sha256:HEX or a file) "
        "and decode it; or replay a recipe with --recipe.",
    )
    parser.add_argument("image", nargs="?", help="store image id, sha256:HEX of a stored image, or an image file")
    add_workspace(parser)
    add_sae_name(parser)
    add_edit_flag(
        parser,
        "set:F=V[x] add:F=V[x] scale:F=A ban:F transfer:IMG[:F,..] difference:A,B[=S]; "
        "repeat to stack, applied in order (Vx = V times the feature's max activation)",
    )
    parser.add_argument(
        "--transfer-from",
        action="append",
        default=[],
        metavar="IMAGE",
        help="transfer all features of IMAGE (same as --edit transfer:IMAGE)",
    )
    add_config_flags(parser, Recipe, skip=("image", "edits", "settings", "sae"))
    add_decoder_settings_flag(
        parser,
        "decoder setting: kandinsky steps=12 guidance=4 height=512 width=512 (img2img: strength=0.5); "
        "retrieval k=16 tile=128 activation_weight=0.1 rank_weight=1 top_latents=5 dominant_weight=0 "
        "duplicate_cosine=0.995 (the ranking of edited images, see the README's Steering section)",
    )
    parser.add_argument("--recipe", type=Path, help="replay this recipe JSON (ignores IMAGE and edit options)")
    parser.add_argument("-o", "--out", type=output_file, required=True, help="where to write the edited image (PNG)")
    parser.add_argument("--before", type=output_file, help="also write the unedited decode (same seed) here")
    parser.add_argument("--recipe-out", type=output_file, help="write the recipe JSON here, to replay later")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-embed the result and report, per set/add feature, its activation and rank there, whether the "
        "result differs from the source, and how far the other features moved",
    )
    parser.set_defaults(func=run, reads=("store", "sae", "atlas"))


def recipe_from_args(args):
    from clipatlas.errors import UserError
    from clipatlas.steer.decoders import parse_settings
    from clipatlas.steer.edits import Edit, parse_edit

    if args.recipe:
        return Recipe.load(args.recipe)
    if not args.image:
        raise UserError("give an IMAGE to steer, or --recipe FILE to replay one")
    edits = [parse_edit(spec) for spec in args.edit] + [Edit("transfer", image=img) for img in args.transfer_from]
    chosen = given(args, Recipe, skip=("image", "edits", "settings", "sae"))
    return Recipe(image=args.image, edits=tuple(edits), settings=parse_settings(args.settings), sae=args.name, **chosen)


def run(args: argparse.Namespace) -> int:
    from clipatlas._io import atomic_write_bytes
    from clipatlas.steer import steerer_for

    recipe = recipe_from_args(args)
    steerer = steerer_for(args.workspace, args.name or recipe.sae)
    result = steerer.run(recipe)
    atomic_write_bytes(args.out, result.after_png)
    if args.before:
        atomic_write_bytes(args.before, result.before_png)
    if args.recipe_out:
        recipe.save(args.recipe_out)
    print(f"wrote {args.out} (decoder {result.decoder}, recipe {recipe.hash[:12]})")
    for hit in (result.after_ranking or [])[:5]:
        print(f"  {hit.image_id}\tscore {hit.score:.3f}  cosine {hit.cosine:.3f}{describe_targets(hit, steerer)}")
    if args.verify:
        for check in steerer.verify(recipe, result):
            print(describe_check(check))
    return 0


def describe_targets(hit, steerer) -> str:
    """Each edited feature's activation in a shown image, in units of its max activation, and its rank."""
    parts = []
    for target in hit.targets:
        top = float(steerer.max_activation[target.feature])
        rank = f"rank {target.rank}" if target.activation > 0 else "not firing"
        level = f" ({target.activation / top:.2f}x max)" if top > 0 else ""
        parts.append(f"#{target.feature} {target.activation:.3g}{level}, {rank}")
    return ("  " + "; ".join(parts)) if parts else ""


def describe_check(check) -> str:
    differs = (
        f"differs from the source (cosine {check.source_cosine:.2f})"
        if check.differs
        else f"is the source or a near-duplicate (cosine {check.source_cosine:.3f})"
    )
    verdict = "shown" if check.success else "not shown"
    return (
        f"feature {check.feature}: activation {check.before_activation:.3g} -> {check.after_activation:.3g}, "
        f"rank {check.before_rank} -> {check.after_rank}; the result {differs}; the other features' cosine "
        f"{check.unedited_cosine:.2f}: {verdict} (success = differs and rank < {check.top})"
    )
