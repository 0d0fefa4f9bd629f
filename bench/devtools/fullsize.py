"""One step of a method on a full-size, randomly initialised SD v1.5 or v2.1 pipeline, on the CPU.

No weights are needed: the pipelines are built from the published architectures (UNet, VAE and text
encoder shapes of SD v1.5 and v2.1) with random values, so what is measured is memory and the code
path at real size, not erasure quality. Each method's step budget is cut to one optimiser step (UCE:
its closed form) with ``ONE_STEP``; the peak resident memory of the process is what the README's cost
table reports. Run one method per process (peak memory never goes down)::

    python -m bench.devtools.fullsize --arch sd15 --method esd@x
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

# One optimiser step and the least sampling that still runs every phase of the method.
ONE_STEP: dict[str, dict[str, Any]] = {
    "fuchi": {"epochs": 1, "batch_size": 1},
    "lora_eraser": {"ti_steps": 1, "steps": 1},
    "full_finetune": {"epochs": 1, "batch_size": 1},
    "uce": {},
    "negative_prompt": {},
    "rece": {"rounds": 1},
    "esd": {"iterations": 1, "steps": 2},
    "concept_ablation": {"steps": 1, "batch_size": 1, "anchor_steps": 1},
    "advunlearn": {"iterations": 1, "warmup": 0, "attack_steps": 1, "retain_batch": 1, "steps": 2},
}

ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {"unet": {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
             "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "hidden_act": "quick_gelu"},
             "prediction_type": "epsilon"},
    "sd21": {"unet": {"sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                      "use_linear_projection": True},
             "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                      "num_attention_heads": 16, "hidden_act": "gelu"},
             "prediction_type": "v_prediction"},
}


def build_full_size(arch: str, seed: int = 0) -> Any:
    """A randomly initialised StableDiffusionPipeline with SD v1.5's or v2.1's architecture."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.model.tokenizer import cached_clip_tokenizer

    spec = ARCHS[arch]
    tokenizer = cached_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        **spec["unet"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=spec["unet"]["sample_size"] * 8)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=spec["prediction_type"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def one_step(arch: str, spec: str) -> dict[str, Any]:
    """Build the pipeline, run one step of ``spec``, restore; sizes, seconds and peak memory."""
    from PIL import Image

    from bench.api.method import build_method
    from bench.core.concepts import Concept

    t0 = time.perf_counter()
    pipe = build_full_size(arch)
    built_gb, build_s = peak_rss_gb(), time.perf_counter() - t0
    method = build_method(spec, ONE_STEP[spec.partition("@")[0]])
    side = 8 * pipe.unet.config.sample_size
    images = [Image.new("RGB", (side, side), (200, 40 + 50 * i, 90)) for i in range(2)]
    concept = Concept("cat", preserve=("a photo of a dog",))
    edit = method.erase(pipe, concept, images, seed=0)
    finite = all(torch.isfinite(v).all().item() for v in edit.tensors.values())
    edit.restore()
    return {"arch": arch, "method": spec, "params": {c: sum(p.numel() for p in getattr(pipe, c).parameters())
                                                     for c in ("unet", "text_encoder", "vae")},
            "trainable_params": edit.trainable_params, "storage_bytes": edit.storage_bytes,
            "seconds": round(edit.seconds, 1), "build_seconds": round(build_s, 1), "finite": finite,
            "pipeline_gb": round(built_gb, 2), "peak_gb": round(peak_rss_gb(), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.devtools.fullsize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    ap.add_argument("--method", required=True, help="method spec, e.g. esd@x")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(one_step(args.arch, args.method)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
