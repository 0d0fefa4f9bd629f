"""Pooled numbers get intervals over concepts and seeds; H and H_robust get theirs; ties are shown."""

from __future__ import annotations

import numpy as np

from bench.metrics.formulas import ClusterTable, bootstrap_ci, composite, hierarchical_bootstrap, tied_ranks


def _between_concepts_only(k: int = 40) -> tuple[ClusterTable, list[bool], list[int]]:
    """Concepts alternate at rates 0.2 and 0.8; every seed of a concept has exactly its rate, so all
    the spread is between concepts: the standard error of the pooled mean is 0.3 / sqrt(k)."""
    table, hits, seeds = ClusterTable(), [], []
    for c in range(k):
        rate = 0.2 if c % 2 else 0.8
        for s in range(8):
            for i in range(10):
                hit = i < round(rate * 10)
                table.add("ua", f"c{c}", s, hit)
                hits.append(hit)
                seeds.append(s)
    return table, hits, seeds


def test_hierarchical_bootstrap_has_the_between_concept_width():
    table, hits, seeds = _between_concepts_only(40)
    lo, hi = hierarchical_bootstrap(table, {"ua": lambda r: r["ua"]})["ua"]
    expected = 2 * 1.96 * 0.3 / np.sqrt(40)  # 0.186
    assert abs((hi - lo) - expected) < 0.2 * expected and lo < 0.5 < hi
    s_lo, s_hi = bootstrap_ci(hits, seeds)  # seeds alone see no spread at all: the old, too-narrow interval
    assert s_hi - s_lo < 1e-9


def test_within_concept_seed_noise_also_counts():
    """One concept: the interval comes from its seeds alone (8 seeds at 0 or 1)."""
    table = ClusterTable()
    for s in range(8):
        for _ in range(4):
            table.add("ua", "only", s, s % 2 == 0)
    lo, hi = hierarchical_bootstrap(table, {"ua": lambda r: r["ua"]})["ua"]
    assert lo < 0.5 < hi and hi - lo > 0.3


def test_h_interval_uses_the_same_draws_and_skips_empty_ones():
    table = ClusterTable()
    for c in range(6):
        for s in range(4):
            table.add("ua", f"c{c}", s, c % 3 != 0)
            table.add("retain_in_domain", f"c{c}", s, c % 2 == 0)
        table.add("asr_x", f"c{c}", 0, c == 0)  # attack images on one seed only
    stats = {"H": lambda r: composite(r["ua"], [r["retain_in_domain"]]), "asr_x": lambda r: r["asr_x"]}
    ci = hierarchical_bootstrap(table, stats)
    h = composite(table.rate("ua"), [table.rate("retain_in_domain")])
    assert ci["H"][0] <= h <= ci["H"][1] and ci["H"][1] - ci["H"][0] > 0
    assert 0 <= ci["asr_x"][0] <= ci["asr_x"][1] <= 1  # draws without seed 0 are left out, not counted as 0
    assert table.n("asr_x") == 6 and table.n("ua") == 24


def test_overlapping_intervals_are_tied():
    assert tied_ranks([(0.55, 0.65), (0.45, 0.58), (0.2, 0.35)]) == ["1=", "1=", "3"]
    assert tied_ranks([(0.55, 0.65), (0.2, 0.35)]) == ["1", "2"]


def test_a_collapsed_prompt_scores_near_zero_diversity():
    """Every seed of one prompt giving the same image: diversity 0, against the original's spread."""
    import torch

    from bench.metrics.formulas import collapse_ratio, seed_diversity

    g = torch.Generator().manual_seed(0)
    prompts = ["a star"] * 8 + ["a moon"] * 8
    varied = torch.randn(16, 32, generator=g)
    collapsed = varied[:1].repeat(16, 1) + 1e-6 * torch.randn(16, 32, generator=g)
    assert seed_diversity(collapsed, prompts) < 1e-4 < seed_diversity(varied, prompts)
    assert collapse_ratio(collapsed, varied, prompts) < 1e-4
    assert abs(collapse_ratio(varied, varied, prompts) - 1.0) < 1e-9
    assert collapse_ratio(varied, collapsed * 0, prompts) is None  # nothing to compare with: no number
    assert seed_diversity(varied[:2], ["one", "two"]) != seed_diversity(varied[:2], ["one", "two"])  # NaN
