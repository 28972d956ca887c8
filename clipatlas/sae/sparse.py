"""Sparse gather of encoder pre-activations with a sparse backward pass.

For TopK-style SAEs only k of the d_sae pre-activations per input reach the loss, so the
gradients of W_enc, b_enc and b_dec are sparse products of cost B*k*d instead of the two
dense B*d*d_sae products autograd would run. The dense encoder product is computed once,
without autograd, and is the only dense matmul of a training step.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _argsort(values: torch.Tensor) -> torch.Tensor:
    # torch's CPU sort of int64 is ~100x slower than numpy's radix sort at these sizes.
    if values.device.type == "cpu":
        return torch.from_numpy(np.argsort(values.numpy(), kind="stable"))
    return values.argsort()


def _by_latent(indices: torch.Tensor, grad: torch.Tensor, n_latents: int) -> torch.Tensor:
    """CSR matrix (n_latents, B) holding grad[b, j] at (indices[b, j], b): G transposed."""
    batch, k = indices.shape
    flat = indices.reshape(-1)
    order = _argsort(flat)
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)[order]
    crow = torch.zeros(n_latents + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n_latents).cumsum(0)
    with warnings.catch_warnings():
        # CSR tensors are "beta" in torch; CSR @ dense, all we use, has long been stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            crow, rows, grad.reshape(-1)[order], size=(n_latents, batch), check_invariants=False
        )


class _GatherPreactivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_centred, b_dec, W_enc, b_enc, indices, values):
        ctx.save_for_backward(x_centred, W_enc, indices)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        x_centred, W_enc, indices = ctx.saved_tensors
        n_latents = W_enc.shape[1]
        grad_values = grad_values.contiguous().to(W_enc.dtype)
        grad_b_enc = torch.zeros(n_latents, dtype=W_enc.dtype, device=W_enc.device)
        grad_b_enc.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
        # pre = (x - b_dec) @ W_enc + b_enc, so dL/db_dec = -W_enc @ (dL/db_enc): no per-input work.
        grad_b_dec = -(W_enc @ grad_b_enc) if ctx.needs_input_grad[1] else None
        grad_W_enc = None
        if ctx.needs_input_grad[2]:
            # dL/dW_enc = x^T G, computed as (G^T x)^T with G^T sparse: B*k*d work.
            grad_W_enc = (_by_latent(indices, grad_values, n_latents) @ x_centred.to(W_enc.dtype)).t()
        return None, grad_b_dec, grad_W_enc, grad_b_enc, None, None


def gather_preactivations(
    x_centred: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """pre[b, indices[b]] where pre = x_centred @ W_enc + b_enc and x_centred = x - b_dec.

    `pre` and `x_centred` are computed without autograd; the result is differentiable in
    b_dec, W_enc and b_enc through the sparse backward described above.
    """
    values = pre.gather(1, indices)
    if not torch.is_grad_enabled():
        return values
    return _GatherPreactivations.apply(x_centred, b_dec, W_enc, b_enc, indices, values)


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]]: the decoder product at B*k*d cost."""
    return torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
