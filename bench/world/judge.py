"""The ConceptWorld judges: one head per attribute, and a reject head for "no valid scene".

Two judges, built differently so that their mistakes differ (the second is the first's second
opinion, and the report flags the cells where they disagree):

- the **CNN** (``arch: cnn``): a conv stack with global mean+max pooling, local receptive fields
  growing layer by layer; trained with small affine distortions, blur and photometric noise;
- the **ViT** (``arch: vit``): a ``transformers`` ``ViTModel`` on 4x4 patches, attending across
  the whole image from its first layer; trained on other renders (another seed) with horizontal
  flips, translations and noise instead of affine distortions.

Both learn from rendered scenes whose textures are drawn a little off the world's own values
(``render.jitter_texture``), half of them passed through the world's VAE (encode -> decode) as
generated images are, plus synthetic non-scenes (``negatives.py``) labelled only on the reject
head. From judge 2.3 a share of the scenes has holes in its texture (the background showing through
the dark parts, as generated textured shapes often dissolve into their bright parts), and a judge
built with ``judge_unclear`` > 0 also learns a style class ``none`` from faint and blended textures
(``unclear.py``): "no style clearly present", which two judges can agree on where forcing a pick
makes them disagree. Images are float RGB in [0, 1]; the CNN's penultimate features feed KID/FID.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from bench.core.errors import ConfigError, InputError
from bench.world.render import WORLD2, Vocabulary
from bench.world.unclear import UNCLEAR_HEADS, UNCLEAR_LABEL

# 2.0: horizontal stripes, 5 px checks; 2.1: dots of radius 2.0 px; 2.2: reject head (synthetic
# non-scenes), trained on jittered textures, blur and distortions; a ViT second judge
# 2.3: judge scenes with holes in their textures (``Scene.holes``); with ``judge_unclear`` > 0, a
# style class "none" learnt from faint and blended textures (``unclear.py``)
# 2.4: the reject option calibrated to its definition: degraded but valid scenes (blur, noise, warps,
# cut-off, low contrast, ...; ``worldgen/degraded.py``) learnt as valid with every label, and
# characters drawn in other styles and colours, so the style and colour heads read what is drawn
# 2.5: one more degraded kind, "faded" (a washed-out frame lighter than any world background, colour bleeding
# and halos: how an over-trained text encoder's model draws), learnt as valid
JUDGE_VERSION = "2.5"
CONFIG_FILE = "judge_config.json"
WEIGHTS_FILE = "judge.safetensors"
REJECT_HEAD = "scene"
SCENE_CLASSES = ("valid", "none")  # "none": no valid scene, nothing of any attribute to judge


def judge_heads(vocab: Vocabulary, unclear: bool = True) -> dict[str, tuple[str, ...]]:
    """The class lists of a judge of ``vocab``'s world: its attribute heads (with ``unclear``, each
    open one, ``UNCLEAR_HEADS``, ends in a class ``none``: nothing of this type clearly present) and
    the reject head."""
    heads = {h: (*v, UNCLEAR_LABEL) if unclear and h in UNCLEAR_HEADS else v for h, v in vocab.heads.items()}
    return {**heads, REJECT_HEAD: SCENE_CLASSES}


JUDGE_HEADS = judge_heads(WORLD2, unclear=False)  # a default-built world-2 judge's (judge_unclear=0)
IGNORE = -100  # attribute label of a non-scene: only the reject head learns from it


class JudgeNet(nn.Module):
    """Conv stack -> global average and max pool -> one linear head per attribute."""

    arch = "cnn"

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), heads: dict[str, int] | None = None):
        super().__init__()
        heads = heads or {h: len(v) for h, v in JUDGE_HEADS.items()}
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.channels = tuple(channels)
        self.feature_dim = 2 * c_in
        self.heads = nn.ModuleDict({h: nn.Linear(self.feature_dim, n) for h, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x * 2 - 1)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {h: head(f) for h, head in self.heads.items()}

    def arch_config(self) -> dict:
        return {"channels": list(self.channels)}


class ViTJudgeNet(nn.Module):
    """A ``transformers`` ViT encoder (no pooler) -> [CLS, mean of patch tokens] -> linear heads."""

    arch = "vit"

    def __init__(self, vit: dict, heads: dict[str, int] | None = None):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        heads = heads or {h: len(v) for h, v in JUDGE_HEADS.items()}
        self.vit_config = dict(vit)
        cfg = ViTConfig(image_size=32, num_channels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        **self.vit_config)
        self.vit = ViTModel(cfg, add_pooling_layer=False)
        self.feature_dim = 2 * cfg.hidden_size
        self.heads = nn.ModuleDict({h: nn.Linear(self.feature_dim, n) for h, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vit(pixel_values=x * 2 - 1).last_hidden_state
        return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {h: head(f) for h, head in self.heads.items()}

    def arch_config(self) -> dict:
        return {"vit": self.vit_config}


def build_net(arch: str, arch_config: dict, heads: dict[str, int] | None = None) -> nn.Module:
    if arch == "cnn":
        return JudgeNet(tuple(arch_config["channels"]), heads)
    if arch == "vit":
        return ViTJudgeNet(arch_config["vit"], heads)
    raise ConfigError(f"unknown judge architecture {arch!r} (cnn, vit)")


DEFAULT_REJECT_THRESHOLD = 0.5  # the reject head's argmax: judges before 2.4 record no threshold


class WorldJudge:
    """Loads a judge and answers in class indices, probabilities, rejections or features.

    The reject head's verdict is "none" where its probability of "none" exceeds ``reject_threshold``
    (0.5, its argmax, unless the judge was calibrated: ``judge_build.calibrate_reject``); the threshold
    is stored beside the weights and is part of the judge's id."""

    def __init__(self, net: nn.Module, classes: dict[str, list[str]], version: str, sha256: str = "",
                 reject_threshold: float = DEFAULT_REJECT_THRESHOLD):
        self.net = net.eval()
        self.classes = classes
        self.version = version
        self.arch = getattr(net, "arch", "cnn")
        self.reject_threshold = float(reject_threshold)
        self._sha256 = sha256
        name = "conceptworld-judge" if self.arch == "cnn" else f"conceptworld-judge-{self.arch}"
        self.id = f"{name}@{version}" + (f"+{sha256[:12]}" if sha256 else "")
        if self.reject_threshold != DEFAULT_REJECT_THRESHOLD:
            self.id += f"+reject{self.reject_threshold:.4f}"

    def with_threshold(self, threshold: float) -> WorldJudge:
        """The same net with another reject threshold (its id says which)."""
        return WorldJudge(self.net, self.classes, self.version, self._sha256, threshold)

    @property
    def unclear(self) -> bool:
        """Whether the judge learnt unclear textures: its open heads end in ``none`` (``judge_heads``)."""
        return all(self.classes.get(h, [""])[-1] == UNCLEAR_LABEL for h in UNCLEAR_HEADS)

    @property
    def attribute_heads(self) -> list[str]:
        return [h for h in self.classes if h != REJECT_HEAD]

    @classmethod
    def load(cls, folder: str | Path) -> WorldJudge:
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise InputError(f"no judge in {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg = json.loads(cfg_path.read_text())
        net = build_net(cfg.get("arch", "cnn"), cfg, {h: len(c) for h, c in cfg["classes"].items()})
        net.load_state_dict({k: v.float() for k, v in load_file(w_path).items()})
        threshold = cfg.get("reject_threshold", DEFAULT_REJECT_THRESHOLD)
        if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise InputError(f"{cfg_path}: reject_threshold must be a number in (0, 1), got {threshold!r}")
        return cls(net, cfg["classes"], cfg["version"], hashlib.sha256(w_path.read_bytes()).hexdigest(), threshold)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, folder / WEIGHTS_FILE)
        cfg = {"version": self.version, "arch": self.arch, **self.net.arch_config(), "classes": self.classes,
               "reject_head": REJECT_HEAD if REJECT_HEAD in self.classes else None,
               **({"reject_threshold": self.reject_threshold}
                  if self.reject_threshold != DEFAULT_REJECT_THRESHOLD else {}),
               "input": "float RGB N x 3 x 32 x 32 in [0, 1]", "feature_dim": self.net.feature_dim}
        (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")

    @torch.no_grad()
    def _run(self, images: torch.Tensor, fn, batch: int = 512):
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"judge expects images N x 3 x H x W, got {tuple(images.shape)}")
        images = images.float()
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="area")
        return [fn(images[i : i + batch]) for i in range(0, len(images), batch)]

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class probabilities per head (the reject head included)."""
        parts = self._run(images, lambda x: {h: v.softmax(-1) for h, v in self.net(x).items()})
        if not parts:
            return {h: torch.zeros(0, len(c)) for h, c in self.classes.items()}
        return {h: torch.cat([p[h] for p in parts]) for h in self.classes}

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class index per head; the reject head's is "none" where its probability exceeds
        ``reject_threshold``."""
        return self.decide(self.probs(images))

    def decide(self, probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``probs``'s class index per head (``predict`` from probabilities already computed)."""
        out = {h: p.argmax(-1) for h, p in probs.items()}
        if REJECT_HEAD in probs:
            none = self.classes[REJECT_HEAD].index("none")
            out[REJECT_HEAD] = torch.where(probs[REJECT_HEAD][:, none] > self.reject_threshold, none, 1 - none)
        return out

    def rejected(self, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool N from ``predict``'s output: no valid scene (the reject head's verdict is "none")."""
        if REJECT_HEAD not in self.classes:
            raise ConfigError(f"judge {self.id} has no reject head ({REJECT_HEAD!r}); judges >= 2.2 have one")
        return pred[REJECT_HEAD] == self.classes[REJECT_HEAD].index("none")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N x D) for KID/FID."""
        parts = self._run(images, self.net.features)
        return torch.cat(parts) if parts else torch.zeros(0, self.net.feature_dim)


# ---- training ---------------------------------------------------------------------------------------


def _photometric(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gain and pixel noise so generator artefacts (colour drift, grain) do not flip answers."""
    n = x.shape[0]
    gain = 1 + 0.08 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    noise = torch.randn(x.shape, generator=g) * 0.03 * torch.rand(n, 1, 1, 1, generator=g)
    return x * gain + noise


def _blur(x: torch.Tensor, g: torch.Generator, p: float, max_sigma: float) -> torch.Tensor:
    """Gaussian blur (one sigma per batch) on a random share ``p`` of the images."""
    sigma = 0.3 + (max_sigma - 0.3) * float(torch.rand(1, generator=g))
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    pick = (torch.rand(x.shape[0], 1, 1, 1, generator=g) < p).to(x.dtype)
    return x * (1 - pick) + y * pick


def _affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Slight shape distortion: rotation +-5 deg, scale 0.93-1.07, shear +-0.06, shift +-1 px."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=g) * 2 - 1  # noqa: E731
    a, s, sh = u() * math.radians(5), 1 + 0.07 * u(), 0.06 * u()
    tx, ty = 0.06 * u(), 0.06 * u()
    m = torch.zeros(n, 2, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = torch.cos(a) / s, -torch.sin(a) / s + sh, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = torch.sin(a) / s, torch.cos(a) / s, ty
    grid = F.affine_grid(m, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _flip_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Horizontal flips (every world shape stays itself) and shifts of up to 2 px (edge padding)."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    return y[:, :, 2 + dy : 2 + dy + x.shape[2], 2 + dx : 2 + dx + x.shape[3]]


def augment_cnn(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return _photometric(_blur(_affine(x, g), g, p=0.4, max_sigma=1.1), g).clamp(0, 1)


def augment_vit(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return _photometric(_blur(_flip_shift(x, g), g, p=0.3, max_sigma=0.9), g).clamp(0, 1)


AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"cnn": augment_cnn, "vit": augment_vit}


def train_judge(net: nn.Module, images: torch.Tensor, labels: dict[str, torch.Tensor], steps: int, batch: int,
                lr: float, seed: int, desc: str = "judge", heads: dict[str, tuple[str, ...]] | None = None
                ) -> WorldJudge:
    """Train ``net`` on float images in [0, 1]; an attribute label of ``IGNORE`` (a non-scene) is
    skipped by that head's loss. Balanced batches: every head sees its share of every step."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4 if net.arch == "cnn" else 0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    augment = AUGMENT[net.arch]
    net.train()
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    for _ in bar:
        idx = torch.randint(0, len(images), (batch,), generator=g)
        out = net(augment(images[idx], g))
        loss = sum(F.cross_entropy(out[h], labels[h][idx], ignore_index=IGNORE) for h in out
                   if (labels[h][idx] != IGNORE).any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
    classes = {h: list(v) for h, v in (heads or JUDGE_HEADS).items()}
    return WorldJudge(net.eval(), classes, JUDGE_VERSION)


def accuracy(judge: WorldJudge, images: torch.Tensor, labels: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Per-head accuracy of the judge on labelled images."""
    pred = judge.predict(images)
    return {h: float((pred[h] == torch.as_tensor(labels[h])).float().mean()) for h in labels if h in pred}
