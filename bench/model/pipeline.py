"""Loading any Stable-Diffusion-format pipeline, with device and dtype chosen once.

The same code serves the committed ConceptWorld model and a user's SD v1.x/v2.x weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import InputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU by default; on CUDA the user may ask for fp16/bf16."""
    if dtype in (None, "auto"):
        return torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use one of {sorted(DTYPES)})")
    return DTYPES[dtype]


def is_pipeline_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


def model_source(model: str | os.PathLike) -> str:
    """A local pipeline folder or a hub id (``owner/name``); anything else is one clear error."""
    text = str(model)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir() or not is_pipeline_folder(local):
            raise InputError(f"model {text!r} is not a diffusers pipeline folder (no model_index.json)")
        return str(local)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InputError(f"model folder not found: {text!r}")
    return text  # a hub id such as "CompVis/stable-diffusion-v1-4"


def load_pipeline(model: str | os.PathLike, device: str | None = None, dtype: str | None = None) -> Any:
    """Load a StableDiffusionPipeline from a local folder or (where reachable) a hub id.

    The safety checker is not loaded: the judges are the benchmark's eyes, and a checker that
    blacks out images would silently change every metric.
    """
    from diffusers import StableDiffusionPipeline

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    text, source = str(model), model_source(model)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, safety_checker=None, requires_safety_checker=False, use_safetensors=True,
            **{_dtype_keyword(): torch_dtype},
        )
    except Exception as e:  # diffusers raises many types; the user needs the path and the reason
        raise InputError(f"could not load a StableDiffusionPipeline from {text!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _dtype_keyword() -> str:
    """Newer diffusers name the argument ``dtype`` and deprecate ``torch_dtype``."""
    import diffusers.utils.deprecation_utils as dep

    return "dtype" if hasattr(dep, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def pipeline_device(pipe: Any) -> torch.device:
    return next(pipe.unet.parameters()).device


def pipeline_dtype(pipe: Any) -> torch.dtype:
    return next(pipe.unet.parameters()).dtype


def default_resolution(pipe: Any) -> int:
    """Image side the pipeline generates by default (UNet sample size x VAE scale factor)."""
    size = pipe.unet.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) * int(pipe.vae_scale_factor)
