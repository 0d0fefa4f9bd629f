"""The world's training data: scenes drawn in order from a seed, rendered in parallel, saved and loaded as
safetensors sets, and images passed through the world's VAE."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from bench.world.render import HEADS, Scene, Vocabulary, render_scene, sample_scene


def render_set(seed: int, n: int, character_prob: float, desc: str,
               workers: int | None = None, vocab: Vocabulary | None = None) -> tuple[np.ndarray, list[Scene]]:
    """Scenes are drawn here, in order, from ``seed``; only the pixels are rendered in parallel
    (default: one worker per torch thread for large sets), so the result does not depend on ``workers``."""
    scenes = sample_scenes(seed, n, character_prob, vocab)
    return render_scenes(scenes, desc, workers), scenes


def sample_scenes(seed: int, n: int, character_prob: float, vocab: Vocabulary | None = None) -> list[Scene]:
    """``n`` scenes of ``vocab`` drawn in order from ``seed`` (what ``render_set`` renders)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, character_prob=character_prob, vocab=vocab) for _ in range(n)]


def render_scenes(scenes: list[Scene], desc: str, workers: int | None = None) -> np.ndarray:
    """Render ``scenes`` in order (in parallel for large sets; the result does not depend on ``workers``)."""
    n = len(scenes)
    if workers is None:
        workers = min(torch.get_num_threads(), os.cpu_count() or 1) if n >= 4096 else 1
    if workers < 2:
        return np.stack([render_scene(s) for s in tqdm(scenes, desc=desc, mininterval=5)])
    chunk = max(1, min(500, n // workers))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        images = list(tqdm(pool.map(render_scene, scenes, chunksize=chunk), total=n, desc=desc, mininterval=5))
    return np.stack(images)


def save_set(path: Path, images: np.ndarray, scenes: list[Scene]) -> None:
    labels = {h: np.array([s.labels()[h] for s in scenes], np.int64) for h in HEADS}
    np.savez(path, images=images, **{f"label_{h}": v for h, v in labels.items()})
    path.with_suffix(".scenes.json").write_text(json.dumps([s.to_dict() for s in scenes]))


def load_set(path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[Scene]]:
    z = np.load(path)
    scenes = [Scene(**{**d, "background": tuple(d["background"])})
              for d in json.loads(path.with_suffix(".scenes.json").read_text())]
    images = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return images, {h: torch.from_numpy(z[f"label_{h}"]) for h in HEADS}, scenes


@torch.no_grad()
def vae_roundtrip(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Encode -> decode (posterior mean), as generated images come out of the decoder."""
    out = [vae.decode(vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean).sample
           for i in range(0, len(images), batch)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def fp16_files(folder: Path) -> None:
    """Store weights in fp16 (half the size); configs still say float32, so they load as fp32."""
    for f in folder.glob("*.safetensors"):
        save_file({k: v.half().contiguous() for k, v in load_file(f).items()}, f)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
