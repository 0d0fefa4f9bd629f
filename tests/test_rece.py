"""RECE's two closed forms solve the least-squares problems its docstring states (float64, random data)."""

from __future__ import annotations

import pytest
import torch

from bench.core.errors import ConfigError
from methods.rece import ReceConfig, adversarial, aligned, closed_form


def test_adversarial_embedding_is_the_ridge_solution():
    """c* minimises sum_l |W_l c* - W0_l c|^2 + reg |c*|^2, row by row: its gradient vanishes there."""
    g = torch.Generator().manual_seed(0)
    current = [torch.randn(8, 32, generator=g, dtype=torch.float64) for _ in range(3)]
    original = [torch.randn(8, 32, generator=g, dtype=torch.float64) for _ in range(3)]
    c = torch.randn(5, 32, generator=g, dtype=torch.float64)
    star = adversarial(c, current, original, reg_scale=1e-3).requires_grad_(True)
    loss = sum(((star @ w.T - c @ w0.T) ** 2).sum() for w, w0 in zip(current, original, strict=True)) + 1e-3 * (star ** 2).sum()
    loss.backward()
    assert star.grad.abs().max() < 1e-9


def test_closed_form_is_the_least_squares_edit():
    """W' minimises e sum |W' k - W g|^2 + p sum |W' r - W r|^2 + l |W' - W|^2: its gradient vanishes there."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 32, generator=g, dtype=torch.float64)
    keys, guide, retain = (torch.randn(n, 32, generator=g, dtype=torch.float64) for n in (6, 6, 4))
    new = closed_form(w, keys, guide, retain, lamb=0.1, erase_scale=1.0, preserve_scale=0.1).requires_grad_(True)
    loss = (((keys @ new.T - guide @ w.T) ** 2).sum() + 0.1 * ((retain @ new.T - retain @ w.T) ** 2).sum()
            + 0.1 * ((new - w) ** 2).sum())
    loss.backward()
    assert new.grad.abs().max() < 1e-9


def test_uce_pairing_starts_at_each_last_word_token():
    seq = torch.arange(10.0)[:, None]
    old, new = aligned(seq, 4, seq + 100, 2)  # "<s> a b </s>" against "<s> </s>": from token 2, and from 0
    assert old[:, 0].tolist() == list(range(2, 10)) and new[:, 0].tolist() == [100.0 + i for i in range(8)]


def test_config_refuses_an_edit_that_changes_nothing():
    with pytest.raises(ConfigError, match="rounds 0 without uce_init"):
        ReceConfig(rounds=0, uce_init=False)
    with pytest.raises(ConfigError, match="reg_scale"):
        ReceConfig(reg_scale=0.0)
