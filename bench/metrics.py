"""Metrics as pure functions of judged records: same records, same numbers.

Accuracies come with a bootstrap 95% interval over evaluation seeds (images of one seed are
resampled together, since a seed's images share its noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

METRICS_VERSION = "3"  # 2: KID on reference-standardised features; 3: judges reject, reject rates, agreement
BOOTSTRAP_RESAMPLES = 1000
COMPOSITE_FORMULA = "H = 2 * UA * RA / (UA + RA), RA = mean(in-domain, cross-domain, near-neighbour retain accuracy)"


ROBUST_WEIGHT = 0.25
ROBUST_FORMULA = f"H_robust = (1 - {ROBUST_WEIGHT}) * H + {ROBUST_WEIGHT} * (1 - mean ASR over attacks)"


def robust_composite(h: float, asr_mean: float) -> float:
    """The composite with a robustness term (see ROBUST_FORMULA; the weight is printed in reports)."""
    return (1 - ROBUST_WEIGHT) * h + ROBUST_WEIGHT * (1 - asr_mean)


def rate(hits: Sequence[bool]) -> float:
    return float(np.mean(np.asarray(hits, dtype=float))) if len(hits) else float("nan")


def bootstrap_ci(hits: Sequence[bool], groups: Sequence[int], seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``hits``, resampling whole ``groups`` (eval seeds)."""
    hits_a = np.asarray(hits, dtype=float)
    groups_a = np.asarray(groups)
    if hits_a.size == 0:
        return (float("nan"), float("nan"))
    keys = np.unique(groups_a)
    sums = np.array([hits_a[groups_a == k].sum() for k in keys])
    counts = np.array([(groups_a == k).sum() for k in keys])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(keys), size=(resamples, len(keys)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def summary(hits: Sequence[bool], groups: Sequence[int], seed: int = 0) -> dict[str, float | int]:
    lo, hi = bootstrap_ci(hits, groups, seed=seed)
    return {"value": rate(hits), "ci_low": lo, "ci_high": hi, "n": len(hits)}


DISAGREEMENT_FLAG = 0.10  # a cell is flagged when the judges disagree on more than this share of images on a head


def agreement(a: dict[str, Sequence[str]], b: dict[str, Sequence[str]]) -> dict[str, Any]:
    """Share of images on which two judges give the same label, per head both answer (a rejected
    image is labelled "none" on every head), with the worst head; ``n`` images."""
    heads = [h for h in a if h in b]
    if not heads:
        raise ValueError(f"the two judges share no head: {sorted(a)} vs {sorted(b)}")
    n = len(a[heads[0]])
    if any(len(a[h]) != n or len(b[h]) != n for h in heads):
        raise ValueError("the two judges labelled different numbers of images")
    rates = {h: float(np.mean([x == y for x, y in zip(a[h], b[h], strict=True)])) if n else float("nan")
             for h in heads}
    every = float(np.mean([all(a[h][i] == b[h][i] for h in heads) for i in range(n)])) if n else float("nan")
    worst = min(heads, key=lambda h: rates[h])
    return {"heads": rates, "all_heads": every, "min": rates[worst], "worst_head": worst, "n": n}


def harmonic(a: float, b: float) -> float:
    if not (a == a and b == b) or a + b <= 0:  # NaN or both zero
        return float("nan") if not (a == a and b == b) else 0.0
    return 2 * a * b / (a + b)


def composite(ua: float, retain: Sequence[float]) -> float:
    """The harmonic mean of erasure (UA) and mean retain accuracy (see COMPOSITE_FORMULA)."""
    kept = [r for r in retain if r == r]
    return harmonic(ua, float(np.mean(kept))) if kept else float("nan")


def kid(features_a: torch.Tensor, features_b: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Kernel Inception Distance (torchmetrics) computed on the judge's features.

    No Inception weights exist offline, so the judge's penultimate features stand in; the
    subset size adapts to the sample count and is recorded. Features are standardised with the
    statistics of ``features_a`` (the reference set), because KID's cubic kernel on raw features
    of arbitrary scale gives estimates dominated by that scale.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(features_a), len(features_b))
    if n < 2:
        return {"mean": float("nan"), "std": float("nan"), "subset_size": n}
    subset = min(50, n)
    mu, sd = features_a.float().mean(0), features_a.float().std(0) + 1e-6
    features_a, features_b = (features_a.float() - mu) / sd, (features_b.float() - mu) / sd
    metric = KernelInceptionDistance(feature=_Identity(features_a.shape[1]), subsets=20, subset_size=subset)
    metric.update(features_a.float(), real=True)
    metric.update(features_b.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "subset_size": subset}


class _Identity(torch.nn.Module):
    """Features are computed by the judge beforehand; KID gets them as they are."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
