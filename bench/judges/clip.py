"""A zero-shot CLIP judge (objects, styles, characters) and CLIP score, on open_clip or transformers.

The user supplies the model (no hub here), in either form:

- open_clip: ``--clip-model ViT-L-14 --clip-checkpoint /path/open_clip_model.safetensors``;
- a ``transformers`` ``CLIPModel`` folder (``config.json`` with ``model_type: clip``, safetensors
  weights, its tokenizer files if present): ``--clip-model /weights/clip-vit-large-patch14``, no
  checkpoint. ``openai/clip-vit-large-patch14`` saved this way is SD v1's own text encoder with its
  image tower.

A concept is detected when its prompt scores highest among the prompts of every concept of the
same type in the set plus a neutral prompt (so "none of these" is possible).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.api.judge import REJECT_LABEL, SCENE_HEAD, Judge, scene_labels
from bench.core.concepts import Concept, ConceptSet
from bench.core.errors import ConfigError, InputError
from bench.model.text import pooled_embedding

PROMPT = {"object": "a photo of a {}", "style": "a painting in the style of {}", "character": "a picture of {}",
          "colour": "a {} object"}
NEUTRAL = "a photo"
# composed prompts' attributes, checked zero-shot: the prompt per judge head (others: "a photo of {}")
ATTRIBUTE_PROMPT = {**PROMPT, "colour": "a photo of something {}", "setting": "a photo taken {}"}
# an image is rejected when one of these outscores every concept prompt of every type
REJECT_PROMPTS = ("a blank image", "an image of random noise", "a blurry image of nothing",
                  "a plain colour background")


class ClipJudge(Judge):
    reject_definition = ("zero-shot: one of the prompts " + ", ".join(f"'{p}'" for p in REJECT_PROMPTS)
                         + " outscores the prompt of every concept in the set")

    def __init__(self, model_name: str, checkpoint: str | None, concept_set: ConceptSet,
                 model: Any = None, batch_size: int = 32) -> None:
        if model is None and Path(model_name).is_dir():
            if checkpoint is not None:
                raise InputError(f"--clip-model {model_name} is a transformers CLIPModel folder; it takes no "
                                 "--clip-checkpoint (that is for open_clip model names)")
            self.tower: _Towers = _TransformersClip(Path(model_name))
        else:
            self.tower = _OpenClip(model_name, checkpoint, model)
        self.size, self.mean, self.std = self.tower.size, self.tower.mean, self.tower.std
        self.concept_set, self.batch_size = concept_set, batch_size
        self.id, self.version = self.tower.id, self.tower.version
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _text(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self._text_cache]
        if missing:
            emb = F.normalize(self.tower.encode_text(missing).float(), dim=-1)
            self._text_cache.update(zip(missing, emb, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def _image(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = F.interpolate(images[i : i + self.batch_size].float(), size=self.size, mode="bicubic",
                              antialias=True, align_corners=False).clamp(0, 1)
            x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
            out.append(F.normalize(self.tower.encode_image(x).float(), dim=-1))
        return torch.cat(out)

    def _candidates(self, concept: Concept) -> list[str]:
        if concept.type not in PROMPT:
            raise ConfigError(f"the CLIP judge has no prompt for concept type {concept.type!r}")
        names = [c.name for c in self.concept_set.concepts if c.type == concept.type]
        if concept.name not in names:
            names.append(concept.name)
        return names

    def _all_concepts(self) -> list[str]:
        return [PROMPT[c.type].format(c.name) for c in self.concept_set.concepts if c.type in PROMPT]

    def _reject(self, emb: torch.Tensor) -> torch.Tensor:
        concept_best = (emb @ self._text(self._all_concepts()).T).amax(-1)
        return (emb @ self._text(list(REJECT_PROMPTS)).T).amax(-1) > concept_best

    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        names = self._candidates(concept)
        prompts = [PROMPT[concept.type].format(n) for n in names] + [NEUTRAL]
        emb = self._image(images)
        sims = emb @ self._text(prompts).T
        return (sims.argmax(-1) == names.index(concept.name)) & ~self._reject(emb)

    def reject(self, images: torch.Tensor) -> torch.Tensor:
        return self._reject(self._image(images))

    def labels(self, images: torch.Tensor) -> dict[str, list[str]]:
        """Per concept type: the best concept of that type, or "other" when the neutral prompt wins."""
        emb = self._image(images)
        rejected = self._reject(emb).tolist()
        out = {SCENE_HEAD: scene_labels(torch.tensor(rejected, dtype=torch.bool))}
        for kind in sorted({c.type for c in self.concept_set.concepts if c.type in PROMPT}):
            names = [c.name for c in self.concept_set.concepts if c.type == kind]
            best = (emb @ self._text([PROMPT[kind].format(n) for n in names] + [NEUTRAL]).T).argmax(-1).tolist()
            out[kind] = [REJECT_LABEL if r else (names + ["other"])[k] for k, r in zip(best, rejected, strict=True)]
        return out

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._image(images)

    def _attribute_vocabulary(self) -> dict[str, list[str]]:
        """Per head: every label the concept set's composed prompts name under it (the candidates
        a zero-shot attribute check chooses among)."""
        vocab: dict[str, list[str]] = {}
        for c in self.concept_set.concepts:
            for comp in c.composed:
                for head, label in comp.attributes.items():
                    if label not in vocab.setdefault(head, []):
                        vocab[head].append(label)
        return vocab

    def sees(self, images: torch.Tensor, attributes: list[dict[str, str]]) -> torch.Tensor:
        """Zero-shot per named attribute: its label's prompt (``ATTRIBUTE_PROMPT`` of the head) scores
        highest among the labels the concept set names under that head and a neutral prompt; every
        attribute must win, on an image the judge does not reject. A head with fewer than two labels in
        the set cannot be checked zero-shot (an error, not a pass)."""
        if len(attributes) != len(images):
            raise ValueError(f"{len(images)} images but {len(attributes)} attribute sets")
        vocab = self._attribute_vocabulary()
        emb = self._image(images)
        ok = ~self._reject(emb)
        for head in sorted({h for a in attributes for h in a}):
            names = vocab.get(head, [])
            if len(names) < 2:
                raise ConfigError(f"the CLIP judge checks {head!r} zero-shot among the labels the concept set's "
                                  f"composed prompts name under it; it names {names}: at least two are needed")
            template = ATTRIBUTE_PROMPT.get(head, "a photo of {}")
            best = (emb @ self._text([template.format(n) for n in names] + [NEUTRAL]).T).argmax(-1)
            for i, attrs in enumerate(attributes):
                if head in attrs:
                    ok[i] &= bool(best[i] == names.index(attrs[head]))
        return ok

    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """100 x max(cosine(image, prompt), 0) per image, the usual CLIP score."""
        return 100 * (self._image(images) * self._text(prompts)).sum(-1).clamp(min=0)


def build(name: str, track: Any, concept_set: ConceptSet) -> ClipJudge:
    """The registry's factory: an open_clip model and checkpoint, or a transformers CLIPModel
    folder, named by the track."""
    if not track.clip_model:
        raise InputError("the CLIP judge needs --clip-model NAME --clip-checkpoint PATH (open_clip) or "
                         "--clip-model FOLDER (a transformers CLIPModel)")
    return ClipJudge(track.clip_model, track.clip_checkpoint, concept_set)


class _Towers:
    """A CLIP model's two towers as the judge uses them: unnormalised embeddings of prompts and of
    images already resized to ``size`` and normalised with ``mean``/``std``."""

    size: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor
    id: str
    version: str

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _OpenClip(_Towers):
    def __init__(self, model_name: str, checkpoint: str | None, model: Any = None) -> None:
        import open_clip

        if model is None:
            if checkpoint is None:
                raise InputError("the CLIP judge needs --clip-checkpoint PATH with an open_clip model name "
                                 "(no model hub is assumed), or --clip-model FOLDER of a transformers CLIPModel")
            try:
                model = open_clip.create_model(model_name, pretrained=checkpoint)
            except Exception as e:  # open_clip raises RuntimeError/ValueError/KeyError variously
                raise InputError(f"could not load open_clip model {model_name!r} from {checkpoint!r}: {e}") from e
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(getattr(self.model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.std = torch.tensor(getattr(self.model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.id, self.version = f"openclip-{model_name}", checkpoint_version(checkpoint)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def checkpoint_version(checkpoint: str | None) -> str:
    """An open_clip judge's version in run specs: a checkpoint file's sha256 (its content, wherever it lies;
    never its path), else the pretrained tag as given, or ``in-memory`` for a model passed in."""
    from bench.core.records import file_sha256

    if checkpoint is None:
        return "in-memory"
    path = Path(checkpoint).expanduser()
    return file_sha256(path)[:16] if path.is_file() else str(checkpoint)


class _TransformersClip(_Towers):
    """A ``CLIPModel`` folder (safetensors only). Its tokenizer files if it has them, else the CLIP
    BPE tokenizer rebuilt offline; mean/std from its ``preprocessor_config.json`` if present, else
    CLIP's own. The version is the sha256 of its files, so another checkpoint is another judge."""

    def __init__(self, folder: Path) -> None:
        import open_clip
        from transformers import CLIPModel, CLIPTokenizer

        from bench.core.records import model_fingerprint

        config = folder / "config.json"
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            raise InputError(f"--clip-model {folder}: no readable config.json ({e})") from None
        if model_type != "clip":
            raise InputError(f"--clip-model {folder}: config.json says model_type {model_type!r}, not 'clip' "
                             "(a transformers CLIPModel folder with both towers is needed)")
        try:
            self.model = CLIPModel.from_pretrained(folder, use_safetensors=True).eval()
        except Exception as e:  # transformers raises OSError/ValueError variously; name the folder and why
            raise InputError(f"could not load a CLIPModel (safetensors) from {folder}: {e}") from e
        if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
            self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        else:
            from bench.model.tokenizer import cached_clip_tokenizer

            self.tokenizer = cached_clip_tokenizer()
        vision = self.model.config.vision_config
        self.size = (vision.image_size, vision.image_size)
        pre = folder / "preprocessor_config.json"
        stats = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = torch.tensor(stats.get("image_mean") or open_clip.OPENAI_DATASET_MEAN)
        self.std = torch.tensor(stats.get("image_std") or open_clip.OPENAI_DATASET_STD)
        self.id, self.version = f"hfclip-{folder.resolve().name}", model_fingerprint(folder)[:16]
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return pooled_embedding(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                             attention_mask=tokens["attention_mask"]))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_embedding(self.model.get_image_features(pixel_values=x))


