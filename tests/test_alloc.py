"""The CPU allocator setting: taken by glibc, harmless to repeat, and tensors stay correct."""

import ctypes.util

import numpy as np
import pytest
import torch

from clipatlas._alloc import tune_cpu_allocator


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="no C library to tune")
def test_glibc_takes_the_allocator_settings_and_results_are_unchanged():
    x = torch.randn(64, 32, 56, 56)  # 25 MB: above glibc's default mmap threshold
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    with torch.no_grad():
        before = conv(x)
        assert tune_cpu_allocator() is True
        assert tune_cpu_allocator() is True  # cached: set once per process
        after = conv(x)
    np.testing.assert_array_equal(before.numpy(), after.numpy())
