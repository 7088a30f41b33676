"""Hand freed heap memory back to the system after a burst of allocations.

glibc keeps what Python and native code free in its arenas. After a database registers
millions of rows, snapshots them (the float32 copy leaves for its memory-mapped files) and
builds its HNSW graph, the process held about 1.7x the memory it needs from then on
(bench/scale.py: 1,318 bytes per image while registering, 778 after a restart). ``malloc_trim``
returns the free pages; elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: no malloc_trim here


def _malloc_trim() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return _libc  # type: ignore[return-value]


def release_free_memory() -> bool:
    """Return free heap pages to the system; True when the C library could (glibc)."""
    libc = _malloc_trim()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
