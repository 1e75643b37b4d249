"""Memory figures say what they measure: the CPU has no allocator peak, so it reports none (not the RSS)."""
import torch

from geofm.train import metrics


def test_cpu_reports_rss_as_rss_and_no_allocator_peak():
    keep = torch.ones(64, 2**20 // 4)  # 64 MiB alive while measuring
    with open("/proc/self/status") as f:
        now_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    mem = metrics.peak_memory_gb(torch.device("cpu"))
    assert mem["peak_mem_gb"] is None and mem["peak_reserved_gb"] is None
    # the lifetime peak RSS is about what this process held a moment ago (the tensor above included); the
    # kernel updates ru_maxrss's high-water mark lazily, so it may trail VmRSS by a few pages
    assert mem["peak_rss_gb"] >= 0.95 * now_kb / 2**20 and now_kb / 2**20 >= keep.numel() * 4 / 2**30
