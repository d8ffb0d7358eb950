"""The C allocator of a CPU worker, fixed so that a request meets the memory the one before it left.

glibc's malloc adjusts itself as a process runs: a freed block larger than its mmap threshold raises the
threshold, and free memory at the top of the heap beyond the trim threshold goes back to the kernel.
A request's prefill makes the largest temporaries of the request (on `small`, eager attention's
weights), and where they land depends on all that the process allocated and freed before it: in one
process they reuse heap memory, in another they are returned after each request and the next prefill
faults fresh zeroed pages in. That moved the prefill of whole processes by a few percent, the same
code on the same weights (BENCHMARKS.md, "Time to first token in three").

`steady()` sets both thresholds once, as the worker starts: blocks up to MMAP_THRESHOLD come from the
heap, and the heap keeps up to TRIM_THRESHOLD free at its top, so a request's temporaries reuse the
previous request's memory. The cost is memory kept: the process's resident size stays near its peak
(the peak the report gives) instead of falling back between requests. `TUNABLES` is the same setting
for another process, as GLIBC_TUNABLES (benchmarks/vs_reference.py gives it to the reference, so that
both sides run generate() on the same allocator).
"""
from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 32 * 2**20          # glibc's own upper bound for its moving threshold
TRIM_THRESHOLD = 2**30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # mallopt's parameter numbers (malloc.h)
TUNABLES = f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}:glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"


def steady() -> bool:
    """Fix this process's malloc thresholds; False where the C library is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt        # the process's own symbols: no ldconfig run to find libc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
