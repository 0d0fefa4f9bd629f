"""Prompt length: a prompt longer than the text encoder's window is an error, never a silent cut.

CLIP's tokenizer keeps 77 tokens (start and end included) and the pipeline drops the rest, so a
long concept name would erase (or judge) something other than what was asked. Every prompt a cell
or an erase encodes (concept templates, synonyms, retain prompts, attack prompts) is counted
before any work; ``truncate=True`` (``--truncate-prompts``) records the cuts instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import InputError

FALLBACK_MAX_LENGTH = 77  # CLIP's window, for tokenizers that do not state theirs


def load_tokenizer(model: str | os.PathLike) -> Any:
    """The pipeline folder's own tokenizer (``tokenizer/``), else SD's CLIP tokenizer (a hub id)."""
    folder = Path(str(model)).expanduser() / "tokenizer"
    if folder.is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:  # transformers raises many types for a broken folder
            raise InputError(f"cannot load the tokenizer in {folder}: {e}") from None
    from bench.model.tokenizer import cached_clip_tokenizer

    return cached_clip_tokenizer()


def max_tokens(tokenizer: Any) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 100_000 else FALLBACK_MAX_LENGTH


def _short(text: str, keep: int = 60) -> str:
    return repr(text) if len(text) <= keep else f"{text[:keep]!r}... ({len(text):,} characters)"


def check_prompts(tokenizer: Any, items: Iterable[tuple[str, str, int]], truncate: bool = False) -> list[dict]:
    """``items``: (what it is, prompt, tokens reserved beside it). Raises ``InputError`` for the first
    prompt over the window; with ``truncate`` returns a record of every cut instead."""
    limit = max_tokens(tokenizer)
    items = list(dict.fromkeys(items))
    if not items:
        return []
    counts = [len(ids) for ids in tokenizer([p for _, p, _ in items], verbose=False).input_ids]
    cuts = []
    for (where, prompt, reserved), n in zip(items, counts, strict=True):
        room = limit - reserved
        if n <= room:
            continue
        if not truncate:
            raise InputError(f"{where} {_short(prompt)} is {n} tokens, over the text encoder's limit of {room} "
                             "(it would be cut silently); shorten it, or pass --truncate-prompts to record the cut")
        cuts.append({"where": where, "prompt": prompt, "tokens": n, "kept": room})
    return cuts


def erase_prompts(concept: Any) -> list[tuple[str, str, int]]:
    """What an erasure encodes: every template filled with the concept's name."""
    return [(f"concept {_short(concept.name, 40)} prompt", p, 0) for p in concept.prompts()]


def cell_prompts(plan: Sequence[tuple[str, Any, str]], concept: Any, attacks: dict[str, Any]) -> list[tuple[str, str, int]]:
    """What one cell encodes: the erase prompts, the evaluation plan, and every attack's prompts."""
    items = erase_prompts(concept)
    name_ = _short(concept.name, 40)
    items += [(f"{group} prompt of concept {name_}", prompt, 0) for group, _, prompt in plan]
    for name, attack in attacks.items():
        items += [(f"{name} attack prompt of concept {name_}", prompt, reserved)
                  for prompt, reserved in attack.text_prompts(concept)]
    return items
