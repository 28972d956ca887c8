"""row_topk against torch.topk and a numpy brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipatlas.sae.topk import n_groups, row_topk


def test_group_count_divides_the_columns_and_pays_only_for_wide_rows():
    assert n_groups(16_384, 32) == 1024
    assert n_groups(163_840, 32) == 2560
    assert n_groups(2_560, 16) == 256
    for columns, k in [(16_384, 32), (163_840, 32), (2_560, 16), (3_000, 7)]:
        groups = n_groups(columns, k)
        assert columns % groups == 0 and groups >= k and columns // groups >= 4
    assert n_groups(48, 5) == 12  # the SAE tests' width: grouped too
    assert n_groups(16, 5) is None  # narrow: plain torch.topk
    assert n_groups(4_099, 32) is None  # a prime: no groups


@pytest.mark.parametrize("columns, k", [(4_096, 32), (3_000, 7), (2_560, 16)])
def test_row_topk_equals_torch_topk(columns, k):
    pre = torch.randn(50, columns, generator=torch.Generator().manual_seed(columns))
    pre[3] = -pre[3].abs()  # a row with every entry negative
    pre[4, : columns // 2] = 100.0 + torch.arange(columns // 2)  # the top entries all in a few groups' range
    values, indices = row_topk(pre, k)
    expected_values, expected_indices = pre.topk(k, dim=1)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)


def test_row_topk_with_ties_keeps_a_correct_top_k():
    """Quantised rows tie at the k-th value: the values are exact and the indices a valid choice."""
    rng = np.random.default_rng(0)
    pre = rng.integers(-5, 6, size=(40, 2_048)).astype(np.float32)
    pre[7] = 1.0  # one row all equal
    values, indices = row_topk(torch.from_numpy(pre), 32)
    brute = -np.sort(-pre, axis=1)[:, :32]
    np.testing.assert_array_equal(values.numpy(), brute)
    for row in range(len(pre)):
        assert len(set(indices[row].tolist())) == 32  # distinct columns
        np.testing.assert_array_equal(pre[row, indices[row].numpy()], values[row].numpy())


def test_row_topk_of_no_rows():
    values, indices = row_topk(torch.zeros(0, 4_096), 32)
    assert values.shape == (0, 32) and indices.shape == (0, 32)
