"""`clipatlas train`: train one SAE, or a sweep grid, on a workspace's store."""

from __future__ import annotations

import argparse

from clipatlas.errors import UserError

# Flags whose value goes straight into TrainConfig when given.
_CONFIG_FLAGS = (
    "name",
    "arch",
    "expansion",
    "k",
    "l1",
    "lr",
    "batch_size",
    "steps",
    "epochs",
    "seed",
    "device",
    "k_aux",
    "aux_weight",
    "warmup_steps",
    "eval_fraction",
    "dead_window",
    "b_dec_init",
    "checkpoint_every",
    "resample_every",
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a sparse autoencoder on the store",
        description="Train an SAE (or a --sweep grid) on W/store; re-running resumes a killed run.",
    )
    p.add_argument("-w", "--workspace", required=True, help="workspace directory")
    p.add_argument("--name", help="SAE name (default: sae)")
    p.add_argument("--arch", choices=["relu", "topk", "batchtopk", "jumprelu"], help="architecture (default: topk)")
    p.add_argument("--expansion", type=int, help="latents per input dimension (default: 16)")
    p.add_argument("--k", type=int, help="active latents per input for topk/batchtopk (default: 32)")
    p.add_argument("--l1", type=float, help="L1 coefficient (relu) or L0 coefficient (jumprelu)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 4e-4)")
    p.add_argument("--batch-size", type=int, help="inputs per step (default: 4096)")
    p.add_argument("--steps", type=int, help="training steps (default: --epochs 10)")
    p.add_argument("--epochs", type=float, help="passes over the training split, used when --steps is not given")
    p.add_argument("--seed", type=int, help="seed of the initialisation, split and batch order (default: 0)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--k-aux", type=int, help="dead latents in the AuxK loss (default: 512)")
    p.add_argument("--aux-weight", type=float, help="weight of the AuxK loss (default: 1/32)")
    p.add_argument("--warmup-steps", type=int, help="learning-rate warm-up steps (default: 100)")
    p.add_argument("--eval-fraction", type=float, help="held-out fraction of the store (default: 0.1)")
    p.add_argument("--dead-window", type=int, help="samples without firing before a latent counts as dead")
    p.add_argument("--b-dec-init", choices=["mean", "geometric_median"], help="initial decoder bias")
    p.add_argument("--resample-every", type=int, help="relu: resample dead latents every N steps (default: off)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 500)")
    p.add_argument("--sweep", help="TOML grid of settings (see clipatlas.sae.sweep); flags apply to every run")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from clipatlas.sae import TrainConfig, evaluate, train_many
    from clipatlas.sae.sweep import load_sweep
    from clipatlas.workspace import Workspace

    ws = Workspace(args.workspace)
    given = {flag: getattr(args, flag) for flag in _CONFIG_FLAGS if getattr(args, flag) is not None}
    if args.sweep:
        if "name" in given:
            raise UserError("--name and --sweep conflict: the sweep names its runs (set `name` in the TOML file)")
        configs = load_sweep(args.sweep, given)
    else:
        configs = [TrainConfig(**given)]
    torch.manual_seed(configs[0].seed)
    dirs = train_many(ws, configs)
    for cfg, sae_dir in zip(configs, dirs):
        print(f"trained {cfg.name}: {sae_dir}")
        if not args.no_eval:
            _print_metrics(cfg.name, {"arch": cfg.arch, **evaluate(ws, cfg.name, device=cfg.device).to_dict()})
    return 0


def _print_metrics(name: str, metrics: dict) -> None:
    from clipatlas.cli.eval import print_table

    print_table({name: metrics})
