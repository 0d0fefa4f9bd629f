"""Fuchi & Takagi (BMVC 2024): few-shot unlearning of the text encoder.

Gradient *ascent* on the textual-inversion denoising loss of a few concept images, prompted
with the concept's plain name in random templates; UNet and VAE frozen (the VAE only encodes
the images once). Defaults follow the authors' code: Adam lr 1e-5, betas (0.9, 0.98), eps 1e-6,
weight decay 1e-8, batch 2, 4 epochs over the images.

Trainable set (``trainable``):
- ``stated`` (default): every text-encoder MLP (fc1, fc2, weights and biases) plus the last
  layer's self-attention (q/k/v/out) — the method as the paper states it;
- ``paper_era``: the whole text encoder, embeddings and final LayerNorm included — what the
  published code trained, because of a ``require_grad`` typo.

Choices the authors leave unstated, exposed as config fields: the image size (``resolution``,
default: the pipeline's native size, i.e. 512 on SD v1), whether latents are sampled from the
VAE posterior or its mean (``latent_sample``), Adam vs AdamW (``optimizer``; Adam as stated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from bench.api.edit import pipeline_parameters
from bench.api.method import Knob
from bench.model.ascent import AscentConfig, AscentEraser

_MLP = re.compile(r"layers\.(\d+)\.mlp\.(fc1|fc2)\.")
_ATTN = re.compile(r"layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.")


@dataclass(frozen=True)
class FuchiConfig(AscentConfig):
    trainable: Literal["stated", "paper_era"] = "stated"


def text_encoder_layers(pipe: Any) -> int:
    return int(pipe.text_encoder.config.num_hidden_layers)


class Fuchi(AscentEraser):
    name = "fuchi"
    version = "1"
    Config = FuchiConfig
    # world 3's dev ladder: UA 0.23 at 5e-4, 0.94 at 2e-3 (reports/tuned/conceptworld3.json)
    strength = (Knob("lr", 1e-3, 1.6e-2, help="Adam learning rate of the gradient ascent",
                     ranges={"conceptworld3": (1.25e-4, 2e-3)}),
                Knob("epochs", 1, 16, integer=True, help="passes over the few-shot images"))
    variants = {"paper_era": {"trainable": "paper_era"}}

    def edited_parameters(self, pipe: Any) -> list[str]:
        te = pipeline_parameters(pipe, ("text_encoder",))
        if self.config.trainable == "paper_era":
            return sorted(te)
        last = text_encoder_layers(pipe) - 1
        keep = []
        for name in te:
            if _MLP.search(name):
                keep.append(name)
            else:
                m = _ATTN.search(name)
                if m and int(m.group(1)) == last:
                    keep.append(name)
        return sorted(keep)


METHOD = Fuchi
