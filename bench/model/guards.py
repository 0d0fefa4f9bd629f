"""Guards that keep garbage out of the leaderboard.

``check_finite`` turns NaN/Inf at any stage of a cell (erase loss, edited weights, latents,
decoded images, judge outputs) into a ``NonFiniteError``; the runner records the cell as
diverged. ``image_warnings`` flags degenerate images (one flat colour, or the same image for
every seed) so a collapse cannot pass unnoticed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from bench.core.errors import NonFiniteError

FLAT_TOLERANCE = 2  # uint8 levels: an image whose pixels span no more than this is one colour
SAME_TOLERANCE = 2  # uint8 levels: images closer than this everywhere are the same image


def check_finite(value: Any, stage: str, detail: str = "") -> None:
    """Raise ``NonFiniteError(stage)`` when ``value`` (a tensor, a number, or a mapping/sequence of
    them) holds NaN or Inf."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                n = int(bad.sum())
                what = f"{n} of {value.numel()} values"
                raise NonFiniteError(stage, f"{what}, {detail}" if detail else what)
        return
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise NonFiniteError(stage, f"{value}, {detail}" if detail else str(value))
        return
    if isinstance(value, Mapping):
        for key, v in value.items():
            check_finite(v, stage, f"{key}" + (f", {detail}" if detail else ""))
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            check_finite(v, stage, detail)


def check_losses(losses: Iterable[float], stage: str = "erase loss", first_step: int = 0) -> None:
    """The first non-finite loss of a training loop, with its step."""
    for step, loss in enumerate(losses, start=first_step):
        if not math.isfinite(loss):
            raise NonFiniteError(stage, f"{loss} at step {step}")


def _flat(images: torch.Tensor) -> torch.Tensor:
    """Bool per image: one colour, every pixel within FLAT_TOLERANCE levels per channel (uint8 N x C x H x W)."""
    x = images.reshape(images.shape[0], images.shape[1], -1).int()
    return ((x.max(2).values - x.min(2).values) <= FLAT_TOLERANCE).all(1)


def image_warnings(rows: Sequence[Any], images: Mapping[str, torch.Tensor]) -> list[str]:
    """Warnings for degenerate images of a cell (empty list: nothing odd).

    ``rows``: one ``runner.ImageRow`` (group, concept, prompt, seed) per image; ``images``:
    ``{"edited": u8, "original": u8}``.
    Flags edited images that are all one flat colour (every one of them, or every target image),
    and target prompts whose images are the same for every evaluation seed.
    """
    out: list[str] = []
    edited = images.get("edited")
    if edited is not None and len(edited):
        flat = _flat(edited)
        target = torch.tensor([r.group == "target" for r in rows], dtype=torch.bool)
        if bool(flat.all()):
            out.append(f"constant images: all {len(flat)} edited images are one flat colour")
        elif bool(target.any()) and bool(flat[target].all()):
            out.append(f"constant images: all {int(target.sum())} edited target images are one flat colour")
    for kind in ("edited", "original"):
        imgs = images.get(kind)
        if imgs is None or not len(imgs):
            continue
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if r.group == "target":
                by_prompt.setdefault(r.prompt, []).append(i)
        groups = [idx for idx in by_prompt.values() if len(idx) > 1]
        if groups and all(_same(imgs[idx]) for idx in groups):
            seeds = len(groups[0])
            out.append(f"identical across seeds: every {kind} target prompt gives the same image for all "
                       f"{seeds} seeds")
    return out


def _same(images: torch.Tensor) -> bool:
    x = images.int()
    return bool(((x - x[:1]).abs() <= SAME_TOLERANCE).all())
