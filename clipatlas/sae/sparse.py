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


def _by_latent(cols: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, n_latents: int, n_rows: int):
    """CSR matrix (n_latents, n_rows) holding grad[i] at (cols[i], rows[i]): G transposed."""
    order = _argsort(cols)
    crow = torch.zeros(n_latents + 1, dtype=torch.int64, device=cols.device)
    crow[1:] = torch.bincount(cols, minlength=n_latents).cumsum(0)
    with warnings.catch_warnings():
        # CSR tensors are "beta" in torch; CSR @ dense, all we use, has long been stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, rows[order], grad[order], size=(n_latents, n_rows), check_invariants=False)


def _sparse_times_dense(sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """sparse @ dense into a fresh output: torch's CPU `@` first fills a zero matrix and copies it into
    the output (two passes over (rows, d)); with beta=0 the output's contents are ignored (documented)."""
    out = torch.empty(sparse.shape[0], dense.shape[1], dtype=dense.dtype, device=dense.device)
    return torch.addmm(out, sparse, dense, beta=0, out=out)


class _GatherPreactivations(torch.autograd.Function):
    """pre[rows[i], cols[i]] for flat (rows, cols); the backward is sparse (see the module docstring)."""

    @staticmethod
    def forward(ctx, x_centred, b_dec, W_enc, b_enc, rows, cols, values):
        ctx.save_for_backward(x_centred, W_enc, rows, cols)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        x_centred, W_enc, rows, cols = ctx.saved_tensors
        n_latents = W_enc.shape[1]
        grad_values = grad_values.contiguous().to(W_enc.dtype)
        grad_b_enc = torch.zeros(n_latents, dtype=W_enc.dtype, device=W_enc.device)
        grad_b_enc.index_add_(0, cols, grad_values)
        # pre = (x - b_dec) @ W_enc + b_enc, so dL/db_dec = -W_enc @ (dL/db_enc): no per-input work.
        grad_b_dec = -(W_enc @ grad_b_enc) if ctx.needs_input_grad[1] else None
        grad_W_enc = None
        if ctx.needs_input_grad[2]:
            # dL/dW_enc = x^T G, computed as (G^T x)^T with G^T sparse: (entries)*d work.
            by_latent = _by_latent(cols, rows, grad_values, n_latents, len(x_centred))
            grad_W_enc = _sparse_times_dense(by_latent, x_centred.to(W_enc.dtype)).t()
        return None, grad_b_dec, grad_W_enc, grad_b_enc, None, None, None


def gather_preactivations_parts(
    x_centred: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre: torch.Tensor,
    parts: list[torch.Tensor],
) -> list[torch.Tensor]:
    """`gather_preactivations` of several index matrices at once, part i (R_i, m_i) indexing the first
    R_i rows of `pre`: one sparse backward, so one dense W_enc gradient for all of them."""
    values = [pre[: len(indices)].gather(1, indices) for indices in parts]
    if not torch.is_grad_enabled():
        return values
    device = pre.device
    rows = torch.cat([torch.arange(len(ix), device=device).repeat_interleave(ix.shape[1]) for ix in parts])
    cols = torch.cat([ix.reshape(-1) for ix in parts])
    flat = _GatherPreactivations.apply(
        x_centred, b_dec, W_enc, b_enc, rows, cols, torch.cat([v.reshape(-1) for v in values])
    )
    return [part.view_as(v) for part, v in zip(flat.split([v.numel() for v in values]), values)]


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
    return gather_preactivations_parts(x_centred, b_dec, W_enc, b_enc, pre, [indices])[0]


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]]: the decoder product at B*k*d cost."""
    return torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")


class _DecodeParts(torch.autograd.Function):
    """embedding_bag's weighted sum of W_dec rows, rows[e] being the output row of entry e. The W_dec
    gradient is the CSR product of `_by_latent` (numpy's sort, MKL's multi-threaded product): torch's
    CPU backward of embedding_bag sorts the indices with its one-thread int64 sort and counts them in a
    serial pass, the slowest part of the decoder's backward at the bench's size (bench/RESULTS.md)."""

    @staticmethod
    def forward(ctx, W_dec, weights, indices, offsets, rows):
        ctx.save_for_backward(W_dec, weights, indices, offsets, rows)
        return torch.nn.functional.embedding_bag(indices, W_dec, offsets, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        W_dec, weights, indices, offsets, rows = ctx.saved_tensors
        grad_out = grad_out.contiguous().to(W_dec.dtype)
        grad_W_dec = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_W_dec = _sparse_times_dense(
                _by_latent(indices, rows, weights, W_dec.shape[0], len(grad_out)), grad_out
            )
        if ctx.needs_input_grad[1]:
            # torch's own per-entry dot products (multi-threaded); rows is embedding_bag's offset2bag
            grad_weights = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, W_dec, indices, offsets, rows, 0, -1
            )
        return grad_W_dec, grad_weights, None, None, None


def sparse_decode_parts(parts: list[tuple[torch.Tensor, torch.Tensor]], W_dec: torch.Tensor) -> list[torch.Tensor]:
    """`sparse_decode` of several (indices, values) pairs in one embedding_bag: one dense W_dec gradient."""
    device = W_dec.device
    lengths = torch.cat([torch.full((len(ix),), ix.shape[1], device=device) for ix, _ in parts])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), lengths.cumsum(0)[:-1]])
    rows = torch.arange(len(lengths), device=device).repeat_interleave(lengths)  # the output row of each entry
    decoded = _DecodeParts.apply(
        W_dec,
        torch.cat([v.reshape(-1) for _, v in parts]).to(W_dec.dtype),
        torch.cat([ix.reshape(-1) for ix, _ in parts]).long(),  # the dtype of rows, its offset2bag
        offsets,
        rows,
    )
    return list(decoded.split([len(ix) for ix, _ in parts]))
