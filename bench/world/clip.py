"""The world CLIP as a run loads it: ``load_world_clip`` (a whole ``CLIPModel`` folder or a shipped world's
image tower plus its checked text tower), image and text embeddings, and zero-shot labels per judge head.

How it is trained is ``bench.worldgen.clip_train``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.model.text import pooled_embedding
from bench.world.render import NONE_CHARACTER, WORLD2, Scene, Vocabulary

# zero-shot prompts per judge head (``zero_shot``)
ZERO_SHOT = {"object": "a picture of a {}", "colour": "a picture of a {} shape", "style": "a picture of a {} shape",
             "character": "a picture of {}"}
ZERO_SHOT_NONE = {"character": "a picture of a shape"}  # the label "none" of the character head


class CaptionTokens:
    """Token ids per distinct caption (cached), padded to the longest caption of each batch: the
    contrastive loss reads only the pooled (end-of-text) state, so the 77-token padding the UNet's
    conditioning needs would only cost time here (captions are under 20 tokens)."""

    def __init__(self) -> None:
        from bench.model.tokenizer import MAX_LENGTH, cached_clip_tokenizer

        # one tokenizer per process (it is only read; building one takes about a second)
        self.tok, self.max_length = cached_clip_tokenizer(), MAX_LENGTH
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tok(missing, max_length=self.max_length, truncation=True).input_ids
            self.cache.update(zip(missing, ids, strict=True))
        rows = [self.cache[c] for c in captions]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r)
            mask[k, : len(r)] = 1
        return ids, mask


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to the CLIP mean/std the judge's loader uses (``bench.judges.clip``)."""
    import open_clip

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def image_embeddings(model: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unit-norm image embeddings of images in [0, 1] (N x projection); differentiable (training
    uses it too), so callers that only judge wrap it in ``torch.no_grad``."""
    return torch.cat([F.normalize(pooled_embedding(model.get_image_features(pixel_values=normalise(images[i : i + batch]))),
                                  dim=-1) for i in range(0, len(images), batch)])


def text_embeddings(model: Any, prompts: list[str], captions: CaptionTokens | None = None) -> torch.Tensor:
    """Unit-norm text embeddings (pooled at the end-of-text token) of ``prompts``; ``captions``: a
    token cache to reuse (training keeps one for the whole run)."""
    ids, mask = (captions or CaptionTokens())(prompts)
    return F.normalize(pooled_embedding(model.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)


@torch.no_grad()
def prompt_embeddings(model: Any, vocab: Vocabulary = WORLD2) -> dict[str, torch.Tensor]:
    """Per judge head of ``vocab``: the text embedding of each label's zero-shot prompt
    (``ZERO_SHOT``; character "none" is "a picture of a shape"), in the head's class order."""
    return {head: text_embeddings(model, [ZERO_SHOT_NONE[head] if (head in ZERO_SHOT_NONE and n == NONE_CHARACTER)
                                          else ZERO_SHOT[head].format(n) for n in names])
            for head, names in vocab.heads.items()}


def labels_from(emb: torch.Tensor, prompts: dict[str, torch.Tensor], vocab: Vocabulary = WORLD2) -> dict[str, list[str]]:
    """Per head: the label whose prompt embedding is nearest each image embedding."""
    return {head: [vocab.heads[head][k] for k in (emb @ txt.T).argmax(-1).tolist()] for head, txt in prompts.items()}


@torch.no_grad()
def zero_shot_labels(model: Any, images: torch.Tensor, vocab: Vocabulary = WORLD2, batch: int = 256
                     ) -> dict[str, list[str]]:
    """Per judge head of ``vocab``: the label whose zero-shot prompt scores highest against each image."""
    return labels_from(image_embeddings(model, images, batch), prompt_embeddings(model, vocab), vocab)


def zero_shot(model: Any, images: torch.Tensor, scenes: list[Scene], batch: int = 256,
              vocab: Vocabulary = WORLD2) -> dict[str, float]:
    """Per judge head: the share of images whose true label's prompt scores highest among the
    head's labels (``zero_shot_labels``)."""
    got = zero_shot_labels(model, images, vocab, batch)
    return {head: float(np.mean([g == s.names()[head] for g, s in zip(labels, scenes, strict=True)]))
            for head, labels in got.items()}


IMAGE_TOWER = "image_tower.safetensors"  # a shipped world's clip/: every weight but the text tower's


def load_world_clip(folder: Path) -> tuple[Any, str]:
    """The world CLIP in ``folder`` and a version hash of its weights: a whole ``CLIPModel`` folder (what
    training writes) or a shipped one (``ship_world_clip``), whose text tower is checked against the
    sha256 it recorded. Raises ``ConfigError`` on a folder that is neither, or a tower that changed."""
    import hashlib

    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    from bench.api.config import ConfigError

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        model = CLIPModel.from_pretrained(folder, use_safetensors=True)
        return model.eval(), hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
    meta = json.loads((folder / "world_clip.json").read_text())
    if not (folder / IMAGE_TOWER).is_file() or "text_tower" not in meta:
        raise ConfigError(f"{folder} holds no world CLIP (neither model.safetensors nor {IMAGE_TOWER} with a text tower)")
    tower = (folder / meta["text_tower"]["path"] / "model.safetensors").resolve()
    if not tower.is_file():
        raise ConfigError(f"world CLIP {folder}: its text tower {tower} is missing")
    if hashlib.sha256(tower.read_bytes()).hexdigest() != meta["text_tower"]["sha256"]:
        raise ConfigError(f"world CLIP {folder}: text tower {tower} is not the one it shipped with (sha256 differs)")
    model = CLIPModel(CLIPConfig.from_pretrained(folder))
    prefix = "text_model."
    state = {k: v.float() for k, v in load_file(folder / IMAGE_TOWER).items()}
    state.update({(k if k.startswith(prefix) else prefix + k): v.float() for k, v in load_file(tower).items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ConfigError(f"world CLIP {folder} does not fit its config: missing {missing}, extra {unexpected}")
    image = hashlib.sha256((folder / IMAGE_TOWER).read_bytes()).hexdigest()
    return model.eval(), hashlib.sha256((image + meta["text_tower"]["sha256"]).encode()).hexdigest()[:12]
