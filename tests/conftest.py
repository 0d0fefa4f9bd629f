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
