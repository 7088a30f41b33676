"""release_free_memory gives freed heap pages back to the system (glibc), where they would otherwise stay."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from lookalike.server.core.backends.builtin.memory import release_free_memory


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_heap_goes_back_after_release_and_not_before() -> None:
    # 400 MB in 64 KiB blocks (under glibc's mmap threshold: they live in the heap), then all but a
    # few freed; the blocks still held sit above the freed ones, so glibc cannot trim on its own.
    blocks = [np.ones(64 * 1024 // 8) for _ in range(6400)]
    keep = blocks[-8:]
    before_free = rss_anon()
    del blocks
    after_free = rss_anon()
    assert before_free - after_free < 100 << 20, "glibc already returned the pages: the test shows nothing"
    assert release_free_memory()
    after_release = rss_anon()
    assert after_free - after_release > 300 << 20, (before_free >> 20, after_free >> 20, after_release >> 20)
    assert all(k[0] == 1.0 for k in keep)  # what is still held is intact
