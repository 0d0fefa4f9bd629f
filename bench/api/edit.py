"""An erasure's result: the changed weights, its cost, and how to undo it.

An ``Edit`` is stored as one safetensors file (tensors + a JSON header in the metadata), so
loading one never unpickles anything. ``dense`` edits hold the new values of the changed
parameters; ``lora`` edits hold low-rank factors (A, B) merged as ``W + scale * B @ A``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.core.errors import InputError

COMPONENTS = ("text_encoder", "unet", "vae")
_FORMAT_VERSION = 1


def pipeline_parameters(pipe: Any, components: tuple[str, ...] = COMPONENTS) -> dict[str, torch.nn.Parameter]:
    """All parameters of the pipeline's models, named ``<component>.<parameter path>``."""
    out: dict[str, torch.nn.Parameter] = {}
    for comp in components:
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        for name, p in module.named_parameters():
            out[f"{comp}.{name}"] = p
    return out


def resolve_parameter(pipe: Any, name: str) -> torch.nn.Parameter:
    comp, _, path = name.partition(".")
    module = getattr(pipe, comp, None)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"edit names parameter {name!r} but the pipeline has no component {comp!r}")
    try:
        return module.get_parameter(path)
    except AttributeError:
        raise InputError(f"edit names parameter {name!r}, which this pipeline does not have") from None


@dataclass
class Edit:
    """Changed weights plus the facts a leaderboard needs (seconds, parameter count, storage)."""

    method: str
    config: dict[str, Any]
    format: Literal["dense", "lora"]
    tensors: dict[str, torch.Tensor]
    trainable_params: int
    seconds: float
    lora_scale: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    _pipe: Any = field(default=None, repr=False, compare=False)
    _originals: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    # -- what it touches -------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Pipeline parameters this edit changes."""
        if self.format == "dense":
            return sorted(self.tensors)
        return sorted({k.rsplit(".lora_", 1)[0] for k in self.tensors})

    @property
    def storage_bytes(self) -> int:
        """Bytes of tensor data needed to store the edit (what a user ships)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def applied(self) -> bool:
        return self._pipe is not None

    def _new_value(self, name: str, current: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            return self.tensors[name]
        a = self.tensors[f"{name}.lora_A"].to(current.device, torch.float32)
        b = self.tensors[f"{name}.lora_B"].to(current.device, torch.float32)
        return (current.float() + self.lora_scale * (b @ a)).to(current.dtype)

    # -- apply / undo ----------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, pipe: Any) -> Edit:
        """Write the edit into ``pipe`` (keeping the original values for ``restore``)."""
        if self.applied:
            raise RuntimeError("this edit is already applied; restore() it first")
        params = {name: resolve_parameter(pipe, name) for name in self.param_names}
        values = {name: self._new_value(name, p.data) for name, p in params.items()}  # LoRA merges once
        for name, p in params.items():
            if values[name].shape != p.shape:
                raise InputError(f"edit tensor {name!r} has shape {tuple(values[name].shape)}, "
                                 f"the model has {tuple(p.shape)}")
        originals = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.data.copy_(values[name].to(p.device, p.dtype))
        self._pipe, self._originals = pipe, originals
        return self

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact original weights (bit-identical)."""
        if not self.applied or self._originals is None:
            raise RuntimeError("this edit is not applied to a pipeline; nothing to restore")
        for name, value in self._originals.items():
            resolve_parameter(self._pipe, name).data.copy_(value)
        self._pipe, self._originals = None, None

    def bind(self, pipe: Any, originals: dict[str, torch.Tensor]) -> Edit:
        """Mark the edit as already applied to ``pipe`` by training, with the pre-training values."""
        missing = set(self.param_names) - set(originals)
        if missing:
            raise ValueError(f"originals missing for {sorted(missing)[:3]}")
        self._pipe, self._originals = pipe, {k: originals[k] for k in self.param_names}
        return self

    @torch.no_grad()
    def relative_change(self, component: str = "text_encoder") -> dict[str, float | int]:
        """How far the applied edit moved ``component``'s weight matrices (parameters of >= 2 dims):
        ``pooled`` = ||W' - W||_F / ||W||_F over every matrix it changed together, ``max`` = the same for
        the most-moved single matrix, ``matrices`` = how many it changed (all 0 when it leaves
        ``component`` alone)."""
        if not self.applied or self._originals is None:
            raise RuntimeError("relative_change needs the edit applied to its pipeline (apply() or bind())")
        moved = total = 0.0
        worst, count = 0.0, 0
        for name, old in self._originals.items():
            if not name.startswith(component + ".") or old.ndim < 2:
                continue
            old = old.float()
            delta = float((resolve_parameter(self._pipe, name).detach().float() - old).pow(2).sum())
            size = float(old.pow(2).sum())
            moved, total, count = moved + delta, total + size, count + 1
            worst = max(worst, (delta / size) ** 0.5 if size else 0.0)
        return {"pooled": (moved / total) ** 0.5 if total else 0.0, "max": worst, "matrices": count}

    # -- storage ---------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "config": self.config,
            "format": self.format,
            "lora_scale": self.lora_scale,
            "trainable_params": self.trainable_params,
            "seconds": self.seconds,
            "storage_bytes": self.storage_bytes,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write the edit as safetensors (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        save_file(tensors, str(tmp), metadata={"erasebench_edit": json.dumps(self.header(), sort_keys=True)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Edit:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"edit file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise InputError(f"{path} is not a readable safetensors edit: {e}") from None
        if "erasebench_edit" not in meta:
            raise InputError(f"{path} is a safetensors file but not an erasebench edit (no header)")
        h = json.loads(meta["erasebench_edit"])
        return cls(
            method=h["method"],
            config=h["config"],
            format=h["format"],
            tensors=tensors,
            trainable_params=h["trainable_params"],
            seconds=h["seconds"],
            lora_scale=h["lora_scale"],
            info=h.get("info", {}),
        )
