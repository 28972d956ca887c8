"""Every setting of an SAE and of its training, in import-light frozen dataclasses.

An architecture's config holds its hyper-parameters (`SAEConfig.hyperparameters()`); training
fills the shared fields (d_in, d_sae, input_scale, store, encoder) from the store. `TrainConfig`
nests one architecture config (`sae`) beside the trainer's own settings. The command line and
sweep files address both through one flat namespace (`TrainConfig.from_settings`), so a new
field here reaches the Python API, `clipatlas train --FIELD` and sweeps at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from clipatlas._config import build, init_fields
from clipatlas.errors import UserError


class SAEFormatError(UserError):
    """An SAE directory is missing files or holds weights that do not match its config."""


# -- configs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SAEConfig:
    """What every architecture shares. Training fills these fields from the store; the fields
    a subclass adds are its hyper-parameters (`hyperparameters()`), settable from the Python
    API, `clipatlas train` flags and sweep files alike."""

    arch: ClassVar[str] = ""
    d_in: int = 0
    """Input width (set by training from the store)."""
    d_sae: int = 0
    """Number of latents (set by training: d_in x expansion)."""
    input_scale: float = 1.0
    """Inputs are multiplied by this so the training data's mean squared norm is d_in (set by training)."""
    store: str | None = None
    """The store the SAE was trained on (set by training)."""
    encoder: str | None = None
    """The encoder of that store (set by training)."""

    @classmethod
    def hyperparameters(cls) -> tuple[str, ...]:
        """The architecture's own settings: its fields beyond the shared ones."""
        shared = {f.name for f in dataclasses.fields(SAEConfig)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in shared)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **dataclasses.asdict(self)}

    def _require(self, condition: bool, message: str) -> None:
        if not condition:
            raise UserError(f"{self.arch}: {message}")


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    """ReLU + L1 (the seed system's SAE); the L1 term optionally weighs each latent by ||W_dec[i]||."""

    arch: ClassVar[str] = "relu"
    l1: float = 5.0
    """Coefficient of the L1 sparsity penalty."""
    l1_decoder_norm: bool = True
    """Weigh each latent's L1 term by the norm of its decoder row."""

    def __post_init__(self):
        self._require(self.l1 >= 0 and math.isfinite(self.l1), f"l1 must be >= 0, got {self.l1}")


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """Keep the k largest pre-activations; AuxK lets dead latents model the residual."""

    arch: ClassVar[str] = "topk"
    k: int | None = None
    """Active latents per input, batchtopk: on average over a batch (default: derived from the store at training)."""
    k_aux: int = 512
    """Dead latents that reconstruct the residual in the AuxK loss (0: no AuxK)."""
    aux_weight: float = 1 / 32
    """Weight of the AuxK loss."""
    aux_rows: int = 512
    """Inputs per batch the AuxK loss is estimated on: the first aux_rows of the shuffled batch (0: all).
    AuxK costs aux_rows x k_aux x d_in per step; with many dead latents it would otherwise cost more than the step."""

    def __post_init__(self):
        self._require(self.k is None or self.k >= 1, f"k must be at least 1, got {self.k}")
        self._require(self.k_aux >= 0, f"k_aux must be >= 0, got {self.k_aux}")
        self._require(self.aux_weight >= 0, f"aux_weight must be >= 0, got {self.aux_weight}")
        self._require(self.aux_rows >= 0, f"aux_rows must be >= 0, got {self.aux_rows}")


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """Keep the k*B largest pre-activations of a batch; inference uses the learned threshold."""

    arch: ClassVar[str] = "batchtopk"
    threshold_momentum: float = 0.95
    """Momentum of the running inference threshold (the smallest kept activation per batch)."""

    def __post_init__(self):
        super().__post_init__()
        self._require(
            0 <= self.threshold_momentum < 1, f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}"
        )


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    """Per-latent learned thresholds, trained with straight-through estimators and an L0 penalty."""

    arch: ClassVar[str] = "jumprelu"
    l1: float = 0.05
    """Coefficient of the L0 sparsity penalty."""
    bandwidth: float = 0.05
    """Width of the rectangle kernel of the threshold's straight-through gradient."""
    init_threshold: float = 0.05
    """Initial threshold of every latent."""

    def __post_init__(self):
        self._require(self.l1 >= 0 and math.isfinite(self.l1), f"l1 must be >= 0, got {self.l1}")
        self._require(self.bandwidth > 0, f"bandwidth must be positive, got {self.bandwidth}")
        self._require(self.init_threshold > 0, f"init_threshold must be positive, got {self.init_threshold}")


ARCH_CONFIGS: dict[str, type[SAEConfig]] = {
    cls.arch: cls for cls in (ReLUConfig, TopKConfig, BatchTopKConfig, JumpReLUConfig)
}


def config_class_of(arch: Any) -> type[SAEConfig]:
    if arch not in ARCH_CONFIGS:
        raise SAEFormatError(f"unknown SAE architecture {arch!r}; choose one of {', '.join(ARCH_CONFIGS)}")
    return ARCH_CONFIGS[arch]


def config_from_dict(data: Mapping[str, Any]) -> SAEConfig:
    """Rebuild a config from a cfg.json, which also holds other keys (`training`, `schema_version`)."""
    config_class = config_class_of(data.get("arch"))
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in data.items() if k in names})


def make_config(arch: str, **fields: Any) -> SAEConfig:
    """The config of architecture `arch`; a field it does not have is refused with one line."""
    return build(config_class_of(arch), fields, arch)


def all_hyperparameters() -> dict[str, list[type[SAEConfig]]]:
    """{hyper-parameter: the architectures that take it}, in declaration order."""
    found: dict[str, list[type[SAEConfig]]] = {}
    for config_class in ARCH_CONFIGS.values():
        for name in config_class.hyperparameters():
            found.setdefault(name, []).append(config_class)
    return found


# -- training ------------------------------------------------------------------------------
def derived_settings(n_train: int, d_in: int) -> dict[str, Any]:
    """Training settings for a store of `n_train` training rows of width `d_in` (measured on small
    real stores and the 1.4M-image seed run; bench/RESULTS.md "Training defaults"):

    * batch: the power of two nearest n_train / 8, within [64, 4096] (a small store needs steps);
    * epochs: 100,000 / n_train within [10, 50] (about 100k samples seen on a small store, 10 passes on a large one);
    * expansion: the largest power of two <= n_train / d_in, within [1/16, 16] (no more latents than
      training images, or most of them stay dead);
    * k: 16 below 100,000 training rows, else 32;
    * lr: 1e-3 below 100,000 training rows (few steps), else 4e-4;
    * warm-up: a tenth of the steps, at most 100.
    """
    large = n_train >= 100_000
    return {
        "batch_size": int(min(4096, max(64, 2 ** round(math.log2(max(n_train / 8, 1)))))),
        "epochs": float(min(50, max(10, round(100_000 / max(n_train, 1))))),
        "expansion": float(min(16, max(1 / 16, 2.0 ** math.floor(math.log2(max(n_train, 1) / d_in))))),
        "k": 32 if large else 16,
        "lr": 4e-4 if large else 1e-3,
    }


def warmup_for(total_steps: int) -> int:
    return int(min(100, max(1, total_steps // 10)))


# Settings that say how a run goes, not what it computes: a finished SAE or a checkpoint made
# with other values of these is still the same run.
RUN_CONDITIONS = ("device", "checkpoint_every", "log_every")
# What a finished run records beside `TrainConfig.to_dict()` in the `training` entry of cfg.json.
RUN_RECORD = ("n_train", "n_eval", "store_count", "trained_steps", "heldout_best")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the architecture's config (`sae`) and how to train it."""

    name: str = "sae"
    """SAE name: its folder is W/saes/NAME."""
    sae: SAEConfig = field(default_factory=TopKConfig)
    """The architecture and its hyper-parameters, e.g. TopKConfig(k=32) or ReLUConfig(l1=5.0)."""
    expansion: float | None = None
    """Latents per input dimension, d_sae = round(d_in x expansion) (default: derived from the store)."""
    lr: float | None = None
    """Adam learning rate (default: derived from the store)."""
    batch_size: int | None = None
    """Inputs per step (default: derived from the store)."""
    steps: int | None = None
    """Training steps (default: `epochs` passes over the training split)."""
    epochs: float | None = None
    """Passes over the training split, used when `steps` is not given (default: derived from the store)."""
    seed: int = 0
    """Seed of the initialisation, the held-out split and the batch order."""
    device: str = "auto"
    """cpu, cuda[:N], or auto (the GPU when there is one)."""
    warmup_steps: int | None = None
    """Learning-rate warm-up steps (default: derived from the store)."""
    decay_fraction: float = 0.2
    """The learning rate decays linearly to zero over this last fraction of the steps."""
    l1_warmup_fraction: float = 0.05
    """relu, jumprelu: the sparsity penalty ramps up over this first fraction of the steps."""
    eval_fraction: float = 0.1
    """Fraction of the store held out for evaluation."""
    dead_window: int | None = None
    """Inputs seen without firing before a latent counts as dead (default: min(training rows, 10M))."""
    b_dec_init: Literal["mean", "geometric_median"] = "mean"
    """Initial decoder bias: the mean or the geometric median of the training data."""
    resample_every: int = 0
    """relu: every N steps, re-point dead latents at badly reconstructed inputs (0: off)."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""
    log_every: int = 10
    """Steps between lines of train_log.jsonl."""

    def __post_init__(self):
        if not isinstance(self.sae, SAEConfig) or type(self.sae) is SAEConfig:
            raise UserError(f"TrainConfig.sae is an architecture config such as TopKConfig(k=32), got {self.sae!r}")
        for name in ("batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.expansion is not None and not (self.expansion > 0 and math.isfinite(self.expansion)):
            raise UserError(f"--expansion must be positive, got {self.expansion}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise UserError(f"--epochs must be positive, got {self.epochs}")
        if not 0 < self.eval_fraction < 1:
            raise UserError(f"--eval-fraction must be between 0 and 1, got {self.eval_fraction}")
        if self.resample_every < 0:
            raise UserError(f"--resample-every must be 0 (off) or positive, got {self.resample_every}")
        if self.b_dec_init not in ("mean", "geometric_median"):
            raise UserError(f"--b-dec-init must be 'mean' or 'geometric_median', got {self.b_dec_init!r}")

    @property
    def arch(self) -> str:
        return self.sae.arch

    # -- one flat namespace for the command line and sweeps -----------------------------------
    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """From flat settings: `arch`, the architecture's hyper-parameters, the trainer's fields.

        A hyper-parameter of another architecture (`k` for relu) or an unknown name is refused
        with one line that lists what applies.
        """
        settings = dict(settings)
        config_class = config_class_of(settings.pop("arch", cls().arch))
        hyper = config_class.hyperparameters()
        trainer = [f.name for f in init_fields(cls) if f.name != "sae"]
        misplaced = sorted(k for k in settings if k in all_hyperparameters() and k not in hyper)
        if misplaced:
            raise UserError(
                f"{', '.join(misplaced)} does not apply to arch {config_class.arch} "
                f"(it takes {', '.join(hyper)}); drop it or choose another arch"
            )
        unknown = sorted(set(settings) - set(hyper) - set(trainer))
        if unknown:
            raise UserError(
                f"unknown training setting(s) {', '.join(unknown)}; known: arch, "
                f"{', '.join(trainer)}, and per arch {', '.join(all_hyperparameters())}"
            )
        sae = config_class(**{k: v for k, v in settings.items() if k in hyper})
        return cls(sae=sae, **{k: v for k, v in settings.items() if k in trainer})

    def to_dict(self) -> dict[str, Any]:
        """The trainer's fields and, under `sae`, the architecture and its hyper-parameters."""
        trainer = {f.name: getattr(self, f.name) for f in init_fields(self) if f.name != "sae"}
        hyper = {name: getattr(self.sae, name) for name in self.sae.hyperparameters()}
        return {**trainer, "sae": {"arch": self.arch, **hyper}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; reads the `training` entry of a cfg.json (its `RUN_RECORD` is left out)."""
        data = {k: v for k, v in data.items() if k not in RUN_RECORD}
        return cls.from_settings({**data.pop("sae", {}), **data})

    def identity(self) -> dict[str, Any]:
        """What the trained weights depend on (everything but `RUN_CONDITIONS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONDITIONS}

    def derived(self, n_train: int, d_in: int) -> tuple[TrainConfig, list[str]]:
        """This config with every setting left unset (None) chosen from the store's size, and
        the names of those it chose (see `derived_settings` for the rule)."""
        chosen = derived_settings(n_train, d_in)
        missing = {k: v for k, v in chosen.items() if k != "k" and getattr(self, k) is None}
        if self.steps is not None:
            missing.pop("epochs", None)
        sae = self.sae
        if hasattr(sae, "k") and sae.k is None:
            sae = dataclasses.replace(sae, k=chosen["k"])
            missing["k"] = chosen["k"]
        resolved = dataclasses.replace(self, sae=sae, **{k: v for k, v in missing.items() if k != "k"})
        if resolved.warmup_steps is None:
            resolved = dataclasses.replace(resolved, warmup_steps=warmup_for(resolved.total_steps(n_train)))
            missing["warmup_steps"] = resolved.warmup_steps
        return resolved, sorted(missing)

    def describe(self, n_train: int, derived: list[str]) -> str:
        """One line of the settings that matter, derived ones starred."""
        shown = {
            "batch": ("batch_size", self.batch_size),
            "epochs": ("epochs", None if self.steps is not None else format(self.epochs, "g")),
            "steps": ("steps", self.total_steps(n_train)),
            "expansion": ("expansion", format(self.expansion, "g")),
            "k": ("k", getattr(self.sae, "k", None)),
            "lr": ("lr", format(self.lr, "g")),
            "warm-up": ("warmup_steps", self.warmup_steps),
        }
        parts = [
            f"{label} {value}{'*' if field in derived else ''}"
            for label, (field, value) in shown.items()
            if value is not None
        ]
        return f"{n_train:,} training rows -> {', '.join(parts)} (* derived from the store's size; flags override)"

    def d_sae(self, d_in: int) -> int:
        return max(1, round(d_in * self.expansion))

    def stream_key(self) -> tuple:
        """Runs with equal keys see the same batches in the same order and can train together."""
        return (self.batch_size, self.steps, self.epochs, self.seed, self.eval_fraction, self.device)

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))


@dataclass(frozen=True)
class EvalConfig:
    """`clipatlas eval`: an SAE's metrics on the rows held out from its training."""

    batch_size: int = 4096
    """Held-out rows per SAE call."""
    device: str = "auto"
    """cpu, cuda[:N], or auto (the GPU when there is one)."""
