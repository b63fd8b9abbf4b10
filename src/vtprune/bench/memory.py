"""Peak resident-memory growth of a block of code, sampled from ``/proc/self/statm``.

PyTorch's CPU allocator bypasses Python's, so ``tracemalloc`` does not see tensors; we sample
the process's resident set size (RSS) instead. :class:`PeakRSS` releases freed heap memory
(glibc ``malloc_trim``, which also returns free pages inside the heap) before the block,
records the RSS, then samples it from a background thread every ``interval`` seconds until
the block ends. (Pinning glibc's mmap threshold would make freed tensors leave the RSS too,
but it made every large allocation a fresh mmap and slowed unpruned prefill by ~20% here,
biasing speed-ups, so we do not.) The figure is the peak RSS minus the
RSS before the block: it includes activations, the KV cache and logits; allocations that live
shorter than the sampling interval can be missed, and other threads of the process count too.
On systems without ``/proc`` it reports ``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"


def rss_bytes() -> int | None:
    """Current resident set size in bytes, or None when ``/proc`` is unavailable."""
    try:
        with open(_STATM) as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return None


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _libc()


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.delta``: peak RSS growth in bytes (or None)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.before: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            now = rss_bytes()
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.before = rss_bytes()
        self.peak = self.before
        if self.before is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = rss_bytes()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    @property
    def delta(self) -> int | None:
        """Peak RSS during the block minus RSS before it, bytes (None if unmeasurable)."""
        if self.before is None or self.peak is None:
            return None
        return self.peak - self.before
