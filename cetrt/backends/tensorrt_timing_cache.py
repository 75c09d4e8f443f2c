"""The timing cache every block of a TensorRT build shares: `timing.cache` beside the engines.

A cache TensorRT cannot use (written by another TensorRT version or for another GPU, truncated by an
interrupted write, or corrupt) is discarded and a fresh one started; if TensorRT cannot even make an empty
one, the block builds without a cache (slower, never wrong). The cache is written to a temporary file and
renamed, so an interrupted build leaves the old cache or the new one, never half of one.
Inputs: a builder config and the cache path. Outputs: whether a cache is attached; the file, after a build.
Usage: `attached = attach_timing_cache(config, path)`; after the build `if attached: save_timing_cache(config, path)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

TIMING_CACHE = "timing.cache"
log = logging.getLogger("cetrt.tensorrt")


def _attach(config, blob: bytes) -> bool:
    cache = config.create_timing_cache(blob)
    return cache is not None and bool(config.set_timing_cache(cache, False))  # False: refuse a mismatched cache


def attach_timing_cache(config, path: Path) -> bool:
    """Attach the cache at `path` (or a fresh one in its place); False when the build must go without one."""
    blob = path.read_bytes() if path.exists() else b""
    if blob and _attach(config, blob):
        return True
    if blob:
        log.warning("%s: TensorRT cannot use this timing cache (another version or GPU, or truncated); "
                    "starting a new one", path)
        path.unlink()
    if _attach(config, b""):
        return True
    log.warning("%s: TensorRT could not create a timing cache; building without one", path)
    return False


def save_timing_cache(config, path: Path) -> bool:
    """Write the config's cache to `path` atomically; False (and the old file kept) when there is none to write."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("%s: TensorRT returned no timing cache after the build; the file is left as it was", path)
        return False
    data = bytes(cache.serialize())
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return True
