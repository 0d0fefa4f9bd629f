"""The shared objective: targets follow the scheduler, half precision round-trips exactly."""

from types import SimpleNamespace

import pytest
import torch

from bench.api.method import build_method
from bench.core.concepts import Concept
from bench.core.images import load_images
from bench.model.tiny import build_tiny_pipeline
from bench.model.training import denoising_loss, noise_scheduler
from tests.conftest import state


class _Oracle(torch.nn.Module):
    """A 'UNet' that predicts exactly a given target, so the loss is zero only for that target."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, noisy, t, encoder_hidden_states):
        return SimpleNamespace(sample=self.target + self.w)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_follows_prediction_type(prediction_type):
    pipe = build_tiny_pipeline(prediction_type=prediction_type)
    sched = noise_scheduler(pipe)
    assert sched.config.prediction_type == prediction_type
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    # replay the generator to know the noise and timesteps the loss will draw
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    velocity = sched.get_velocity(latents, noise, t)
    cond = torch.zeros(2, 77, 32)
    for target, name in [(noise, "epsilon"), (velocity, "v_prediction")]:
        fake = SimpleNamespace(unet=_Oracle(target))
        loss = denoising_loss(fake, sched, latents, cond, torch.Generator().manual_seed(5)).item()
        if name == prediction_type:
            assert loss == pytest.approx(0.0, abs=1e-10)
        else:
            assert loss > 1e-3


def test_v_prediction_pipeline_erases(concept_images):
    pipe = build_tiny_pipeline(prediction_type="v_prediction")
    edit = build_method("fuchi").erase(pipe, Concept("cat"), load_images(concept_images), seed=0)
    assert edit.info["steps"] == 8  # 4 epochs x ceil(4 images / batch 2)


def test_bfloat16_pipeline_trains_in_fp32_and_restores_exactly(concept_images):
    pipe = build_tiny_pipeline().to(dtype=torch.bfloat16)
    before = state(pipe)
    edit = build_method("fuchi", {"lr": 1e-3}).erase(pipe, Concept("cat"), load_images(concept_images), seed=0)
    after = state(pipe)
    assert all(v.dtype == torch.bfloat16 for v in after.values())
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(edit.param_names)
    edit.restore()
    assert all(torch.equal(before[k], v) for k, v in state(pipe).items())
