"""Keep freed tensor memory in the process (glibc only).

glibc returns a large freed block to the kernel at once (``mmap`` above a threshold, heap trims
above another), and the next tensor of that size faults its pages in afresh, one at a time. The
model passes here free and reallocate the same few shapes thousands of times (a cache extended
by one token, a block of vocabulary logits), so those page faults were about 7% of the fast AIE
on CPU. Raising both thresholds keeps the blocks for reuse. Numbers are unaffected; a process
may hold up to ``TRIM`` more resident memory. ``FVTRAIN_KEEP_FREED_MEMORY=0`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP = 32 << 20  # blocks up to this size come from the heap (glibc's largest allowed threshold)
TRIM = 1 << 30  # free heap above this much is given back to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from <malloc.h>
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether they are now raised."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("FVTRAIN_KEEP_FREED_MEMORY", "1") != "0" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM))
            except (OSError, AttributeError):
                pass
    return _done
