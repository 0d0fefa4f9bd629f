"""Batched sampling through the pipeline's ordinary ``__call__``, and the reference-image cache.

Each image gets its own seeded generator, so an image depends on (prompt, seed, sampler) and,
through floating-point rounding only (about 1/255 at most), on the batch it was generated in.
Batches are therefore always cut the same way from a cell's prompt list, and a rerun after a
kill regenerates exactly the same batches: the same images, the same numbers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.core.io import temp_path, write_json
from bench.core.protocol import SamplerSpec
from bench.core.records import canonical_json
from bench.model.guards import check_finite


def set_scheduler(pipe: Any, sampler: SamplerSpec) -> None:
    """Use the sampler's scheduler class with the model's own noise schedule."""
    import diffusers

    if type(pipe.scheduler).__name__ != sampler.scheduler:
        cls = getattr(diffusers, sampler.scheduler, None)
        if cls is None:
            from bench.core.errors import ConfigError

            raise ConfigError(f"unknown diffusers scheduler {sampler.scheduler!r}")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], sampler: SamplerSpec,
             batch_size: int = 64, progress: Any = None, prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images N x 3 x H x W for ``prompts[i]`` with ``seeds[i]``.

    ``prompt_embeds`` (N x 77 x D), when given, replaces the text encoding of ``prompts``
    (learned tokens of an attack); the unconditional branch still encodes the empty prompt.
    """
    if len(prompts) != len(seeds) or (prompt_embeds is not None and len(prompt_embeds) != len(seeds)):
        raise ValueError("prompts, seeds (and prompt_embeds) must have the same length")
    set_scheduler(pipe, sampler)
    device = pipe._execution_device
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(x)) for x in s]
        # latents drawn on the CPU from per-image generators: identical on any device and batching
        shape = (pipe.unet.config.in_channels, *_latent_hw(pipe, sampler))
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        text: dict[str, Any] = {"prompt": p}
        if prompt_embeds is not None:
            from bench.model.training import encode_prompts

            text = {"prompt_embeds": prompt_embeds[i : i + batch_size].to(device, pipe.text_encoder.dtype),
                    "negative_prompt_embeds": encode_prompts(pipe, [""] * len(p))}
        images = pipe(**text, num_inference_steps=sampler.steps, guidance_scale=sampler.guidance, eta=sampler.eta,
                      height=sampler.height, width=sampler.width, latents=latents, output_type="pt",
                      callback_on_step_end=_finite_latents, callback_on_step_end_tensor_inputs=["latents"]).images
        check_finite(images, "decoded images", f"batch of {len(p)} from prompt {p[0]!r}")
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        if progress is not None:
            progress.update(len(p))
    return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def _finite_latents(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Stop at the first denoising step whose latents hold NaN or Inf (the pipeline's step hook)."""
    check_finite(kwargs["latents"], "latents", f"denoising step {step + 1}")
    return kwargs


def _latent_hw(pipe: Any, sampler: SamplerSpec) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, (list, tuple)) else (size, size)
    f = pipe.vae_scale_factor
    h = sampler.height // f if sampler.height else size[0]
    w = sampler.width // f if sampler.width else size[1]
    return int(h), int(w)


def _load_cached(path: Path) -> torch.Tensor:
    """One cached reference image; a truncated or foreign file is an error naming it."""
    try:
        image = load_file(str(path))["image"]
    except Exception as e:  # safetensors raises its own error types for corrupt files
        from bench.core.errors import RecordError

        raise RecordError(f"reference image cache file {path} is unreadable ({e}); delete it to regenerate") from None
    return _checked(image, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    """Write safetensors atomically (a temporary name beside ``path``, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _checked(image: torch.Tensor | None, where: Path) -> torch.Tensor:
    if image is None or image.dtype != torch.uint8 or image.ndim != 3:
        from bench.core.errors import RecordError

        raise RecordError(f"reference image {where} does not hold a uint8 image; delete it to regenerate")
    return image


class ReferencePack:
    """The original model's references a world ships (``python -m bench.world reference``), read-only.

    One safetensors file holding what a run's reference folder holds (``ReferenceCache.folder``), under
    the same relative names: each tensor as ``RELATIVE_PATH::NAME`` and each JSON record as metadata
    under its relative path. Its keys carry the model's sha256, the sampler, prompt and seed (images),
    and the attack, its config, judge, protocol and seeds (attacks), so a run that differs in any of
    them finds nothing here and computes its own. The world's MANIFEST lists the file, so a run checks
    its bytes with the rest of the world before the first cell.
    """

    FORMAT = "erasebench-reference-pack/1"
    SEP = "::"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._tensors: dict[str, dict[str, torch.Tensor]] | None = None
        self._texts: dict[str, str] = {}

    def _load(self) -> dict[str, dict[str, torch.Tensor]]:
        if self._tensors is None:
            from safetensors import safe_open

            from bench.core.errors import RecordError

            try:
                with safe_open(str(self.path), framework="pt") as f:
                    meta = dict(f.metadata() or {})
                flat = load_file(str(self.path))
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise RecordError(f"reference pack {self.path} is unreadable ({e}); restore it (git checkout) "
                                  "or rebuild it (python -m bench.world reference)") from None
            if meta.pop("format", None) != self.FORMAT:
                raise RecordError(f"{self.path} is not a reference pack ({self.FORMAT})")
            grouped: dict[str, dict[str, torch.Tensor]] = {}
            for name, value in flat.items():
                rel, _, key = name.rpartition(self.SEP)
                grouped.setdefault(rel, {})[key] = value
            self._tensors, self._texts = grouped, meta
        return self._tensors

    def tensors(self, rel: str) -> dict[str, torch.Tensor] | None:
        return self._load().get(rel)

    def text(self, rel: str) -> str | None:
        self._load()
        return self._texts.get(rel)

    @classmethod
    def write(cls, folder: Path, out: Path, keep: ReferencePack | None = None,
              max_entry_bytes: int | None = None) -> dict[str, int]:
        """Pack a reference folder (its ``*.safetensors`` and ``*.json``) into ``out``, after what the pack
        ``keep`` holds (the folder's entries win); counts of each. ``max_entry_bytes``: an entry (one
        file's tensors) larger than this is left out, so runs that need it compute it (P4D's reference
        predictions, 0.6 MB per concept on world 3); images are always packed."""
        flat: dict[str, torch.Tensor] = {}
        meta = {"format": cls.FORMAT}
        if keep is not None:
            for rel, tensors in keep._load().items():
                flat.update({f"{rel}{cls.SEP}{k}": v for k, v in tensors.items()})
            meta.update(keep._texts)
        left_out = 0
        for path in sorted(folder.rglob("*")):
            if ".tmp" in path.name or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            if path.suffix == ".safetensors":
                tensors = load_file(str(path))
                size = sum(v.numel() * v.element_size() for v in tensors.values())
                if max_entry_bytes is not None and size > max_entry_bytes and "image" not in tensors:
                    left_out += 1
                    continue
                for key, value in tensors.items():
                    flat[f"{rel}{cls.SEP}{key}"] = value.contiguous()
            elif path.suffix == ".json":
                meta[rel] = path.read_text(encoding="utf-8")
        _save_tensors(out, dict(sorted(flat.items())), meta)
        return {"tensor entries": len({name.rpartition(cls.SEP)[0] for name in flat}), "records": len(meta) - 1,
                "left out": left_out}


class ReferenceCache:
    """The original model's references, computed once per (model, prompt, seed, sampler): images, and
    the attacks' references (``bench.run.attacking``) under the same folder. A ``pack`` (what the world
    ships) answers what the folder lacks; what is computed is written to the folder only."""

    def __init__(self, folder: Path, model_sha256: str, sampler: SamplerSpec,
                 pack: ReferencePack | None = None) -> None:
        self.folder = Path(folder)
        self.prefix = {"model": model_sha256, "sampler": sampler.to_dict()}
        self.pack = pack
        self.generated = 0  # images this cache generated (not found in the folder or the pack)

    def image_rel(self, prompt: str, seed: int) -> str:
        """Where the image of (prompt, seed) is stored, relative to the folder (and named in the pack)."""
        key = hashlib.sha256(canonical_json({**self.prefix, "prompt": prompt, "seed": seed}).encode()).hexdigest()
        return f"{key[:2]}/{key[:24]}.safetensors"

    def tensors(self, rel: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``rel`` (the folder first, then the pack), or None."""
        path = self.folder / rel
        if path.is_file():
            return load_file(str(path))
        return self.pack.tensors(rel) if self.pack is not None else None

    def text(self, rel: str) -> str | None:
        """The JSON text stored under ``rel`` (the folder first, then the pack), or None."""
        path = self.folder / rel
        if path.is_file():
            return path.read_text(encoding="utf-8")
        return self.pack.text(rel) if self.pack is not None else None

    def put_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        _save_tensors(self.folder / rel, {k: v.contiguous() for k, v in tensors.items()}, metadata)

    def put_json(self, rel: str, record: Any) -> None:
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)

    def _image(self, rel: str) -> torch.Tensor | None:
        path = self.folder / rel
        if path.is_file():
            return _load_cached(path)
        found = self.pack.tensors(rel) if self.pack is not None else None
        return None if found is None else _checked(found.get("image"), self.pack.path)

    def get_or_generate(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], sampler: SamplerSpec,
                        batch_size: int = 64, progress: Any = None) -> torch.Tensor:
        """Cached images where present; a batch with any missing image is generated whole."""
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
            rels = [self.image_rel(a, b) for a, b in zip(p, s, strict=True)]
            have = [self._image(rel) for rel in rels]
            if all(h is not None for h in have):
                out.append(torch.stack(have))
                if progress is not None:
                    progress.update(len(p))
                continue
            fresh = generate(pipe, p, s, sampler, batch_size, progress)
            self.generated += len(p)
            for j, rel in enumerate(rels):
                if have[j] is not None:  # keep what earlier cells were judged on
                    fresh[j] = have[j]
                    continue
                self.put_tensors(rel, {"image": fresh[j]}, {"prompt": p[j], "seed": str(s[j])})
            out.append(fresh)
        return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
