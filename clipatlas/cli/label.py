"""`clipatlas label`: name an atlas's features with one labeller (each flag is a field of
clipatlas.interp.config: LabelConfig, SplitConfig, VLMConfig)."""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, given
from clipatlas.interp.config import LabelConfig, SplitConfig, VLMConfig


def add_workspace_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--workspace", required=True, help="workspace directory")
    parser.add_argument("--name", default=None, help="SAE name (default: the workspace's only SAE)")


def add_split_and_vlm_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser.add_argument_group("which features, and their labelling / scoring split"), SplitConfig)
    add_config_flags(parser.add_argument_group("vision-language model (labeller and judge vlm)"), VLMConfig)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="label features (captions, classifier, clip-text or a VLM)",
        description="Label every feature active on enough images from its labelling half; the other half is "
        "kept to score the label (clipatlas score). Re-running replaces the labeller's earlier labels.",
    )
    add_workspace_flags(parser)
    add_config_flags(parser, LabelConfig)
    add_split_and_vlm_flags(parser)
    parser.set_defaults(func=run, reads=("store", "sae", "atlas"))


def run(args: argparse.Namespace) -> int:
    from clipatlas.interp.run import label

    result = label(
        args.workspace,
        args.name,
        LabelConfig(**given(args, LabelConfig)),
        SplitConfig(**given(args, SplitConfig)),
        VLMConfig(**given(args, VLMConfig)),
    )
    print(result.format())
    return 0
