"""The original model inside a training loop: its predictions, and latents part-way along its sampling.

ESD and AdvUnlearn train on latents ``x_t`` reached by sampling the *original* model with the
concept prompt under classifier-free guidance for a random number of steps, and regress the
edited model onto a target built from the original model's predictions at ``x_t``. Two pieces:

- ``unet_predict``: the UNet, or with a snapshot given, the UNet evaluated with the edited parameters' original values substituted
  (``torch.func.functional_call``), so no second copy of the UNet is held: the snapshot a method
  keeps for its ``Edit`` anyway is all it needs;
- ``guided_latents``: every ``x_t`` a run needs, drawn up front from the original model in batches
  (each sample from its own seeded noise, each stopped after its own number of DDIM steps). Because
  the original model never changes, sampling them before training gives the same distribution as
  sampling one per step, at a fraction of the cost on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def unet_predict(pipe: Any, substitute: dict[str, torch.Tensor] | None = None) -> Predict:
    """``f(x, t, cond)`` -> the UNet's output; ``substitute`` maps ``unet.<name>`` to values used
    in place of the module's current parameters (others are shared, not copied)."""
    unet = pipe.unet
    local = {n.split(".", 1)[1]: v for n, v in (substitute or {}).items() if n.startswith("unet.")}

    def predict(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dtype = unet.dtype
        if not local:
            return unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
        return torch.func.functional_call(unet, local, (x.to(dtype), t),
                                          {"encoder_hidden_states": cond.to(dtype)}).sample

    return predict


def ddim(pipe: Any, steps: int) -> Any:
    """A DDIM scheduler with the model's own noise schedule, set to ``steps`` (deterministic, eta 0:
    a sample's path does not depend on the other samples in its batch)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    return sched


def latent_shape(pipe: Any, resolution: int = 0) -> tuple[int, int, int]:
    """(channels, h, w) of the pipeline's latents at ``resolution`` (0: its native size)."""
    from bench.model.pipeline import default_resolution

    side = (resolution or default_resolution(pipe)) // int(pipe.vae_scale_factor)
    return int(pipe.unet.config.in_channels), side, side


@torch.no_grad()
def guided_latents(
    pipe: Any,
    predict: Predict,
    conds: torch.Tensor,
    uncond: torch.Tensor,
    which: Sequence[int],
    stops: Sequence[int],
    seeds: Sequence[int],
    guidance: float,
    steps: int,
    resolution: int = 0,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t`` for each sample i: noise from ``seeds[i]``, then ``stops[i]`` DDIM steps of
    classifier-free-guided sampling with ``conds[which[i]]`` (``uncond``: the empty prompt's
    hidden states). Returns the latents (n, c, h, w) and each one's DDPM timestep
    (``timesteps[stops[i]]`` of the ``steps``-step schedule, i.e. the noise level it sits at).
    """
    if not (len(which) == len(stops) == len(seeds)):
        raise ValueError("which, stops and seeds must have the same length")
    if any(not 0 <= s < steps for s in stops):
        raise ValueError(f"stops must lie in [0, {steps})")
    sched = ddim(pipe, steps)
    shape = latent_shape(pipe, resolution)
    device = uncond.device
    out: list[torch.Tensor | None] = [None] * len(stops)
    for start in range(0, len(stops), batch_size):
        active = list(range(start, min(start + batch_size, len(stops))))
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(seeds[i])))
                         for i in active]).to(device) * sched.init_noise_sigma
        for k, t in enumerate(sched.timesteps):
            done = [j for j, i in enumerate(active) if stops[i] == k]
            for j in done:
                out[active[j]] = x[j].float().cpu()
            keep = [j for j, i in enumerate(active) if stops[i] > k]
            if not keep:
                break
            x, active = x[keep], [active[j] for j in keep]
            cond = conds[[which[i] for i in active]]
            both = torch.cat([uncond.expand(len(active), -1, -1), cond])
            e_u, e_c = predict(torch.cat([x, x]), t, both).float().chunk(2)
            x = sched.step(e_u + guidance * (e_c - e_u), t, x.float()).prev_sample
    timesteps = sched.timesteps[list(stops)].long()
    return torch.stack(out), timesteps  # type: ignore[arg-type]
