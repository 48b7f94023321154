"""Keeping resident memory bounded while streaming through mmapped source files.

Pages of a file mapping that have been read stay resident (and count in RSS) until unmapped;
once a tensor has been converted its source pages are dropped from this process with
madvise(MADV_DONTNEED). That is only done for ranges inside read-only *file* mappings (checked in
/proc/self/maps), where it is harmless: the data stays in the page cache and re-reads fault it back.
"""
import ctypes
import ctypes.util
import mmap
import sys

import numpy as np

_MADV_WILLNEED = 3
_MADV_DONTNEED = 4
_libc = None
_maps_cache = []


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise


def _file_mappings():
    """[(start, end)] of read-only file-backed mappings of this process."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not parts[5].startswith("/") or "w" in parts[1]:
                    continue
                a, b = parts[0].split("-")
                out.append((int(a, 16), int(b, 16)))
    except OSError:
        pass
    return out


def _file_ranges(arrays):
    """Whole-page (start, length) ranges of the arrays that lie inside a read-only file mapping."""
    global _maps_cache
    out = []
    for arr in arrays:
        if not isinstance(arr, np.ndarray) or arr.nbytes < mmap.PAGESIZE or arr.flags.owndata:
            continue
        start = arr.__array_interface__["data"][0]
        end = start + arr.nbytes
        if not any(a <= start and end <= b for a, b in _maps_cache):
            _maps_cache = _file_mappings()  # a newly mapped file: parse /proc/self/maps again
            if not any(a <= start and end <= b for a, b in _maps_cache):
                continue
        lo = (start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE  # whole pages only
        hi = end // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            out.append((lo, hi - lo))
    return out


def release_pages(arrays):
    """Drop the resident pages of these source arrays (numpy arrays backed by a read-only file
    mapping; anything else is left alone). Returns the bytes released."""
    if not sys.platform.startswith("linux"):
        return 0
    released = 0
    for lo, n in _file_ranges(arrays):
        if _madvise()(lo, n, _MADV_DONTNEED) == 0:
            released += n
    return released


def prefetch(arrays):
    """Ask the kernel to start reading these file-mapped arrays in the background (WILLNEED), so
    that the next tensor's read overlaps the current tensor's conversion."""
    if sys.platform.startswith("linux"):
        for lo, n in _file_ranges(arrays):
            _madvise()(lo, n, _MADV_WILLNEED)
