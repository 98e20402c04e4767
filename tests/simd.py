"""Switching the SIMD kernels in tests: each_kernel() runs a block once per kernel this CPU
has; modules that switch kernels import restore_kernel (an autouse fixture) so that the
kernel in use after each test is the one before it."""
from __future__ import annotations

import pytest

from fpfs import _kernels

KERNELS = ("portable", "avx2")


@pytest.fixture(autouse=True)
def restore_kernel():
    before = _kernels.simd_kernel()
    yield
    _kernels.set_simd_kernel(before)


def each_kernel():
    """Yield the name of each kernel this CPU has, switched on (decoders and encoders)."""
    for name in KERNELS:
        if _kernels.set_simd_kernel(name) == name:
            yield name
