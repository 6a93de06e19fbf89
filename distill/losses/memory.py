"""Peak tensor memory of a callable, on CPU or CUDA: how the chunked loss's memory claim is measured.

    peak = measure_peak_memory(lambda: distill_loss(h, w, y, ids, lps).loss.backward())

CPU: torch's CPU allocator keeps no statistics (torch.cuda.max_memory_allocated has no CPU twin),
and resident-set sizes depend on the C allocator returning freed blocks to the system. So the
allocations and frees torch makes while fn runs are recorded with torch.profiler
(profile_memory=True) and replayed in time order. The result counts tensor storage only, is
independent of malloc, and is the same on every run of a deterministic fn. The profiler's own
overhead is about a second for a few thousand allocations.
CUDA: the caching allocator's own peak counter, reset before fn runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

_CPU = torch.autograd.DeviceType.CPU


def measure_peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory allocated on `device` while fn() runs, above what was allocated when it started.

    fn takes no arguments; its result is discarded. Memory that fn frees but that was allocated
    before it started is not credited (the profiler never saw its size), so free inputs outside fn.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        raise ValueError(f"measure_peak_memory measures cpu or cuda memory, not {device.type}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the kineto results are the only place the profiler keeps per-allocation sizes with timestamps
    events = getattr(prof.profiler, "kineto_results", None)
    if events is None:
        raise RuntimeError("this torch build's profiler keeps no memory events: measure the peak RSS instead")
    changes = sorted(
        ((e.start_ns(), e.nbytes()) for e in events.events() if e.name() == "[memory]" and e.device_type() == _CPU),
        key=lambda change: change[0],  # by time only: a stable sort keeps an alloc and free at one instant in order
    )
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak
