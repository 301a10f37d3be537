"""The machine's own ceilings, measured at the start of a benchmark run."""

from __future__ import annotations

import os
import platform
import resource
import time

import torch


def describe() -> dict[str, object]:
    """CPU, thread count and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import opacus
    import peft

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "opacus": opacus.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def memory_bandwidth(*, megabytes: int = 256, seconds: float = 1.0) -> float:
    """Sustained bytes/s of a large tensor copy (bytes read + bytes written), best of a few copies."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - start))
    return best


def matmul_flops(dtype: torch.dtype, *, size: int = 1024, seconds: float = 2.0, device: str = "cpu") -> float:
    """Sustained FLOP/s of square ``size`` matmuls in ``dtype`` (best of a few timed blocks)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_rss_gb() -> float:
    """Peak resident memory of this process's own address space in GiB: /proc's VmHWM starts afresh at exec,
    whereas ru_maxrss (the fallback off Linux) keeps the high-water mark of the image exec replaced, which for a
    child of the benchmark process is the parent's."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
