"""What the closed-form cross-attention edits (UCE, RECE) and the probes of them share: the UNet's
cross-attention key and value projections, a prompt's word-token state, and UCE's prompt expansion."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from bench.model.pipeline import pipeline_device

KV_WEIGHT = re.compile(r"^unet\..*attn2\.to_[kv]\.weight$")
# UCE's prompt expansion (unified-concept-editing uce_sd_erase.py L155-190, RECE's train_uce.py L231-245),
# our wording of the authors' two template sets: style concepts take the art set
ART_TEMPLATES = ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}")
OBJECT_TEMPLATES = ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}")


def expansion_templates(concept_type: str) -> tuple[str, ...]:
    """UCE's templates for a concept of ``concept_type``."""
    return ART_TEMPLATES if concept_type == "style" else OBJECT_TEMPLATES


def kv_parameter_names(pipe: Any) -> list[str]:
    """Every UNet cross-attention ``to_k``/``to_v`` weight, named ``unet.<path>``, sorted."""
    from bench.api.edit import pipeline_parameters

    return sorted(n for n in pipeline_parameters(pipe, ("unet",)) if KV_WEIGHT.match(n))


def kv_parameters(pipe: Any, method: str) -> dict[str, torch.nn.Parameter]:
    """Those weights as parameters; a one-line error naming ``method`` when the pipeline has none."""
    from bench.api.edit import pipeline_parameters
    from bench.core.errors import InputError

    every = pipeline_parameters(pipe)
    params = {n: every[n] for n in kv_parameter_names(pipe)}
    if not params:
        raise InputError(f"{method} edits UNet cross-attention (attn2.to_k/to_v); this pipeline has none")
    return params


def kv_matrix(pipe: Any) -> torch.Tensor:
    """Those weights stacked, in ``kv_parameter_names`` order: (sum of their output widths) x text width."""
    from bench.api.edit import resolve_parameter

    names = kv_parameter_names(pipe)
    if not names:
        raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k/to_v)")
    return torch.cat([resolve_parameter(pipe, n).detach().float() for n in names])


def word_embeddings(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(n, d): the text encoder's last hidden state at each prompt's last word token."""
    tok = pipe.tokenizer
    enc = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")
    ids = enc.input_ids.to(pipeline_device(pipe))
    hidden = pipe.text_encoder(ids)[0]
    idx = enc.attention_mask.sum(dim=1) - 2  # the token before end-of-text (start token for "")
    return hidden[torch.arange(len(prompts)), idx.to(hidden.device)].float()
