"""Process-level memory settings for training on a CPU.

A CoT step allocates and frees tensors of tens of megabytes many times per iteration (the
(B, T, V) logits and their gradients: 128 x 20 x 5,000 floats is 51 MB). glibc's malloc serves
blocks that large with a fresh ``mmap`` and returns them with ``munmap``, so the kernel zeroes
and faults in every page again on each allocation: on the 2-core dev machine that was a
quarter of the CPU time of a CoT iteration (28 s of system time in 100 s of user time).
Raising the mmap and trim thresholds makes malloc keep freed memory and reuse it: the same
benchmark spent 1 s in the kernel and CoT iterations took 250-268 ms instead of 310-347 ms
(``benchmarks/iteration_cost.py``). The cost is that a process keeps its peak heap.

Those figures are for the logits-based losses. Training now uses the fused losses of
``models/fused.py``, whose largest temporaries are (n, V) slabs of a few MB, so the setting matters
much less there (30 CoT iterations: 0.04 s of system time without it, 0.02 s with it); it still
helps whatever does build (B, T, V) tensors (evaluation, the reference losses, larger
vocabularies). It is a setting of the process, so the entry points apply it: the in-process
loop (``machine.configure_process``) and each Ray actor's process before its learner is built
(``runtime.prepare_process``).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 1024 * 1024 * 1024  # serve blocks below 1 GiB from the heap, not from mmap
_TRIM_THRESHOLD = 1024 * 1024 * 1024  # return freed heap to the OS only beyond 1 GiB
_TOP_PAD = 64 * 1024 * 1024  # grow the heap in steps of 64 MiB


def retain_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks instead of mapping fresh pages each time.

    Returns True when applied, False where the C library is not glibc (macOS, musl, Windows);
    there it is a no-op. Safe to call more than once.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    ok &= mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    ok &= mallopt(_M_TOP_PAD, _TOP_PAD)
    return bool(ok)
