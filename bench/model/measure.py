"""Peak memory of a block: CUDA's allocator peak, or the process's resident set on the CPU."""

from __future__ import annotations

import threading

import torch


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mb`` (CPU: sampled every 10 ms)."""

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self.base_mb = 0.0  # at entry: peak - base is what the block added
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_rss"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        import psutil

        self._proc = psutil.Process()
        self._peak = self._proc.memory_info().rss
        self.base_mb = self._peak / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = self._peak / 2**20
