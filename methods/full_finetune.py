"""Full fine-tune baseline: Fuchi & Takagi's objective with *everything* trainable.

Same negated denoising loss, data, prompts and step budget as ``fuchi``, but every parameter of
the text encoder and the UNet trains (the VAE only encodes the images). It is the heavyweight
reference: its storage is a whole model and it shows what unconstrained ascent costs in
collateral damage. The learning rate is a separate field (default 1e-5, to be tuned on dev
concepts, not test ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.api.edit import pipeline_parameters
from bench.api.method import Knob
from bench.model.ascent import AscentConfig, AscentEraser


@dataclass(frozen=True)
class FullFinetuneConfig(AscentConfig):
    """Fuchi's data and step budget; its own class so its JSON names the method."""


class FullFinetune(AscentEraser):
    name = "full_finetune"
    version = "1"
    Config = FullFinetuneConfig
    # world 3's dev ladder: UA 0.06 at 5e-5, 0.85 at 4e-4 (reports/tuned/conceptworld3.json)
    strength = (Knob("lr", 5e-5, 8e-4, help="Adam learning rate of the gradient ascent (every parameter)",
                     ranges={"conceptworld3": (2.5e-5, 4e-4)}),
                Knob("epochs", 1, 16, integer=True, help="passes over the few-shot images"))

    def edited_parameters(self, pipe: Any) -> list[str]:
        return sorted(pipeline_parameters(pipe, ("text_encoder", "unet")))


METHOD = FullFinetune
