"""Every method runs one step on randomly initialised SD v1.5- and v2.1-size pipelines (slow: minutes
per method on a CPU, up to ~20 GB of memory; `make test-slow`). The README's cost table reports the
peak memory these runs print (`python -m bench.devtools.fullsize --arch sd15 --method M`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.api.method import get_method, method_registry
from bench.devtools.fullsize import ARCHS, ONE_STEP
from bench.run.smoke import method_specs

pytestmark = pytest.mark.slow


def test_every_method_has_a_one_step_budget():
    assert set(ONE_STEP) == set(method_registry().names())


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("spec", [s for s in method_specs() if s != "esd"])
def test_one_step_at_full_size(arch, spec):
    out = subprocess.run([sys.executable, "-m", "bench.devtools.fullsize", "--arch", arch, "--method", spec],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["finite"]
    if get_method(spec.partition("@")[0]).inference_time:  # a sampling edit: no weight, nothing stored
        assert rec["trainable_params"] == 0 and rec["storage_bytes"] == 0
    else:
        assert rec["trainable_params"] > 0 and rec["storage_bytes"] > 0
    assert rec["params"]["unet"] > 800e6  # the real architecture, not a toy
