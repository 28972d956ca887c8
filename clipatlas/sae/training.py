"""Train SAEs on a workspace's store: shuffled batches, Adam with warm-up and decay, AuxK,
dead-latent tracking, a held-out split, atomic checkpoints and exact resumption.

Several SAEs that share a data stream (batch size, steps, seed, split) train together: each
batch is read once and fed to all of them (`train_many`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipatlas._io import SCHEMA_VERSION, atomic_path, atomic_write_bytes, read_json
from clipatlas.devices import resolve_device
from clipatlas.errors import UserError
from clipatlas.sae.config import TrainConfig, config_from_dict
from clipatlas.sae.model import ARCHITECTURES, SAE
from clipatlas.workspace import SAEFiles, Workspace

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
# Load the whole training split into memory (or onto the GPU) below this many bytes.
IN_MEMORY_LIMIT = 8 << 30
# A run ending with more latents dead in training than this gets a warning.
DEAD_WARNING = 0.3


# -- data --------------------------------------------------------------------------------
def split_rows(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows): a seeded shuffle, the last `eval_fraction` held out."""
    if n < 2:
        raise UserError(f"the store holds {n} embedding(s); training needs at least 2 (one is held out)")
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(max(1, round(n * eval_fraction)), n - 1)
    return np.sort(order[: n - n_eval]), np.sort(order[n - n_eval :])


class BatchStream:
    """Batch t of a run is a pure function of (seed, t): an epoch-seeded permutation, sliced."""

    def __init__(self, store, rows: np.ndarray, batch_size: int, seed: int, device: str):
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self._cache: dict[int, np.ndarray] = {}
        self.data: torch.Tensor | None = None
        self.store = store
        if len(rows) * store.d * 4 <= IN_MEMORY_LIMIT:
            self.data = torch.from_numpy(store.rows(rows)).to(device)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return self._cache[epoch]

    def positions(self, step: int) -> np.ndarray:
        """Positions within the training split of batch `step`."""
        n = len(self.rows)
        flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = np.divmod(flat, n)
        return np.concatenate([self._permutation(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])

    def batch(self, step: int) -> torch.Tensor:
        positions = self.positions(step)
        if self.data is not None:
            return self.data[torch.from_numpy(positions).to(self.data.device)]
        return torch.from_numpy(self.store.rows(self.rows[positions])).to(self.device)


class HeldOutProbe:
    """FVU on (a sample of) the held-out rows during training: the validation curve of train_log.jsonl.

    At most `limit` rows, so the probe costs about one forward pass of a batch however large the store.
    """

    def __init__(self, store, rows: np.ndarray, device: str, limit: int = 4096):
        chosen = rows if len(rows) <= limit else np.sort(np.random.default_rng(2).choice(rows, limit, replace=False))
        self.x = torch.from_numpy(store.rows(chosen)).to(device)
        self.sst = (self.x - self.x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)

    @torch.no_grad()
    def fvu(self, sae: SAE) -> float:
        return float((sae.decode(sae.encode(self.x)) - self.x).pow(2).sum() / self.sst)


def sample_for_init(store, rows: np.ndarray, seed: int, limit: int = 65_536) -> np.ndarray:
    chosen = np.sort(np.random.default_rng([seed, 1]).choice(rows, size=min(limit, len(rows)), replace=False))
    sample = store.rows(chosen)
    if not np.isfinite(sample).all():
        raise UserError(
            "the store holds NaN or infinite embeddings; re-embed the bad images or drop them from the store"
        )
    return sample


def geometric_median(points: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    median = points.mean(dim=0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-8)
        median = (weights[:, None] * points).sum(dim=0) / weights.sum()
    return median


# -- one SAE in training -------------------------------------------------------------------
def build_sae(cfg: TrainConfig, sample: np.ndarray, store) -> SAE:
    """A fresh SAE: input scale from the data, b_dec at its mean (or median), W_enc = W_dec^T."""
    d = sample.shape[1]
    input_scale = float(math.sqrt(d / np.mean(np.sum(sample.astype(np.float64) ** 2, axis=1))))
    sae_cfg = dataclasses.replace(
        cfg.sae, d_in=d, d_sae=cfg.d_sae(d), input_scale=input_scale, store=str(store.dir), encoder=store.encoder
    )
    sae = ARCHITECTURES[cfg.arch](sae_cfg)
    sae.reset_parameters(torch.Generator().manual_seed(cfg.seed))
    scaled = torch.from_numpy(sample).double() * input_scale
    centre = scaled.mean(dim=0) if cfg.b_dec_init == "mean" else geometric_median(scaled)
    with torch.no_grad():
        sae.b_dec.copy_(centre.float())
    return sae


def lr_factor(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last `decay_fraction`."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    decay_start = total * (1 - decay_fraction)
    decay = 1.0 if step < decay_start else max(0.0, (total - step) / max(1.0, total - decay_start))
    return warm * decay


def _adam(sae: SAE, lr: float) -> torch.optim.Adam:
    # The fused kernel makes one pass over each parameter instead of one per Adam operation.
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)


class Run:
    """One SAE with its optimiser, counters, log and checkpoint directory."""

    def __init__(
        self, cfg: TrainConfig, files: SAEFiles, sae: SAE, total_steps: int, dead_window: int, meta: dict[str, Any]
    ):
        self.cfg, self.files, self.sae, self.total_steps, self.dead_window = cfg, files, sae, total_steps, dead_window
        self.meta = meta
        self.optimizer = _adam(sae, cfg.lr)
        self.samples_since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=sae.W_enc.device)
        self.step = 0
        self.last: dict[str, float] = {}
        self.heldout_curve: list[tuple[int, float]] = []  # (step, held-out FVU)

    @property
    def checkpoint_path(self) -> Path:
        return self.files.checkpoints_dir / CHECKPOINT_NAME

    def dead_mask(self) -> torch.Tensor:
        return self.samples_since_fired >= self.dead_window

    def train_step(self, x: torch.Tensor, autocast: bool) -> None:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(self.step, self.total_steps, cfg.warmup_steps, cfg.decay_fraction)
        sparsity_scale = min(1.0, (self.step + 1) / max(1.0, cfg.l1_warmup_fraction * self.total_steps))
        x_scaled = x * self.sae.cfg.input_scale
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            parts = self.sae.training_loss(x_scaled, self.dead_mask(), sparsity_scale)
        if not torch.isfinite(parts.loss):
            raise UserError(
                f"SAE {self.files.name}: the loss became {parts.loss.item()} at step {self.step}; "
                "lower --lr or check the store for extreme values"
            )
        self.optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        self.sae.remove_parallel_decoder_grad()
        self.optimizer.step()
        self.sae.normalise_decoder()
        self.samples_since_fired += len(x)
        self.samples_since_fired[parts.fired] = 0
        if cfg.resample_every and (self.step + 1) % cfg.resample_every == 0:
            self.resample_dead(x_scaled, parts.x_hat)
        variance = (x_scaled - x_scaled.mean(dim=0)).pow(2).sum(dim=1).mean()
        self.last = {
            "loss": parts.loss.item(),
            "mse": parts.mse.item(),
            "aux": parts.aux.item(),
            "sparsity": parts.sparsity.item(),
            "fvu": (parts.mse / variance.clamp_min(1e-12)).item(),
            "l0": parts.l0,
            "dead_in_training": float(self.dead_mask().float().mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.step += 1

    @torch.no_grad()
    def resample_dead(self, x_scaled: torch.Tensor, x_hat: torch.Tensor) -> int:
        """Point each dead latent at a batch input it reconstructs badly (Anthropic's resampling).

        Inputs are drawn with probability proportional to their squared error; the decoder row
        becomes the unit residual, the encoder column the same at 0.2x the alive columns' mean
        norm; the latents' Adam moments restart from zero. Returns the number resampled.
        """
        dead = self.dead_mask().nonzero().flatten()
        if len(dead) == 0:
            return 0
        residual = (x_scaled - x_hat).float()
        weights = residual.pow(2).sum(dim=1)
        if not weights.sum() > 0:
            return 0
        generator = torch.Generator(device=weights.device).manual_seed(self.cfg.seed * 1_000_003 + self.step)
        chosen = torch.multinomial(weights, len(dead), replacement=True, generator=generator)
        directions = residual[chosen] / residual[chosen].norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = ~self.dead_mask()
        enc_norm = self.sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        self.sae.W_dec[dead] = directions
        self.sae.W_enc[:, dead] = directions.t() * 0.2 * enc_norm
        self.sae.b_enc[dead] = 0.0
        for param, index in (
            (self.sae.W_dec, (dead,)),
            (self.sae.W_enc, (slice(None), dead)),
            (self.sae.b_enc, (dead,)),
        ):
            for moment in ("exp_avg", "exp_avg_sq"):
                self.optimizer.state[param][moment][index] = 0.0
        self.samples_since_fired[dead] = 0
        return len(dead)

    # -- persistence -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "schema_version": SCHEMA_VERSION,
            "train_config": _plain(self.cfg.identity()),
            "step": self.step,
            "sae_config": self.sae.cfg.to_dict(),
            "model": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samples_since_fired": self.samples_since_fired,
            "heldout_curve": self.heldout_curve,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.sae.W_enc.device, weights_only=True)
        if state["train_config"] != _plain(self.cfg.identity()):
            raise UserError(
                f"{self.checkpoint_path} was written with other settings; re-run with the same ones, "
                f"or delete {self.files.dir} to start over"
            )
        rebuilt = ARCHITECTURES[self.cfg.arch](config_from_dict(state["sae_config"])).to(self.sae.W_enc.device)
        rebuilt.load_state_dict(state["model"])
        self.sae = rebuilt
        self.optimizer = _adam(rebuilt, self.cfg.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        self.samples_since_fired = state["samples_since_fired"]
        self.heldout_curve = [(int(step), float(fvu)) for step, fvu in state["heldout_curve"]]
        self.step = int(state["step"])
        self._truncate_log()
        return True

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint, so a resumed log reads like one run."""
        path = self.files.train_log
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= self.step]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def append_log(self, samples_per_s: float) -> None:
        record = {"schema_version": SCHEMA_VERSION, "step": self.step, **self.last, "samples_per_s": samples_per_s}
        with open(self.files.train_log, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def probe_heldout(self, probe: HeldOutProbe) -> None:
        self.last["heldout_fvu"] = probe.fvu(self.sae)
        self.heldout_curve.append((self.step, self.last["heldout_fvu"]))

    def finish(self) -> Path:
        best_step, best_fvu = min(self.heldout_curve, key=lambda point: point[1], default=(self.step, None))
        training = {
            **self.cfg.to_dict(),
            **self.meta,
            "trained_steps": self.step,
            "heldout_best": {"step": best_step, "fvu": best_fvu},
        }
        self.sae.save_pretrained(self.files.dir, extra={"training": training})
        self.checkpoint_path.unlink(missing_ok=True)
        for warning in self.warnings():
            log.warning("warning: %s: %s", self.cfg.name, warning)
        return self.files.dir

    def warnings(self) -> list[str]:
        """What the run's own record says went wrong, each with what to change."""
        found = []
        if self.total_steps <= self.cfg.warmup_steps:
            found.append(
                f"the run ended inside its learning-rate warm-up ({self.total_steps} steps of a "
                f"{self.cfg.warmup_steps}-step warm-up); lower --warmup-steps or --batch-size, or raise --epochs"
            )
        dead = self.last.get("dead_in_training", 0.0)
        if dead > DEAD_WARNING:
            found.append(
                f"{dead:.0%} of the latents are dead in training (no activation in the last {self.dead_window:,} "
                "inputs); use a smaller --expansion, or embed more images"
            )
        if self.heldout_curve:
            best_step, best = min(self.heldout_curve, key=lambda point: point[1])
            final = self.heldout_curve[-1][1]
            if final > best + max(0.01, 0.05 * best):
                found.append(
                    f"held-out FVU rose from {best:.3f} at step {best_step} to {final:.3f} at the end: the SAE "
                    f"memorises its training images; train about {best_step} steps (--steps {best_step})"
                )
        return found


# -- the loop ------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """As it reads back from JSON (tuples become lists), so stored and current settings compare."""
    return json.loads(json.dumps(obj))


def _is_finished(files: SAEFiles, cfg: TrainConfig) -> bool:
    if not files.weights.is_file() or not files.is_trained:
        return False
    training = read_json(files.config).get("training", {})
    stored = {k: training.get(k) for k in cfg.identity()}
    if stored != _plain(cfg.identity()):
        changed = sorted(k for k in stored if stored[k] != _plain(cfg.identity())[k])
        raise UserError(
            f"SAE {cfg.name!r} already exists with other settings ({', '.join(changed)}); choose another --name "
            f"or delete {files.dir} to retrain it"
        )
    return True


def train(workspace: str | Path | Workspace, cfg: TrainConfig) -> Path:
    """Train one SAE; returns its directory `W/saes/NAME`. Re-running resumes or returns at once."""
    return train_many(workspace, [cfg])[0]


def train_many(workspace: str | Path | Workspace, configs: Sequence[TrainConfig], progress: bool = True) -> list[Path]:
    """Train SAEs, grouping those that share a data stream so each batch is read once."""
    ws = Workspace.of(workspace)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UserError(f"SAE names must be unique, got {names}")
    groups: dict[tuple, list[TrainConfig]] = {}
    for cfg in configs:
        groups.setdefault(cfg.stream_key(), []).append(cfg)
    for group in groups.values():
        _train_group(ws, group, progress)
    return [ws.sae(c.name).dir for c in configs]


def _train_group(ws: Workspace, configs: list[TrainConfig], progress: bool) -> None:
    from clipatlas.store import Store

    store = Store.open(ws.root)
    first = configs[0]
    train_rows, eval_rows = split_rows(len(store), first.eval_fraction, first.seed)
    resolved = []
    for cfg in configs:
        cfg, derived = cfg.derived(len(train_rows), store.d)
        if not _is_finished(ws.sae(cfg.name, must_exist=False), cfg):
            log.info("%s: %s", cfg.name, cfg.describe(len(train_rows), derived))
            resolved.append(cfg)
    pending = resolved
    if not pending:
        return
    first = pending[0]
    device = resolve_device(first.device)
    sample = sample_for_init(store, train_rows, first.seed)
    meta = {"n_train": int(len(train_rows)), "n_eval": int(len(eval_rows)), "store_count": len(store)}
    runs = []
    for cfg in pending:
        total = cfg.total_steps(len(train_rows))
        dead_window = cfg.dead_window or min(len(train_rows), 10_000_000)
        run = Run(
            cfg,
            ws.sae(cfg.name, must_exist=False),
            build_sae(cfg, sample, store).to(device),
            total,
            dead_window,
            meta,
        )
        if not run.load_checkpoint():
            run.files.dir.mkdir(parents=True, exist_ok=True)
            run.files.train_log.unlink(missing_ok=True)
        runs.append(run)
    stream = BatchStream(store, train_rows, first.batch_size, first.seed, str(device))
    probe = HeldOutProbe(store, eval_rows, str(device))
    _loop(runs, stream, probe, autocast=device.type == "cuda", progress=progress)


def _loop(runs: list[Run], stream: BatchStream, probe: HeldOutProbe, autocast: bool, progress: bool) -> None:
    total = max(r.total_steps for r in runs)
    # About 50 points of the held-out curve per run, on logged steps.
    log_every = runs[0].cfg.log_every
    probe_every = log_every * max(1, total // (50 * log_every))
    start = min(r.step for r in runs)
    names = ", ".join(r.cfg.name for r in runs)
    bar = tqdm(total=total, initial=start, desc=f"train {names}", unit="step", disable=not progress, dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), start
    for step in range(start, total):
        x = stream.batch(step)
        active = [r for r in runs if r.step == step and step < r.total_steps]
        for run in active:
            run.train_step(x, autocast)
        if (step + 1) % log_every == 0 or step + 1 == total:
            now = time.perf_counter()
            rate = (step + 1 - last_step) * len(x) / max(now - last_time, 1e-9)
            for run in active:
                if (step + 1) % probe_every == 0 or run.step == run.total_steps:
                    run.probe_heldout(probe)
                run.append_log(rate)
            last_time, last_step = time.perf_counter(), step + 1  # the probe's time is not training time
            head = active[0].last if active else runs[0].last
            bar.set_postfix(
                fvu=f"{head['fvu']:.3f}", l0=f"{head['l0']:.1f}", dead_in_training=f"{head['dead_in_training']:.1%}"
            )
        if (step + 1) % runs[0].cfg.checkpoint_every == 0:
            for run in active:
                if run.step < run.total_steps:
                    run.save_checkpoint()
        for run in active:
            if run.step == run.total_steps:
                run.finish()
        bar.update(1)
    bar.close()
