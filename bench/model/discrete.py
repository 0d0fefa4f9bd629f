"""Discrete-token tools shared by the attacks that must end on real vocabulary tokens.

- ``slot_ids`` / ``encode_with_slots``: a prompt's ids with token slots whose input embeddings a
  forward hook replaces (gradients reach the replacement; the model's weights are never touched);
- ``project_simplex``: the Euclidean projection of each row onto the probability simplex, by bisection;
- ``SampledOneHot``: a one-hot drawn from a row of probabilities, with a straight-through backward;
- ``nearest_tokens``: each vector's nearest vocabulary embedding by cosine;
- ``decode_ids``: ids to the text a user can type (special tokens dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.model.pipeline import pipeline_device


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(start, end) token ids."""
    return int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's own token ids, without start and end tokens."""
    return list(tokenizer(prompt, add_special_tokens=False).input_ids)


def slot_ids(tokenizer: Any, before: Sequence[int], k: int, after: Sequence[int], pad: int | None = None
             ) -> tuple[torch.Tensor, slice]:
    """``[start, *before, k slots, *after, end, pad...]`` cut to the model's window, and the slots'
    positions. Slots hold the end id until a hook fills them; ``pad`` defaults to the end id."""
    start, end = special_ids(tokenizer)
    n = tokenizer.model_max_length
    ids = [start, *before, *([end] * k), *after, end]
    if len(ids) > n:
        from bench.core.errors import InputError

        raise InputError(f"{len(ids)} tokens with {k} attack slots exceed the {n}-token window")
    ids += [end if pad is None else pad] * (n - len(ids))
    return torch.tensor(ids), slice(1 + len(before), 1 + len(before) + k)


def encode_with_slots(pipe: Any, ids: torch.Tensor, slots: slice, vectors: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``ids`` (N x L) whose ``slots`` embed to ``vectors`` (k x D, or N x k x D)."""
    te = pipe.text_encoder

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, slots] = vectors.to(out.dtype)
        return out

    handle = te.get_input_embeddings().register_forward_hook(hook)
    try:
        return te(ids.to(pipeline_device(pipe)))[0]
    finally:
        handle.remove()


def project_simplex(a: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    """Each row of ``a`` projected onto {p : 0 <= p <= 1, sum p = 1}: p = clip(a - mu, 0, 1) with mu
    found by bisection to ``tol`` (kept as it is when its clipped sum is already within ``tol`` of 1)."""
    out = a.clone()
    for i, row in enumerate(a):
        if abs(float(row.clamp(0, 1).sum()) - 1) <= tol:
            out[i] = row.clamp(0, 1)
            continue
        lo, hi = float(row.min()) - 1, float(row.max())
        while hi - lo > tol:
            mu = (lo + hi) / 2
            if float((row - mu).clamp(0, 1).sum()) > 1:
                lo = mu
            else:
                hi = mu
        out[i] = (row - (lo + hi) / 2).clamp(0, 1)
    return out


class SampledOneHot(torch.autograd.Function):
    """Forward: one token per row drawn from the row's probabilities, as a one-hot; backward: the
    gradient passed straight through, clipped to [-1, 1]."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(probs.detach().cpu().float(), 1, generator=generator).squeeze(1).to(probs.device)
        return torch.nn.functional.one_hot(idx, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.nn.functional.hardtanh(grad), None


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Ids of the vocabulary embeddings nearest to each vector by cosine similarity."""
    v = torch.nn.functional.normalize(vectors.float(), dim=-1)
    t = torch.nn.functional.normalize(table.float(), dim=-1)
    return (v @ t.T).argmax(-1)


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of ``ids`` with start, end and padding tokens dropped (what a user would type)."""
    start, end = special_ids(tokenizer)
    return tokenizer.decode([int(i) for i in ids if int(i) not in (start, end)]).strip()
