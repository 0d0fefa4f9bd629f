"""An erasure's result: the changed weights, its cost, and how to undo it.

An ``Edit`` is stored as one safetensors file (tensors + a JSON header in the metadata), so
loading one never unpickles anything. ``dense`` edits hold the new values of the changed
parameters; ``lora`` edits hold low-rank factors (A, B) merged as ``W + scale * B @ A``;
``sampling`` edits change no weight: they change how the pipeline samples (``SAMPLING_KINDS``: the
ordinary pipeline call uses them while applied, and ``restore()`` removes them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.core.errors import InputError

COMPONENTS = ("text_encoder", "unet", "vae")
_FORMAT_VERSION = 1
_SAMPLING_MARK = "_erasebench_sampling_edit"  # the pipeline attribute naming the sampling edit applied to it


def _negative_prompt(pipe: Any, text: str) -> Callable[[], None]:
    """Every call of the pipeline encodes ``text`` as its unconditional (negative) prompt, also where the
    caller passes its own negative prompt or embeddings (the harness passes the empty prompt's): the
    pipeline's ``encode_prompt`` is wrapped on the instance. Returns what removes the wrapper."""
    original = pipe.encode_prompt

    def encode_prompt(prompt: Any, device: Any, num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: Any = None, prompt_embeds: Any = None, negative_prompt_embeds: Any = None,
                      **kwargs: Any) -> Any:
        n = len(prompt) if isinstance(prompt, list) else 1 if isinstance(prompt, str) else prompt_embeds.shape[0]
        negative = text if isinstance(prompt, str) else [text] * n
        return original(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative,
                        prompt_embeds=prompt_embeds, negative_prompt_embeds=None, **kwargs)

    own = pipe.__dict__.get("encode_prompt")  # an instance's own override stays under ours, and comes back
    pipe.encode_prompt = encode_prompt
    return lambda: setattr(pipe, "encode_prompt", own) if own is not None else delattr(pipe, "encode_prompt")


# what a sampling edit may change, by the key of its ``sampling`` spec: each installs itself on a pipeline
# and returns what uninstalls it
SAMPLING_KINDS: dict[str, Callable[[Any, Any], Callable[[], None]]] = {"negative_prompt": _negative_prompt}


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
    format: Literal["dense", "lora", "sampling"]
    tensors: dict[str, torch.Tensor]
    trainable_params: int
    seconds: float
    lora_scale: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # a sampling edit's changes (SAMPLING_KINDS keys)
    _pipe: Any = field(default=None, repr=False, compare=False)
    _originals: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    _uninstall: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format == "sampling":
            unknown = sorted(set(self.sampling) - set(SAMPLING_KINDS))
            if not self.sampling or unknown:
                raise InputError(f"a sampling edit changes one of {sorted(SAMPLING_KINDS)}; got {sorted(self.sampling)}")
            if self.tensors:
                raise InputError("a sampling edit holds no weights")

    # -- what it touches -------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Pipeline parameters this edit changes (none for a sampling edit)."""
        if self.format in ("dense", "sampling"):
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
        if self.format == "sampling":
            return self._install(pipe)
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
        if self.format == "sampling":
            for uninstall in reversed(self._uninstall):
                uninstall()
            delattr(self._pipe, _SAMPLING_MARK)
            self._uninstall.clear()
        for name, value in self._originals.items():
            resolve_parameter(self._pipe, name).data.copy_(value)
        self._pipe, self._originals = None, None

    def _install(self, pipe: Any) -> Edit:
        """A sampling edit's changes, installed on ``pipe`` (one sampling edit per pipeline at a time)."""
        if getattr(pipe, _SAMPLING_MARK, None) is not None:
            raise InputError(f"the pipeline already samples under the {getattr(pipe, _SAMPLING_MARK)} edit; "
                             "restore() it before applying another sampling edit")
        self._uninstall = [SAMPLING_KINDS[kind](pipe, value) for kind, value in sorted(self.sampling.items())]
        setattr(pipe, _SAMPLING_MARK, self.method)
        self._pipe, self._originals = pipe, {}
        return self

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
            **({"sampling": self.sampling} if self.sampling else {}),
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
            sampling=h.get("sampling", {}),
        )
