"""What ran where: package versions, git commit and device, for every record."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from bench.core.paths import ROOT

PACKAGES = ("erasebench", "torch", "diffusers", "transformers", "peft", "safetensors", "torchmetrics",
            "open_clip_torch", "numpy")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = ROOT
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment(device: torch.device | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info
