"""Timing and peak-memory measurement on CPU and CUDA.

Time: wall clock around the call (after a CUDA synchronise), median of repeats.

Peak extra memory: what a call allocates beyond what existed before it.
* CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the allocation
  before the call.
* CPU (Linux): the process's resident-set high-water mark. Before the call the mark is reset
  to the current RSS (writing 5 to /proc/self/clear_refs); after it, VmHWM - VmRSS(before) is
  the physical memory the call touched at its peak. torch's CPU allocator does not cache, and
  `lean_malloc` fixes glibc's mmap threshold at 64 KiB, so every large tensor is its own mmap
  and goes back to the kernel when freed: freed memory cannot hide a later peak.
  tracemalloc would not see torch's allocations at all.
"""

import ctypes
import gc
import statistics
import time

import torch


def lean_malloc() -> bool:
    """Make glibc return large freed blocks to the kernel at once (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_extra_mb(fn, device: torch.device):
    """Peak memory in MiB that fn allocates beyond what is live before it (None if unmeasurable)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        before = _status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _status_kb("VmHWM") - before) / 1024


def median(values):
    return statistics.median(values) if values else None


def copy_bandwidth(device: torch.device, mbytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second read plus written by a large tensor copy (counts both directions)."""
    src = torch.ones(mbytes * 2**18, device=device)  # mbytes MiB of float32
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = median([time_call(lambda: dst.copy_(src), device) for _ in range(repeats)])
    return 2 * src.numel() * 4 / seconds
