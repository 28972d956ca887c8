"""The k largest entries of each row of a wide matrix, for TopK encoders on the CPU.

torch's CPU top-k walks every entry of every row through a per-row selection (~3 ns an entry): after
the encoder product, the atlas pass's largest cost (bench/RESULTS.md, atlas build). Here the columns are split
into G interleaved groups (column c in group c mod G), and the k largest entries of a row lie in the
k groups with the largest maxima: a group holding an entry above the row's k-th value has a larger
maximum than every group holding none, and there are fewer than k such groups. So one vectorised
maximum over the row, a top-k over its G group maxima and a top-k over the k * F / G entries of the
chosen groups give torch.topk's values in less time (measured in bench/RESULTS.md, atlas build).
"""

from __future__ import annotations

import math

import torch

# Below this many entries per group the candidate top-k saves too little to pay for the extra steps.
MIN_GROUP_SIZE = 4


def n_groups(n_columns: int, k: int) -> int | None:
    """The number of column groups for rows of `n_columns`, or None when grouping does not pay.

    The work is about G (the group maxima's top-k) plus k * n_columns / G (the candidates'), least
    at G = sqrt(k * n_columns); G must divide n_columns, so the largest divisor up to 1.5 times that."""
    limit = min(int(1.5 * math.sqrt(k * n_columns)), n_columns // MIN_GROUP_SIZE)
    divisors = [g for g in range(k, limit + 1) if n_columns % g == 0]
    return divisors[-1] if divisors else None


def row_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row of `pre` (n, F), largest first.

    The values equal `pre.topk(k, dim=1)`'s; where several entries equal a row's k-th value, which of
    them are kept may differ from torch.topk's choice (any choice is a correct top-k). On GPUs, and
    where grouping does not pay, it is torch.topk."""
    n, n_columns = pre.shape
    groups = n_groups(n_columns, k) if pre.device.type == "cpu" and pre.is_contiguous() else None
    if groups is None:
        return pre.topk(k, dim=1)
    per_group = n_columns // groups
    maxima = pre.view(n, per_group, groups).amax(dim=1)  # (n, G): vectorised along the contiguous columns
    top_groups = maxima.topk(k, dim=1).indices
    offsets = groups * torch.arange(per_group, device=pre.device)
    columns = (top_groups.unsqueeze(2) + offsets).view(n, k * per_group)
    values, position = pre.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, position)
