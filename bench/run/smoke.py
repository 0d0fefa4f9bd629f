"""A mechanics check of every registered method on a tiny *random* pipeline.

It runs the real code path (pipeline folder -> from_pretrained -> erase -> edit + record), but a
random model knows no concept, so its numbers say that the machinery works and what it costs,
not how well anything is erased. The ConceptWorld benchmark answers that question.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.api.method import get_method, method_registry
from bench.core.concepts import Concept
from bench.model.pipeline import load_pipeline
from bench.model.training import concept_loss, encode_latents, images_to_tensor
from bench.run.erase import erase_to_folder


def method_specs() -> list[str]:
    """Every registered method and each of its named variants."""
    specs = []
    for name in method_registry().names():
        specs.append(name)
        specs.extend(f"{name}@{v}" for v in get_method(name).variants)
    return specs


def run_smoke(out: Path, seed: int = 0) -> list[dict]:
    from tqdm.auto import tqdm

    from bench.model.tiny import build_tiny_pipeline

    model_dir, image_dir = out / "tiny-model", out / "images" / "cat"
    if not (model_dir / "model_index.json").exists():
        build_tiny_pipeline(seed=seed).save_pretrained(model_dir, safe_serialization=True)
    pipe = load_pipeline(model_dir, device="cpu")
    concept = Concept("cat")
    if not image_dir.exists():
        image_dir.mkdir(parents=True)
        for i, im in enumerate(pipe(["a photo of a cat"] * 4, num_inference_steps=10, output_type="pil",
                                    generator=torch.Generator().manual_seed(seed)).images):
            im.save(image_dir / f"{i}.png")
    from bench.core.images import load_images

    latents = encode_latents(pipe, images_to_tensor(load_images(image_dir), 32, torch.Generator().manual_seed(seed), 0.0),
                             torch.Generator().manual_seed(seed), sample=False)
    rows = []
    print("tiny RANDOM pipeline: a mechanics check (code path, seconds, sizes), not an erasure-quality result")
    for spec in tqdm(method_specs(), desc="methods"):
        before = concept_loss(pipe, latents, concept.prompts(), seed=seed)
        rec = erase_to_folder(spec, str(model_dir), concept.name, image_dir, out / "edits" / spec.replace("@", "-"),
                              overrides=get_method(spec.partition("@")[0]).quick, seed=seed, overwrite=True, pipe=pipe)
        after = concept_loss(pipe, latents, concept.prompts(), seed=seed)
        rec.pop("_edit").restore()
        rows.append({"method": spec, "seconds": rec["seconds"], "trainable_params": rec["trainable_params"],
                     "storage_bytes": rec["storage_bytes"], "loss_before": before, "loss_after": after})
    print(f"{'method':<22}{'seconds':>9}{'trainable':>12}{'storage B':>12}{'loss before':>13}{'loss after':>12}")
    for r in rows:
        print(f"{r['method']:<22}{r['seconds']:>9.2f}{r['trainable_params']:>12,}{r['storage_bytes']:>12,}"
              f"{r['loss_before']:>13.5f}{r['loss_after']:>12.5f}")
    print(f"edits and records: {out / 'edits'}")
    return rows
