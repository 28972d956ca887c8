"""`clipatlas generate`: text to image through the Kandinsky 2.2 prior, with feature rules."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import (
    add_config_flags,
    add_decoder_settings_flag,
    add_edit_flag,
    add_sae_name,
    add_workspace,
    given,
    output_file,
)
from clipatlas.steer.config import GenerateConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="text to image with feature rules (ban or boost SAE features)",
        description="Run the Kandinsky 2.2 prior on PROMPT, apply the edits to the "
        "image embedding's SAE features, and decode it.",
    )
    parser.add_argument("prompt", help='what to draw, e.g. "a red bicycle"')
    add_workspace(parser)
    add_sae_name(parser)
    add_edit_flag(parser, "ban:F set:F=V[x] add:F=V[x] scale:F=A ...; repeat to stack")
    add_config_flags(parser, GenerateConfig, skip=("settings",))
    add_decoder_settings_flag(parser, "steps, guidance, height, width, prior_steps, prior_guidance")
    parser.add_argument(
        "-o", "--out", type=output_file, required=True, help="where to write the image with the rules (PNG)"
    )
    parser.add_argument("--before", type=output_file, help="also write the image without the rules (same seed)")
    parser.set_defaults(func=run, reads=("sae",))


def run(args: argparse.Namespace) -> int:
    from clipatlas.steer.decoders import parse_settings
    from clipatlas.steer.edits import parse_edit
    from clipatlas.steer.generate import generate, write_result

    config = GenerateConfig(**given(args, GenerateConfig, skip=("settings",)), settings=parse_settings(args.settings))
    result = generate(args.workspace, args.prompt, [parse_edit(s) for s in args.edit], args.name, config)
    write_result(result, args.out, args.before)
    print(f"wrote {args.out}")
    return 0
