"""The ConceptWorld judge: a small CNN with one head per attribute.

Trained on rendered scenes, half of them passed through the world's VAE (encode -> decode), so
the blur of generated images does not fool it. Its penultimate features feed KID/FID.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from bench.errors import InputError
from bench.world.render import HEADS

JUDGE_VERSION = "2.1"  # 2.0: horizontal stripes, 5 px checks; 2.1: dots of radius 2.0 px
CONFIG_FILE = "judge_config.json"
WEIGHTS_FILE = "judge.safetensors"


class JudgeNet(nn.Module):
    """Conv stack -> global average pool -> shared features -> one linear head per attribute."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), heads: dict[str, int] | None = None):
        super().__init__()
        heads = heads or {h: len(v) for h, v in HEADS.items()}
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.feature_dim = 2 * c_in
        self.heads = nn.ModuleDict({h: nn.Linear(self.feature_dim, n) for h, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x * 2 - 1)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {h: head(f) for h, head in self.heads.items()}


class WorldJudge:
    """Loads the judge and answers in class indices, probabilities or features (images in [0, 1])."""

    def __init__(self, net: JudgeNet, classes: dict[str, list[str]], version: str, sha256: str = ""):
        self.net = net.eval()
        self.classes = classes
        self.version = version
        self.id = f"conceptworld-judge@{version}" + (f"+{sha256[:12]}" if sha256 else "")

    @classmethod
    def load(cls, folder: str | Path) -> WorldJudge:
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise InputError(f"no judge in {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg = json.loads(cfg_path.read_text())
        net = JudgeNet(tuple(cfg["channels"]), {h: len(c) for h, c in cfg["classes"].items()})
        net.load_state_dict({k: v.float() for k, v in load_file(w_path).items()})
        return cls(net, cfg["classes"], cfg["version"], hashlib.sha256(w_path.read_bytes()).hexdigest())

    def save(self, folder: str | Path, channels: tuple[int, ...]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, folder / WEIGHTS_FILE)
        cfg = {"version": self.version, "channels": list(channels), "classes": self.classes,
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
        """Class probabilities per head."""
        parts = self._run(images, lambda x: {h: v.softmax(-1) for h, v in self.net(x).items()})
        return {h: torch.cat([p[h] for p in parts]) for h in self.classes}

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class index per head."""
        return {h: p.argmax(-1) for h, p in self.probs(images).items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N x D) for KID/FID."""
        return torch.cat(self._run(images, self.net.features))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild photometric noise so generator artefacts (blur, colour drift) do not flip answers."""
    n = x.shape[0]
    gain = 1 + 0.08 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    noise = torch.randn(x.shape, generator=g) * 0.03 * torch.rand(n, 1, 1, 1, generator=g)
    return (x * gain + noise).clamp(0, 1)


def train_judge(images: torch.Tensor, labels: dict[str, torch.Tensor], channels: tuple[int, ...], steps: int,
                batch: int, lr: float, seed: int) -> WorldJudge:
    """Train the judge on float images in [0, 1] (plain and VAE round-tripped, mixed by the caller)."""
    torch.manual_seed(seed)
    net = JudgeNet(channels)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="judge", mininterval=5):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        out = net(_augment(images[idx], g))
        loss = sum(F.cross_entropy(out[h], labels[h][idx]) for h in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    classes = {h: list(v) for h, v in HEADS.items()}
    return WorldJudge(net, classes, JUDGE_VERSION)


def accuracy(judge: WorldJudge, images: torch.Tensor, labels: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Per-head accuracy of the judge on labelled images."""
    pred = judge.predict(images)
    return {h: float((pred[h] == torch.as_tensor(labels[h])).float().mean()) for h in pred}
