"""`clipatlas generate`: text to image through the Kandinsky 2.2 prior, with feature rules."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="text to image with feature rules (ban or boost SAE features)",
        description="Run the Kandinsky 2.2 prior on PROMPT, apply the edits to the "
        "image embedding's SAE features, and decode it.",
    )
    parser.add_argument("prompt")
    parser.add_argument("-w", "--workspace", required=True, type=Path)
    parser.add_argument("--name", help="SAE name (default: the workspace's only SAE)")
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="SPEC",
        help="ban:F set:F=V[x] add:F=V[x] scale:F=A ...; repeat to stack",
    )
    parser.add_argument("--decoder", default="kandinsky", help="kandinsky[:PATH_OR_ID]")
    parser.add_argument("--prior", default=None, help="Kandinsky 2.2 prior hub id or local path")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="steps, guidance, height, width, prior_steps, prior_guidance",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--before", type=Path, help="also write the image without the rules (same seed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipatlas.cli.steer import parse_settings
    from clipatlas.steer import parse_edit
    from clipatlas.steer.generate import KANDINSKY_PRIOR_ID, generate, write_result

    result = generate(
        args.workspace,
        args.prompt,
        [parse_edit(s) for s in args.edit],
        args.name,
        decoder=args.decoder,
        prior=args.prior or KANDINSKY_PRIOR_ID,
        seed=args.seed,
        settings=dict(parse_settings(args.settings)),
    )
    write_result(result, args.out, args.before)
    print(f"wrote {args.out}")
    return 0
