"""medim.malloc: freed memory stays resident for reuse (no timing: resident set size before and after a free)."""

import sys

import pytest
import torch

from medim.malloc import retain_freed_memory


def _rss_bytes() -> int:
    from pathlib import Path

    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_tensor_memory_stays_resident_for_reuse():
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
    size = 24 * 2**20  # one small-preset AdaLN per-sample gradient at batch 16, about
    before = _rss_bytes()
    x = torch.ones(size // 4)
    touched = _rss_bytes()
    del x
    after = _rss_bytes()
    assert touched - before > size // 2
    assert touched - after < size // 4  # not returned to the OS
