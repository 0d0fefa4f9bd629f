"""Erase one concept from a pipeline folder and write ``edit.safetensors`` + ``erase.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.api.method import build_method
from bench.core.concepts import Concept
from bench.core.envinfo import environment
from bench.core.errors import InputError, NonFiniteError
from bench.core.images import load_images
from bench.core.io import ensure_writable_dir, write_json
from bench.model.guards import check_finite
from bench.model.pipeline import load_pipeline, pipeline_device, pipeline_dtype
from bench.model.prompts import check_prompts, erase_prompts


def erase_to_folder(
    method_spec: str,
    model: str,
    concept_name: str,
    images: str | Path,
    out: Path,
    concept_type: str = "object",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    pipe: Any = None,
    truncate_prompts: bool = False,
) -> dict[str, Any]:
    """Validate every input first (a bad one writes nothing), erase, then write the record last.

    The record is written after the edit, so its presence means the folder is complete.
    """
    method = build_method(method_spec, overrides)
    concept = Concept(name=concept_name, type=concept_type)
    notes: list[str] = []
    pictures = load_images(images, notes)
    out = Path(out)
    if (out / "erase.json").exists() and not overwrite:
        raise InputError(f"output folder {out} already holds an erase record; pass --overwrite to replace it")
    if pipe is None:
        pipe = load_pipeline(model, device=device, dtype=dtype)
    cuts = check_prompts(pipe.tokenizer, erase_prompts(concept), truncate=truncate_prompts)
    ensure_writable_dir(out)
    try:
        edit = method.erase(pipe, concept, pictures, seed=seed)
        try:
            check_finite(edit.tensors, "edited weights")
        except NonFiniteError:
            edit.restore()
            raise
    except NonFiniteError as e:  # a diverged erase writes nothing: its weights are garbage
        raise e.named(method_spec, concept.name) from None
    edit.save(out / "edit.safetensors")
    record = {
        "method": method.name,
        "method_spec": method_spec,
        "method_version": method.version,
        "config": method.config.to_dict(),
        "concept": {"name": concept.name, "type": concept.type},
        "images": {"folder": str(Path(images).resolve()), "count": len(pictures), **({"notes": notes} if notes else {})},
        **({"prompt_truncations": cuts} if cuts else {}),
        "model": str(model),
        "seed": seed,
        "seconds": edit.seconds,
        "trainable_params": edit.trainable_params,
        "storage_bytes": edit.storage_bytes,
        "edited_parameters": len(edit.param_names),
        "edit_format": edit.format,
        "edit_file": "edit.safetensors",
        "info": edit.info,
        "dtype": str(pipeline_dtype(pipe)).replace("torch.", ""),
        "environment": environment(pipeline_device(pipe)),
    }
    write_json(out / "erase.json", record)
    record["_edit"] = edit
    return record
