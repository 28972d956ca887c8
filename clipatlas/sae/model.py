"""Sparse autoencoder architectures: one frozen config and one module per architecture.

Every SAE works internally on scaled inputs x_s = x * input_scale (the scale makes the mean
squared norm of the training data equal to d_in, so hyper-parameters transfer across
encoders); `encode` takes and `decode` returns the encoder's raw scale.

    pre = (x_s - b_dec) @ W_enc + b_enc        z = activation(pre)        x_s_hat = z @ W_dec + b_dec

Architectures register themselves in `ARCHITECTURES` by name; the training loop calls only
`training_loss`, so adding one means adding one config (clipatlas.sae.config) and one module here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clipatlas._io import SCHEMA_VERSION, atomic_path, atomic_write_json, read_json
from clipatlas.errors import UserError
from clipatlas.sae.config import (
    BatchTopKConfig,
    JumpReLUConfig,
    ReLUConfig,
    SAEConfig,
    SAEFormatError,
    TopKConfig,
    config_from_dict,
)
from clipatlas.sae.sparse import gather_preactivations_parts, sparse_decode, sparse_decode_parts
from clipatlas.sae.topk import row_topk
from clipatlas.workspace import SAE_CONFIG, SAE_WEIGHTS, SAEFiles


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor
    mse: torch.Tensor  # sum over dimensions, mean over the batch, in the scaled space
    aux: torch.Tensor
    sparsity: torch.Tensor
    x_hat: torch.Tensor  # scaled space, detached
    fired: torch.Tensor  # (d_sae,) bool: latents active on at least one input of the batch
    l0: float


# -- the shared module -----------------------------------------------------------------------
class SAE(nn.Module):
    """Base class: parameters, scaling, (de)serialisation. Subclasses define the activation."""

    config_class: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.d_in < 1 or cfg.d_sae < 1:
            raise UserError(f"an SAE needs d_in >= 1 and d_sae >= 1, got {cfg.d_in} and {cfg.d_sae}")
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder rows and the encoder as the decoder's transpose."""
        with torch.no_grad():
            W = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
            self.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.t())
            self.b_enc.zero_()
            self.b_dec.zero_()

    # -- public API (raw encoder scale) ----------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise UserError(
                f"expected inputs of shape (N, {self.cfg.d_in}), got {tuple(x.shape)}; "
                f"this SAE was trained on {self.cfg.encoder or 'another'} embeddings"
            )
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def preactivations(self, x_scaled: torch.Tensor) -> torch.Tensor:
        # The bias goes into the product's own (N, d_sae) buffer: a second one of that size cost the
        # atlas pass 0.1-0.3 s per 4,096 x 16,384 chunk in fresh pages (bench/RESULTS.md, atlas build).
        return ((x_scaled - self.b_dec) @ self.W_enc).add_(self.b_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Dense codes from pre-activations (inference)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes (N, d_sae) of raw-scale inputs (N, d_in)."""
        return self.activate(self.preactivations(self._check_input(x) * self.cfg.input_scale))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw-scale reconstruction (N, d_in) of dense codes (N, d_sae)."""
        z = z.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        return (z @ self.W_dec + self.b_dec) / self.cfg.input_scale

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """`decode` of codes given as `encode_sparse` returns them (index -1 = padding): B*m*d work."""
        values = values.to(device=self.W_dec.device, dtype=self.W_dec.dtype) * (indices >= 0)
        return (sparse_decode(indices.clamp_min(0), values, self.W_dec) + self.b_dec) / self.cfg.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, values), each (N, m): the active latents of each input, strongest first.

        m is the largest number of active latents in the batch; shorter rows are padded with
        index -1 and value 0.
        """
        z = self.encode(x)
        m = max(int((z != 0).sum(dim=1).max()), 1) if len(z) else 1
        values, indices = z.topk(min(m, z.shape[1]), dim=1)
        indices = indices.masked_fill(values == 0, -1)
        return indices, values

    # -- training --------------------------------------------------------------------------
    def training_loss(self, x_scaled: torch.Tensor, dead: torch.Tensor, sparsity_scale: float) -> LossParts:
        raise NotImplementedError

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each decoder row: it would only change its norm."""
        if self.W_dec.grad is None:
            return
        # Row-wise dot products as a batched matmul and an in-place update: no (d_sae, d_in) temporaries.
        parallel = torch.bmm(self.W_dec.grad.unsqueeze(1), self.W_dec.unsqueeze(2)).squeeze(2)
        self.W_dec.grad.addcmul_(parallel, self.W_dec, value=-1)

    def _dense_loss(self, x_scaled: torch.Tensor, z: torch.Tensor, sparsity: torch.Tensor) -> LossParts:
        x_hat = z @ self.W_dec + self.b_dec
        mse = (x_hat - x_scaled).pow(2).sum(dim=1).mean()
        active = z.detach() != 0
        zero = torch.zeros((), device=z.device)
        return LossParts(
            mse + sparsity,
            mse,
            zero,
            sparsity,
            x_hat.detach(),
            active.any(dim=0),
            float(active.sum(dim=1).float().mean()),
        )

    # -- serialisation ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write cfg.json and sae.safetensors (atomically) into directory `path`.

        `extra` (e.g. the training config) is stored in cfg.json beside the model config.
        """
        from safetensors.torch import save_file

        files = SAEFiles(Path(path))
        files.dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(files.weights) as tmp:
            save_file(tensors, str(tmp), metadata={"schema_version": str(SCHEMA_VERSION), "arch": self.cfg.arch})
        atomic_write_json(files.config, {**(extra or {}), **self.cfg.to_dict()})
        return files.dir

    @staticmethod
    def from_pretrained(
        path_or_hub_id: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
    ) -> SAE:
        """Load an SAE saved by `save_pretrained` from a directory or a Hugging Face hub repo id."""
        from safetensors.torch import load_file

        files = _resolve_sae_files(path_or_hub_id)
        cfg = config_from_dict(read_json(files.config))
        if not files.weights.is_file():
            raise SAEFormatError(
                f"{files.dir} has {SAE_CONFIG} but no {SAE_WEIGHTS}; the training run did not finish — re-run it"
            )
        sae = ARCHITECTURES[cfg.arch](cfg)
        state = load_file(str(files.weights))
        try:
            sae.load_state_dict(state)
        except RuntimeError as exc:
            raise SAEFormatError(f"{files.weights} does not match its {SAE_CONFIG} ({exc})") from exc
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        return sae.to(device=device, dtype=dtype)


def _resolve_sae_files(path_or_hub_id: str | Path) -> SAEFiles:
    files = SAEFiles(Path(path_or_hub_id).expanduser())
    if files.is_trained:
        return files
    if files.dir.exists() or str(path_or_hub_id).count("/") != 1:
        raise SAEFormatError(
            f"no SAE at {path_or_hub_id} (expected {SAE_CONFIG} and {SAE_WEIGHTS}); "
            "train one with: clipatlas train -w WORKSPACE --name NAME"
        )
    from huggingface_hub import snapshot_download

    try:
        return SAEFiles(Path(snapshot_download(str(path_or_hub_id), allow_patterns=[SAE_CONFIG, SAE_WEIGHTS])))
    except Exception as exc:  # the hub raises many types: offline, missing repo, auth
        raise SAEFormatError(f"cannot fetch SAE {path_or_hub_id!r} from the Hugging Face hub ({exc})") from exc


# -- architectures ---------------------------------------------------------------------------
class ReLUSAE(SAE):
    config_class = ReLUConfig

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def training_loss(self, x_scaled, dead, sparsity_scale):
        z = torch.relu(self.preactivations(x_scaled))
        weights = self.W_dec.norm(dim=1) if self.cfg.l1_decoder_norm else 1.0
        l1 = (z * weights).sum(dim=1).mean()
        return self._dense_loss(x_scaled, z, self.cfg.l1 * sparsity_scale * l1)


class TopKSAE(SAE):
    config_class = TopKConfig

    def __init__(self, cfg: TopKConfig):
        if cfg.k is None:
            raise UserError(f"{cfg.arch}: k is not set; give k (training derives it from the store when left unset)")
        super().__init__(cfg)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = row_topk(pre, min(self.cfg.k, pre.shape[1]))
        return torch.zeros_like(pre).scatter_(1, indices, torch.relu(values))

    def encode_sparse(self, x):
        pre = self.preactivations(self._check_input(x) * self.cfg.input_scale)
        values, indices = row_topk(pre, min(self.cfg.k, pre.shape[1]))  # the same choice as `activate`
        values = torch.relu(values)
        return indices.masked_fill(values == 0, -1), values

    def _select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B, m), keep (B, m) bool) of the latents that fire during training."""
        values, indices = pre.topk(min(self.cfg.k, pre.shape[1]), dim=1)
        return indices, values > 0

    def training_loss(self, x_scaled, dead, sparsity_scale):
        rows = slice(0, self.cfg.aux_rows or None)  # batches are shuffled: the first rows are a random sample
        with torch.no_grad():
            x_centred = x_scaled - self.b_dec
            pre = torch.addmm(self.b_enc, x_centred, self.W_enc)
            indices, keep = self._select(pre)
            aux_indices = self._aux_select(pre[rows], dead)
        # The main and the AuxK codes share one sparse backward and one decoder pass.
        parts = [indices] if aux_indices is None else [indices, aux_indices]
        gathered = gather_preactivations_parts(x_centred, self.b_dec, self.W_enc, self.b_enc, pre, parts)
        codes = [(indices, gathered[0] * keep)] + [(aux_indices, torch.relu(v)) for v in gathered[1:]]
        decoded = sparse_decode_parts(codes, self.W_dec)
        x_hat = decoded[0] + self.b_dec
        mse = (x_hat - x_scaled).pow(2).sum(dim=1).mean()
        zero = torch.zeros((), device=pre.device)
        aux = zero if aux_indices is None else _aux_loss(decoded[1], (x_scaled - x_hat).detach()[rows])
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=pre.device)
        fired[indices[keep]] = True
        return LossParts(
            mse + self.cfg.aux_weight * aux,
            mse,
            aux,
            zero,
            x_hat.detach(),
            fired,
            float(keep.sum(dim=1).float().mean()),
        )

    def _aux_select(self, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor | None:
        """AuxK (OpenAI, Gao et al. 2024): the k_aux strongest dead latents of each row, or None."""
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.k_aux == 0:
            return None
        # top-k among the dead columns only: no masked copy of the whole (B, F) matrix
        dead_columns = dead.nonzero().flatten()
        _, local = pre.index_select(1, dead_columns).topk(min(self.cfg.k_aux, n_dead), dim=1)
        return dead_columns[local]


def _aux_loss(residual_hat: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """How badly the dead latents reconstruct the residual, normalised by the residual's own energy so
    the weight means the same at any FVU."""
    return (residual_hat - residual).pow(2).sum(dim=1).mean() / residual.pow(2).sum(dim=1).mean().clamp_min(1e-12)


class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        # Negative until the first training batch sets it (a threshold that keeps nothing out).
        self.register_buffer("threshold", torch.full((), -1.0))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if float(self.threshold) < 0:
            return super().activate(pre)
        return pre * (pre > self.threshold)

    def encode_sparse(self, x):
        return SAE.encode_sparse(self, x)

    def _select(self, pre):
        batch = pre.shape[0]
        flat = torch.relu(pre).flatten()
        kept = flat.topk(min(self.cfg.k * batch, flat.numel())).values
        cutoff = kept[-1]
        per_row = (pre >= cutoff).sum(dim=1) if cutoff > 0 else (pre > 0).sum(dim=1)
        width = max(int(per_row.max()), 1)
        values, indices = pre.topk(min(width, pre.shape[1]), dim=1)
        keep = (values >= cutoff) & (values > 0)
        if self.training:
            self._update_threshold(kept[kept > 0])
        return indices, keep

    @torch.no_grad()
    def _update_threshold(self, kept_positive: torch.Tensor) -> None:
        if kept_positive.numel() == 0:
            return
        batch_min = kept_positive.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(batch_min)
        else:
            m = self.cfg.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * batch_min)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - t); the threshold's gradient uses a rectangle kernel (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_threshold = (-(threshold / bw) * _rectangle((pre - threshold) / bw) * grad).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre - t), counted by the L0 penalty; differentiable in t only, through the same kernel."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_threshold = (-(1.0 / bw) * _rectangle((pre - threshold) / bw) * grad).sum(dim=0)
        return torch.zeros_like(pre), grad_threshold, None


class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.init_threshold)))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.log_threshold.exp())

    def training_loss(self, x_scaled, dead, sparsity_scale):
        pre = torch.relu(self.preactivations(x_scaled))
        threshold = self.log_threshold.exp()
        z = _JumpReLU.apply(pre, threshold, self.cfg.bandwidth)
        l0 = _Step.apply(pre, threshold, self.cfg.bandwidth).sum(dim=1).mean()
        return self._dense_loss(x_scaled, z, self.cfg.l1 * sparsity_scale * l0)


ARCHITECTURES: dict[str, type[SAE]] = {
    cls.config_class.arch: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)
}
