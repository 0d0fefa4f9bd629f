"""The metric registry: every number declared once, with its direction, read by report and regress."""

from __future__ import annotations

import pytest

from bench.metrics.registry import (
    RECORD_FIELDS,
    Metric,
    display,
    lookup,
    metrics,
    register_metric,
    undeclared,
)
from bench.run.regress import TOLERANCES, compare


def test_templated_and_original_keys_resolve_to_one_declaration():
    metric, params = lookup("asr_inversion_original")
    assert metric.key == "asr_{attack}" and params == {"model": "original", "attack": "inversion"}
    assert display("asr_inversion") == "ASR inversion" and display("asr_inversion_original") == "ASR inversion orig"
    assert display("ua_original") == "UA orig" and display("composite") == "H"
    assert lookup("kid_retain_original") is None  # KID compares edited with original: it has no original value
    assert undeclared(["ua", "ua_original", "asr_prefix", "status", "made_up"]) == ["made_up"]


def test_every_metric_says_what_it_is_and_which_way_is_better():
    for key, m in metrics().items():
        assert m.display and m.definition and m.unit and m.aggregate, key
        assert m.higher_is_better in (True, False, None), key
    assert metrics()["ua"].higher_is_better and not metrics()["kid_retain"].higher_is_better
    assert metrics()["ua"].worse(0.9, 0.8) and metrics()["kid_retain"].worse(0.1, 0.3)
    assert metrics()["trainable_params"].worse(1, 2) is None
    assert set(TOLERANCES) <= {k for k in metrics()}  # regress compares declared metrics only


def test_a_metric_is_declared_once():
    with pytest.raises(ValueError, match="declared twice"):
        register_metric(Metric("ua", "UA", "again", True))
    with pytest.raises(ValueError, match="record field"):
        register_metric(Metric(next(iter(RECORD_FIELDS)), "x", "y", True))


def test_regress_names_the_direction_of_a_move():
    goldens = {"tolerances": {"ua": 0.1, "kid_retain": 0.05},
               "cells": {"fuchi/star": {"ua": 0.9, "kid_retain": 0.1}}}
    problems = compare(goldens, {"fuchi/star": {"ua": 0.5, "kid_retain": 0.01}})
    assert any("moved worse on ua" in p for p in problems)
    assert any("moved better on kid_retain" in p for p in problems)
