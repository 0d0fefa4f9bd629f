"""A cell's numbers from its judged rows: UA, the retain accuracies, RA, H, reject rates, KID and FID,
selective alignment, and which heads a number reads (pure functions of the rows and detections)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.core.plan import COMPOSED, RETAIN_GROUPS, ImageRow
from bench.metrics.formulas import (
    composite,
    kid,
    summary,
)


def scored_heads(rows: list[ImageRow]) -> dict[str, list[bool]]:
    """Per attribute head, which of the cell's images some number reads it on (``AGREEMENT_DEFINITION``):
    the head of the concept the image is judged for and, on a composed prompt, the heads it names. The
    reject verdict (``SCENE_HEAD``) is read on every image, so it is left out here (counted everywhere)."""
    used = [{r.concept.extra.get("head", r.concept.type), *(r.attributes or {})} for r in rows]
    return {h: [h in u for u in used] for h in sorted(set().union(*used))} if rows else {}


def selective_alignment(rows: list[ImageRow], aligned: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """``selective_alignment`` (+ ``_original``): the share of composed-prompt images in which the judge
    sees every other named attribute, with its seed bootstrap; None (an empty column, never 0) when the
    concept has no composed prompts or the judge cannot check attributes."""
    if aligned is None:
        has = any(r.group == COMPOSED for r in rows)
        return {"selective_alignment": None, "selective_alignment_original": None,
                "selective_alignment_note": "the judge cannot check named attributes" if has
                else "the concept set declares no composed prompts for this concept"}
    seeds = np.array([r.seed for r in rows if r.group == COMPOSED])
    return {"selective_alignment": summary(aligned["edited"].numpy(), seeds),
            "selective_alignment_original": summary(aligned["original"].numpy(), seeds)}


def cell_metrics(rows: list[ImageRow], det: dict[str, torch.Tensor], f_orig: torch.Tensor,
                 f_edit: torch.Tensor, rejected: dict[str, torch.Tensor] | None = None,
                 masked: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """UA (target, synonyms), retain accuracies, reject rates, masked detections, KID — each for the
    edited and the original model. ``det`` must already be false on rejected images (``Judge.detect``
    is): a rejected image is "not seen" for UA and a miss for retain. ``masked``: the rejected images
    whose judged head still names the concept (``Judge.reads``); None records no masked detections."""
    m = detection_metrics(rows, det, rejected)
    seeds = np.array([r.seed for r in rows])
    for kind, suffix in (("edited", ""), ("original", "_original")):
        if masked is not None and rejected is not None and (masked[kind] & ~rejected[kind]).any():
            raise ValueError("a masked detection on an image the judge did not reject")
        m["masked_detections" + suffix] = summary(masked[kind].numpy(), seeds) if masked is not None else None
    m["kid_retain"] = kid(f_orig, f_edit)
    n, dim = len(f_orig), f_orig.shape[1] if f_orig.ndim == 2 else 0
    m["fid_retain"] = None  # FID needs more samples than feature dimensions for a stable covariance
    m["fid_note"] = f"not computed: {n} retain images <= {dim} feature dimensions" if n <= dim else ""
    if n > dim > 0:
        m["fid_retain"] = _fid(f_orig, f_edit)
    return m


def detection_metrics(rows: list[ImageRow], det: dict[str, torch.Tensor],
                      rejected: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """What one judge's detections give, for the edited and the original model: UA (target, synonyms),
    the retain accuracies, RA, H and, given ``rejected``, the reject rates (``cell_metrics``)."""
    m: dict[str, Any] = {}
    groups = np.array([r.group for r in rows])
    seeds = np.array([r.seed for r in rows])
    for kind, suffix in (("edited", ""), ("original", "_original")):
        d = det[kind].numpy()
        if rejected is not None:
            r = rejected[kind].numpy()
            if (d & r).any():
                raise ValueError("a judge detected a concept in an image it rejected")
            m["reject_rate" + suffix] = summary(r, seeds)
            m["reject_rate_target" + suffix] = summary(r[groups == "target"], seeds[groups == "target"])
        for g, key in (("target", "ua"), ("synonym", "ua_synonyms")):
            sel = groups == g
            m[key + suffix] = summary(~d[sel], seeds[sel]) if sel.any() else None
        for g, key in RETAIN_GROUPS.items():
            sel = groups == g
            m[key + suffix] = summary(d[sel], seeds[sel]) if sel.any() else None
        retain = [m[k + suffix]["value"] for k in RETAIN_GROUPS.values() if m[k + suffix] is not None]
        m["retain_mean" + suffix] = float(np.mean(retain)) if retain else float("nan")
        m["composite" + suffix] = composite(m["ua" + suffix]["value"], retain)
    return m


def _fid(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from bench.metrics.formulas import IdentityFeatures

    fid = FrechetInceptionDistance(feature=IdentityFeatures(a.shape[1]))
    fid.update(a.double(), real=True)
    fid.update(b.double(), real=False)
    return float(fid.compute())
