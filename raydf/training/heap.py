"""Hand the memory that freed tensors leave in glibc's heap back to the operating system.

Measured (benchmarks/README.md, "Large data sets"): a fold worker's resident memory grew by ~8 KB per validation
image under bf16 autocast on a CPU, 200-500 MB over one 25,000-image pass, in some runs and not in others. It was
not a leak: `malloc_trim(0)` gave all of it back. glibc keeps freed 1-4 MB blocks (a batch's activations) in
its heaps, where the next batch's blocks, allocated in another order, do not always fit. Trimming every few dozen
batches bounds that to a few dozen MB at a cost of about a millisecond; the alternative, `MALLOC_MMAP_THRESHOLD_`
at 1 MB, made every step of InceptionResnetV1 ~10% slower (a page fault per fresh block).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

EVERY_BATCHES = 32  # ~2 MB retained per batch at most between two trims (measured above)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None on another C library (macOS, musl), where there is nothing to do."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS (glibc); False where the C library has no `malloc_trim`."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def every(batch: int) -> None:
    """Call once per batch (0-based): trims after every `EVERY_BATCHES` batches."""
    if (batch + 1) % EVERY_BATCHES == 0:
        release_free_memory()
