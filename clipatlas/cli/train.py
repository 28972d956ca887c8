"""`clipatlas train`: train one SAE, or a sweep grid, on a workspace's store.

Every flag is a field of `TrainConfig` or of an architecture's config (clipatlas.sae.config):
the help and defaults below are theirs.
"""

from __future__ import annotations

import argparse

from clipatlas.cli.flags import add_config_flags, add_field_flag, add_workspace, given, sentence, shown_default
from clipatlas.errors import UserError
from clipatlas.sae.config import ARCH_CONFIGS, EvalConfig, TrainConfig, all_hyperparameters


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a sparse autoencoder on the store",
        description="Train an SAE (or a --sweep grid) on W/store; re-running resumes a killed run.",
    )
    add_workspace(p)
    p.add_argument(
        "--arch",
        choices=list(ARCH_CONFIGS),
        default=argparse.SUPPRESS,
        help=f"architecture (default: {TrainConfig().arch})",
    )
    add_config_flags(p, TrainConfig, skip=("sae",))
    architecture = p.add_argument_group("architecture hyper-parameters (each applies to the architectures named)")
    for name, classes in all_hyperparameters().items():
        add_field_flag(architecture, name, _annotation(classes[0], name), _hyper_help(name, classes))
    p.add_argument("--sweep", help="TOML grid of settings (see the README); flags apply to every run")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=run)


def _annotation(config_class: type, name: str):
    import typing

    return typing.get_type_hints(config_class)[name]


def _hyper_help(name: str, classes: list[type]) -> str:
    """'topk, batchtopk: <doc> (default 32); ...' — archs sharing a doc and a default share a part."""
    from clipatlas._config import field_docs

    parts: dict[tuple[str, str], list[str]] = {}
    for config_class in classes:
        key = (field_docs(config_class).get(name, ""), shown_default(getattr(config_class(), name)))
        parts.setdefault(key, []).append(config_class.arch)
    return "; ".join(
        f"{', '.join(archs)}: {sentence(doc)} (default {default})" for (doc, default), archs in parts.items()
    )


def settings_from_args(args: argparse.Namespace) -> dict:
    """The flat training settings given on the command line."""
    names = ["arch", *all_hyperparameters()]
    return {**given(args, TrainConfig, skip=("sae",)), **{n: getattr(args, n) for n in names if hasattr(args, n)}}


def run(args: argparse.Namespace) -> int:
    import torch

    from clipatlas.sae import evaluate, train_many
    from clipatlas.sae.sweep import load_sweep
    from clipatlas.workspace import Workspace

    ws = Workspace(args.workspace)
    settings = settings_from_args(args)
    if args.sweep:
        if "name" in settings:
            raise UserError("--name and --sweep conflict: the sweep names its runs (set `name` in the TOML file)")
        configs = load_sweep(args.sweep, settings)
    else:
        configs = [TrainConfig.from_settings(settings)]
    torch.manual_seed(configs[0].seed)
    dirs = train_many(ws, configs)
    for cfg, sae_dir in zip(configs, dirs):
        print(f"trained {cfg.name}: {sae_dir}")
        if not args.no_eval:
            _print_metrics(
                cfg.name, {"arch": cfg.arch, **evaluate(ws, cfg.name, EvalConfig(device=cfg.device)).to_dict()}
            )
    return 0


def _print_metrics(name: str, metrics: dict) -> None:
    from clipatlas.cli.eval import print_metrics

    print_metrics({name: metrics})
