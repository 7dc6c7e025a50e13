"""First (dequantising) versus cached load of the embedded model.

    python benchmarks/load.py

Loads Gemma 3 270M from its GGUF with an empty cache folder (dequantise, then write safetensors),
then again from the cache, in one process, and prints both times and their ratio, and the share of
the cached load spent verifying the entry (the sha256 of every cached file, which catches damage
in place).
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fvtrain-load-bench-") as tmp:
        os.environ["FVTRAIN_CACHE"] = tmp
        from fvtrain.models import load_model

        t0 = time.perf_counter()
        lm = load_model("gemma3-270m")
        first = time.perf_counter() - t0
        del lm
        t0 = time.perf_counter()
        lm = load_model("gemma3-270m")
        # Touch every weight so a lazily mapped load is not counted as free.
        total = sum(float(p.float().sum()) for p in lm.model.parameters())
        cached = time.perf_counter() - t0
        from fvtrain.models import loading

        gguf, sha = loading.embedded_gguf()
        entry = loading.gguf_cache_entry(gguf, sha)
        t0 = time.perf_counter()
        assert loading.cache_entry_valid(entry, sha)
        verify = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in entry.iterdir()) / 2**30
    print(f"first load (dequantise GGUF + write cache): {first:7.2f} s")
    print(f"cached load (safetensors, weights touched): {cached:7.2f} s")
    print(f"  of which verifying the entry ({size:.2f} GiB hashed): {verify:6.2f} s")
    print(f"ratio first/cached: {first / cached:5.1f}x  (bar: cached < first / 10)  [checksum {total:.3e}]")


if __name__ == "__main__":
    main()
