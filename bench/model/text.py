"""Text-conditioning tricks shared by methods and attacks: one token's embedding swapped in
(``token_override``, ``encode_with_token``), a learnt token (``learn_token_embedding``, textual inversion),
continuous prefix vectors (``encode_with_prefix``), and CLIP's pooled embedding across transformers versions."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from bench.core.errors import ConfigError
from bench.model.guards import check_losses
from bench.model.pipeline import pipeline_device
from bench.model.training import denoising_loss, encode_prompts, noise_scheduler, only_trainable, prompt_batch


def single_token_id(tokenizer: Any, word: str) -> int:
    """Id of ``word`` when it is exactly one token (a placeholder must be one token)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ConfigError(f"placeholder {word!r} is {len(ids)} tokens for this tokenizer; pick a single-token word")
    return ids[0]


@contextlib.contextmanager
def token_override(text_encoder: Any, token_id: int, embedding: torch.Tensor) -> Iterator[None]:
    """Make ``token_id`` embed to ``embedding`` without touching the embedding table.

    A forward hook substitutes the vector, so the tokenizer and the model weights stay
    exactly as they were (and gradients flow into ``embedding`` when it requires them).
    """
    table = text_encoder.get_input_embeddings()

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = (args[0] == token_id).unsqueeze(-1)
        return torch.where(mask, embedding.to(output.dtype), output)

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def learn_token_embedding(
    pipe: Any,
    latents: torch.Tensor,
    templates: Sequence[str],
    placeholder: str,
    init_word: str,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    rng: random.Random,
    progress: bool = False,
) -> torch.Tensor:
    """Textual inversion: a token embedding that makes the frozen model reconstruct ``latents``.

    Only the new vector trains; the model's weights are not modified.
    """
    from tqdm.auto import tqdm

    tok, te = pipe.tokenizer, pipe.text_encoder
    token_id = single_token_id(tok, placeholder)
    table = te.get_input_embeddings().weight
    init_ids = tok(init_word, add_special_tokens=False).input_ids or [token_id]
    vector = table[init_ids].detach().float().mean(0).clone().requires_grad_(True)
    opt = torch.optim.AdamW([vector], lr=lr, weight_decay=0.0)
    sched = noise_scheduler(pipe)
    with only_trainable(pipe, {}), token_override(te, token_id, vector):
        for step in tqdm(range(steps), desc="textual inversion", disable=not progress, leave=False):
            idx = torch.randint(0, latents.shape[0], (min(batch_size, latents.shape[0]),), generator=generator)
            cond = encode_prompts(pipe, prompt_batch(rng, templates, placeholder, len(idx)))
            loss = denoising_loss(pipe, sched, latents[idx], cond, generator)
            check_losses([loss.item()], "textual-inversion loss", first_step=step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return vector.detach()


def encode_with_prefix(pipe: Any, prompts: Sequence[str], prefix: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``prompts`` with ``k`` free token vectors placed right after the start token.

    The ids get ``k`` filler slots; a forward hook on the token embedding writes ``prefix`` there,
    so gradients reach ``prefix`` and the model's weights are never touched.
    """
    tok, te = pipe.tokenizer, pipe.text_encoder
    k = prefix.shape[0]
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length - k, truncation=True,
              return_tensors="pt").input_ids
    filler = torch.full((ids.shape[0], k), tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids = torch.cat([ids[:, :1], filler, ids[:, 1:]], dim=1).to(pipeline_device(pipe))

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, 1 : 1 + k] = prefix.to(out.dtype)
        return out

    handle = te.get_input_embeddings().register_forward_hook(hook)
    try:
        return te(ids)[0]
    finally:
        handle.remove()


def encode_with_token(pipe: Any, prompts: Sequence[str], placeholder: str, embedding: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``prompts`` in which the single-token word ``placeholder`` means ``embedding``."""
    token_id = single_token_id(pipe.tokenizer, placeholder)
    with token_override(pipe.text_encoder, token_id, embedding):
        return encode_prompts(pipe, prompts)


def pooled_embedding(out: Any) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; 5.x an output whose ``pooler_output`` it is."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
