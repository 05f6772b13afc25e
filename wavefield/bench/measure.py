"""Timing and peak-memory measurement on CPU and CUDA.

Time: wall clock around the call (after a CUDA synchronise), median of repeats.

Peak extra memory: what a call allocates beyond what existed before it.
* CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the allocation
  before the call.
* CPU (Linux): the process's resident-set high-water mark. Before the call, glibc hands every
  free page back to the kernel (malloc_trim(0)) and the mark is reset to the current RSS
  (writing 5 to /proc/self/clear_refs); after it, VmHWM - VmRSS(before) is the physical memory
  the call touched at its peak. torch's CPU allocator does not cache, so after the trim no
  freed-but-kept memory can hide part of a peak. tracemalloc would not see torch's
  allocations at all. Timing runs keep glibc's normal behaviour (forcing every block to its
  own mmap instead made the mixers up to 2x slower here, through page faults).
"""

import ctypes
import gc
import statistics
import time

import torch


def _trim_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
    _trim_heap()
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
