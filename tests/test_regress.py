"""`make regress` catches a broken method: fuchi with its learning rate forced to 0."""

import pytest

from bench.run.regress import GOLDENS, compare, run_regress


def test_compare_names_method_and_metric():
    goldens = {"tolerances": {"ua": 0.1, "storage_bytes": 0},
               "cells": {"fuchi/circle": {"ua": 0.9, "storage_bytes": 10}}}
    assert compare(goldens, {"fuchi/circle": {"ua": 0.85, "storage_bytes": 10}}) == []
    (problem,) = compare(goldens, {"fuchi/circle": {"ua": 0.2, "storage_bytes": 10}})
    assert "method fuchi moved worse on ua for concept circle" in problem
    assert "no golden" in compare(goldens, {"lora_eraser/circle": {"ua": 0.2}})[0]


@pytest.mark.skipif(not GOLDENS.is_file(), reason="no committed goldens")
def test_regress_catches_a_method_whose_learning_rate_is_zero():
    problems = run_regress(methods=["fuchi"], overrides={"fuchi": {"lr": 0.0}}, progress=False, concepts=["circle"])
    assert problems, "fuchi with lr=0 erases nothing; the regression check must notice"
    assert all(p.startswith("method fuchi moved") for p in problems)
