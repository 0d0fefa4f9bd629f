"""SD-NP: the negative prompt, the inference-time baseline every erasure paper answers to.

The concept's name replaces the empty prompt in classifier-free guidance's unconditional branch, so
each denoising step is pushed away from the concept instead of towards nothing::

    eps = eps(x, "") + g (eps(x, prompt) - eps(x, ""))      becomes
    eps = eps(x, c)  + g (eps(x, prompt) - eps(x, c))       with c the concept's text

No weight changes: the edit is a *sampling* edit (``bench.api.edit``, format ``sampling``). While it is
applied, every ordinary call of the pipeline (the harness's images and every attack's) samples with
the negative prompt, also where the caller passes the empty prompt's embeddings itself; ``restore()``
puts the plain sampling back. An attack that optimises against the UNet's denoising loss alone
(``soft_prefix``, ``inversion``) does not see the negative prompt while it trains, as an attacker of a
deployed model with a hidden negative prompt would not; its images are sampled with it.

Defaults, from diffusers 0.42.1, ``pipelines/stable_diffusion/pipeline_stable_diffusion.py``, the
pipeline the peers' SD-NP rows run (UnlearnDiffAtk's and AdvUnlearn's benchmarks, the ESD paper's
comparison):

| field | default | where |
|---|---|---|
| negative prompt | the concept's text (``template`` ``"{}"``) | ``encode_prompt``'s ``negative_prompt``, L455-472 |
| unconditional branch | the negative prompt's encoding, one per image | L476-492 |
| guidance | unchanged: the sampler's scale on ``eps(prompt) - eps(negative)`` | ``__call__``, L1055 |
| strength knob | none: the plain negative prompt has none, so its trade-off curve is one point | |

Choices the harness makes, as config fields: the text is the concept's name in ``template``; a
caller's own negative prompt is replaced by it, not joined to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from bench.api.config import MethodConfig
from bench.api.edit import Edit
from bench.api.method import Eraser
from bench.core.concepts import Concept


@dataclass(frozen=True)
class NegativePromptConfig(MethodConfig):
    template: str = field(default="{}", metadata={"help": "the negative prompt: the concept's text in this template"})

    def validate(self) -> None:
        self._require(self.template.count("{}") == 1,
                      f"template must contain exactly one '{{}}', got {self.template!r}")


class NegativePrompt(Eraser):
    name = "negative_prompt"
    version = "1"
    Config = NegativePromptConfig
    # not a denoising loss of the concept: the contract suite checks the judge on world images instead
    erasure_check: dict[str, Any] = {}
    inference_time = True
    no_strength_knob = "the plain negative prompt has no scale: the concept's text replaces the empty prompt"

    def edited_parameters(self, pipe: Any) -> list[str]:
        return []

    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Edit:
        text = self.config.template.format(concept.name)
        edit = Edit(method=self.name, config=self.config.to_dict(), format="sampling", tensors={},
                    trainable_params=0, seconds=0.0, sampling={"negative_prompt": text},
                    info={"method_version": self.version, "concept": concept.name, "seed": seed})
        return edit.apply(pipe)


METHOD = NegativePrompt
