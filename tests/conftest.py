"""Shared fixtures: tiny pipelines built in code (as diffusers' own tests do), concept images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench.model.tiny import build_tiny_pipeline

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: torch at one thread each, so two workers never fight over a core
    torch.set_num_threads(1)


@pytest.fixture
def tiny_pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_pipeline(seed=0).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def concept_images(tmp_path_factory) -> Path:
    """Four 32x32 images of 'a cat' as the tiny model draws it (what a few-shot method is given)."""
    path = tmp_path_factory.mktemp("cat-images")
    pipe = build_tiny_pipeline(seed=0)
    images = pipe(["a photo of a cat"] * 4, num_inference_steps=4, output_type="pil",
                  generator=torch.Generator().manual_seed(0)).images
    for i, im in enumerate(images):
        im.save(path / f"cat_{i}.png")
    return path


def state(pipe) -> dict[str, torch.Tensor]:
    from bench.api.edit import pipeline_parameters

    return {k: v.detach().clone() for k, v in pipeline_parameters(pipe).items()}


# make test runs each file's tests together on one of its workers (--dist loadfile), handing files out in
# collection order: the longest files (make test's --durations) go first, so no worker is left with a long
# file while the other sits idle at the end
LONGEST_FIRST = ("test_method_contract.py", "test_executors.py", "test_cli.py", "test_user_commands.py",
                 "test_fuzz.py", "test_nothing_silently_scores.py", "test_reference_pack.py", "test_world_clip.py",
                 "test_harness.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
