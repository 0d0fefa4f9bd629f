"""Rebuild ConceptWorld from a seed, stage by stage, resumable after a kill.

Stages (each leaves its result in the work folder; a rerun skips finished stages and resumes
the training stages from their last checkpoint):
  data -> vae -> judge -> [clip ->] latents -> diffusion -> export.
With ``text_encoder="joint"`` (world 2.1) the diffusion stage trains the text encoder from scratch
jointly with the UNet. With ``"frozen-clip"`` (world 3) the ``clip`` stage pretrains a world CLIP
contrastively (``bench.world.clip``) and the UNet then learns against its text tower, frozen: the
tower's hidden states are computed once per distinct training caption, so it costs nothing per step.
Both use v-prediction, min-SNR weighting and an EMA; the export writes an ordinary
StableDiffusionPipeline.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from bench.model.tokenizer import MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer
from bench.world.captions import caption_for
from bench.world.judge import WorldJudge
from bench.world.render import Scene, vocabulary
from bench.worldgen.config import WorldConfig
from bench.worldgen.data import fp16_files, load_set, render_set, save_set


def schedule(cfg: WorldConfig) -> dict:
    """Noise schedule shared by training and the shipped DDIM sampler."""
    return {"num_train_timesteps": 1000, "beta_schedule": cfg.beta_schedule, "beta_start": 1e-4, "beta_end": 0.02,
            "prediction_type": "v_prediction"}


def _log(work: Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(work / "build.log", "a") as f:
        f.write(line + "\n")


class Stages:
    """Marks finished stages in ``work/stages.json`` with their wall time."""

    def __init__(self, work: Path):
        self.path = work / "stages.json"
        self.work = work
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, fn: Callable[[], dict | None]) -> None:
        if name in self.done:
            _log(self.work, f"stage {name}: done already ({self.done[name]['seconds']:.0f} s), skipped")
            return
        _log(self.work, f"stage {name}: start")
        info, seconds = _timed(fn)
        self._record(name, seconds, info)

    def _record(self, name: str, seconds: float, info: dict) -> None:
        self.done[name] = {"seconds": seconds, **info}
        self.path.write_text(json.dumps(self.done, indent=2))
        _log(self.work, f"stage {name}: finished in {seconds:.0f} s {info}")

    def run_side_by_side(self, first: list[tuple[str, StageFn]], second: list[tuple[str, StageFn]],
                         cfg: WorldConfig) -> None:
        """Run two independent lanes of stages at once (``WorldConfig.parallel_stages``), ``first`` in
        a second process and ``second`` here, each lane's stages in order and each stage on one CPU
        thread; a stage left alone by a resumed build runs on one thread too, so its floats are those of
        an uninterrupted build. A stage is recorded as soon as it finishes here, and when its lane's
        process returns there; a lane stops at its first failing stage, whose error is raised once
        both lanes have stopped: no finished stage is trained again."""
        lanes = []
        for lane in (first, second):
            for name, fn in lane:
                if name in self.done:
                    self.run(name, partial(fn, cfg, self.work))  # done: logs the skip
            lanes.append([(name, fn) for name, fn in lane if name not in self.done])
        todo_a, todo_b = lanes
        if not todo_a and not todo_b:
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if not todo_a or not todo_b:  # one lane left: here, still on one thread
                self._raise_first(self._run_lane(todo_a or todo_b, cfg))
                return
            _log(self.work, f"stages {', '.join(n for n, _ in todo_a)} and {', '.join(n for n, _ in todo_b)}: "
                            "start side by side, one thread each")
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(1,)) as pool:
                future = pool.submit(_lane, self.work, [(name, partial(fn, cfg, self.work)) for name, fn in todo_a])
                error = self._run_lane(todo_b, cfg)
                try:  # the other lane, finished or failed, either way
                    results, other = future.result()
                except BaseException as err:  # the process itself broke: nothing of it is recorded
                    results, other = [], err
            for (name, _), (info, seconds) in zip(todo_a, results, strict=False):
                self._record(name, seconds, {**info, "threads": 1})
            self._raise_first(error, other)
        finally:
            torch.set_num_threads(threads)

    def _run_lane(self, lane: list[tuple[str, StageFn]], cfg: WorldConfig) -> BaseException | None:
        """Run ``lane``'s stages here in order, each recorded as it finishes; the error that stopped it."""
        for name, fn in lane:
            _log(self.work, f"stage {name}: start")
            try:
                info, seconds = _timed(partial(fn, cfg, self.work))
            except BaseException as err:
                return err
            self._record(name, seconds, {**info, "threads": 1})
        return None

    @staticmethod
    def _raise_first(*errors: BaseException | None) -> None:
        for err in errors:
            if err is not None:
                raise err


def _lane(work: Path, fns: list[tuple[str, Callable[[], dict | None]]]
          ) -> tuple[list[tuple[dict, float]], BaseException | None]:
    """A lane of stages in a second process: each finished stage's result and seconds, in order, and
    the error that stopped the lane (``Stages.run_side_by_side`` records them in the first process)."""
    results = []
    for name, fn in fns:
        _log(work, f"stage {name}: start")
        try:
            results.append(_timed(fn))
        except BaseException as err:
            return results, err
    return results, None


StageFn = Callable[[WorldConfig, Path], "dict | None"]


def _timed(fn: Callable[[], dict | None]) -> tuple[dict, float]:
    """Run one stage (in whichever process); its result and wall seconds, with the seconds a resumed
    stage reports it spent before (``_previous_seconds``)."""
    t0 = time.time()
    info = fn() or {}
    prev = info.pop("_previous_seconds", 0.0)
    return info, time.time() - t0 + prev


# ---- data -------------------------------------------------------------------------------------------


# ---- models -----------------------------------------------------------------------------------------


def make_vae(cfg: WorldConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, norm_num_groups=min(8, cfg.vae_channels[0]),
        mid_block_add_attention=False,
    )


def make_text_encoder(cfg: WorldConfig) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_ff,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=MAX_LENGTH,
        projection_dim=cfg.text_hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config)


def unet_heads(cfg: WorldConfig) -> int | tuple[int, ...]:
    """What diffusers' ``attention_head_dim`` takes: the number of heads, per block where the heads
    have a fixed width (``WorldConfig.unet_head_width``)."""
    if cfg.unet_head_width:
        return tuple(c // cfg.unet_head_width for c in cfg.unet_channels)
    return cfg.unet_head_dim


def make_unet(cfg: WorldConfig) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.cond_dim, attention_head_dim=unet_heads(cfg),
        norm_num_groups=min(16, cfg.unet_channels[0]),
    )


def make_scheduler(cfg: WorldConfig) -> DDIMScheduler:
    """The sampler shipped with the model: DDIM, trailing spacing (starts from pure noise)."""
    return DDIMScheduler(**schedule(cfg), clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                         timestep_spacing="trailing")


# ---- stages -----------------------------------------------------------------------------------------


def stage_data(cfg: WorldConfig, work: Path) -> dict:
    images, scenes = render_set(cfg.seed, cfg.n_train, cfg.character_prob, "render train",
                                vocab=vocabulary(cfg.vocab))
    save_set(work / "train.npz", images, scenes)
    return {"n_train": cfg.n_train}


def stage_vae(cfg: WorldConfig, work: Path) -> dict:
    torch.manual_seed(cfg.seed)
    images, _, _ = load_set(work / "train.npz")
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=max(cfg.vae_steps, 1),
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed + 10)
    vae.train()
    bar = tqdm(range(cfg.vae_steps), desc="vae", mininterval=5)
    for _ in bar:
        x = images[torch.randint(0, len(images), (cfg.vae_batch,), generator=g)] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + F.mse_loss(y, x)
        loss = rec + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec.item():.4f}", refresh=False)
    vae.eval()
    with torch.no_grad():
        z = vae.encode(images[:2048] * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(work / "vae")
    return {"rec_loss": float(rec), "scaling_factor": vae.config.scaling_factor}


def stage_judge(cfg: WorldConfig, work: Path) -> dict:
    """Both judges (``judge_build.build_judges``), trained against the stage-``vae`` VAE."""
    from bench.worldgen.judge_build import build_judges

    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    return build_judges(cfg, vae, work)


def stage_clip(cfg: WorldConfig, work: Path) -> dict:
    """The world CLIP (``bench.world.clip.pretrain``, resumable) and its text tower as the world's
    text encoder (``work/text_encoder``), frozen from here on."""
    from bench.worldgen.clip_train import pretrain, save_text_tower

    vae = AutoencoderKL.from_pretrained(work / "vae").eval()  # stage "vae" comes first: the CLIP sees its round trips
    res = pretrain(cfg.clip, work / "world_clip", cfg.clip_scenes, cfg.clip_eval, vocabulary(cfg.vocab), vae)
    save_text_tower(work / "world_clip" / "clip", work / "text_encoder")
    return {"zero_shot": res["zero_shot"], "final_loss": res["final_loss"], "parameters": res["parameters"]}


def stage_latents(cfg: WorldConfig, work: Path) -> dict:
    images, _, _ = load_set(work / "train.npz")
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), 512), desc="latents", mininterval=5):
            post = vae.encode(images[i : i + 512] * 2 - 1).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    save_file({"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}, work / "latents.safetensors")
    return {"n": len(images)}


class TokenCache:
    """Caches the 77-token ids of each distinct caption (there are a few thousand)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            ids = self.tok(missing, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                           return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids, strict=True))
        return torch.stack([self.cache[c] for c in captions])


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)


def _lr_factor(step: int, cfg: WorldConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.unet_steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def _step_batch(cfg: WorldConfig, scenes: list[Scene], step: int) -> tuple[np.ndarray, list[str]]:
    """The scenes and captions of one diffusion step, from (seed, step) alone: a resumed run repeats
    them exactly, and the frozen encoder's cache can list every caption before training starts."""
    rng = np.random.default_rng([cfg.seed, step])
    idx = rng.integers(0, len(scenes), cfg.unet_batch)
    return idx, [caption_for(scenes[i], rng) for i in idx]


class FrozenStates:
    """The frozen text encoder's last hidden states (77 x width) for every distinct caption of the
    run (stage ``states``), one row per caption in sorted order."""

    FILE, CAPTIONS = "text_states.safetensors", "text_states.json"

    def __init__(self, captions: list[str], states: torch.Tensor):
        self.row = {c: k for k, c in enumerate(captions)}
        self.states = states

    @classmethod
    def compute(cls, encoder: CLIPTextModel, tokens: TokenCache, captions: list[str], chunk: int = 256) -> FrozenStates:
        """States of ``captions``' distinct values, in sorted order and fixed chunks (the same floats on every start)."""
        order = sorted(set(captions))
        with torch.no_grad():
            states = torch.cat([encoder(tokens(order[i : i + chunk]))[0]
                                for i in tqdm(range(0, len(order), chunk), desc="frozen text states", mininterval=5)])
        return cls(order, states)

    def save(self, work: Path) -> None:
        save_file({"states": self.states.contiguous()}, work / self.FILE)
        (work / self.CAPTIONS).write_text(json.dumps(list(self.row)))

    @classmethod
    def load(cls, work: Path, captions: list[str]) -> FrozenStates:
        """Stage ``states``' file; ``captions`` (the run's) must be the captions it holds."""
        order = json.loads((work / cls.CAPTIONS).read_text())
        if order != sorted(set(captions)):
            raise ValueError(f"{work / cls.FILE} holds the states of other captions than this run's: "
                             "remove stage 'states' from stages.json and build again")
        # a copy in memory: load_file maps the file, and a gather from the map faults pages in on every step
        return cls(order, load_file(work / cls.FILE)["states"].clone())

    def __call__(self, captions: list[str]) -> torch.Tensor:
        return self.states[torch.tensor([self.row[c] for c in captions])]


def _run_captions(cfg: WorldConfig, scenes: list[Scene]) -> list[str]:
    """Every caption the diffusion stage draws, step by step (``_step_batch``)."""
    return [c for s in range(cfg.unet_steps) for c in _step_batch(cfg, scenes, s)[1]]


def stage_states(cfg: WorldConfig, work: Path) -> dict:
    """The frozen text tower's hidden states for every distinct caption the diffusion stage will draw,
    computed once (the tower costs nothing per UNet step) and kept in ``work`` for it. A stage of its
    own so that it can run beside the judges (``WorldConfig.parallel_stages``)."""
    _, _, scenes = load_set(work / "train.npz")
    encoder = CLIPTextModel.from_pretrained(work / "text_encoder", dtype=torch.float32).eval().requires_grad_(False)
    states = FrozenStates.compute(encoder, TokenCache(build_clip_tokenizer()), _run_captions(cfg, scenes))
    states.save(work)
    return {"captions": len(states.row)}


def init_models(cfg: WorldConfig) -> tuple:
    """UNet, text encoder (None when frozen) and their EMA copies, from the current torch seed. The
    order (unet, text, ema_unet, ema_text) is world 2.1's: its joint build draws the same weights as ever."""
    frozen = cfg.text_encoder == "frozen-clip"
    unet = make_unet(cfg)
    text = None if frozen else make_text_encoder(cfg)
    ema_unet = make_unet(cfg)
    ema_text = None if frozen else make_text_encoder(cfg)
    ema_unet.load_state_dict(unet.state_dict())
    if ema_text is not None:
        ema_text.load_state_dict(text.state_dict())
    return unet, text, ema_unet, ema_text


def stage_diffusion(cfg: WorldConfig, work: Path) -> dict:
    torch.manual_seed(cfg.seed)
    lat = load_file(work / "latents.safetensors")
    scale = AutoencoderKL.load_config(work / "vae")["scaling_factor"]
    _, _, scenes = load_set(work / "train.npz")
    frozen = cfg.text_encoder == "frozen-clip"
    tokens = None if frozen else TokenCache(build_clip_tokenizer())  # a frozen encoder's states are read, not computed
    unet, text, ema_unet, ema_text = init_models(cfg)
    models = {"unet": unet, "ema_unet": ema_unet}
    groups, base_lrs = [{"params": unet.parameters(), "lr": cfg.unet_lr}], [cfg.unet_lr]
    if frozen:
        states = FrozenStates.load(work, _run_captions(cfg, scenes))
    else:
        models.update(text=text, ema_text=ema_text)
        groups.append({"params": text.parameters(), "lr": cfg.text_lr})
        base_lrs.append(cfg.text_lr)
    opt = torch.optim.AdamW(groups, weight_decay=0.0, fused=cfg.fused_adam or None)  # None: torch's default
    noise_sched = DDPMScheduler(**schedule(cfg))
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    ckpt = work / "diffusion_ckpt.pt"
    start, losses, prev_seconds = 0, [], 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        for k, m in models.items():
            m.load_state_dict(state[k])
        opt.load_state_dict(state["opt"])
        start, losses, prev_seconds = state["step"], state["losses"], state["seconds"]
        _log(work, f"diffusion: resumed from step {start}")
    t0 = time.time()
    unet.train()
    if text is not None:
        text.train()
    bar = tqdm(range(start, cfg.unet_steps), desc="diffusion", initial=start, total=cfg.unet_steps, mininterval=5)
    for step in bar:
        # everything random in a step comes from the step index: a resumed run repeats it exactly
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx, captions = _step_batch(cfg, scenes, step)
        it = torch.from_numpy(idx)
        z0 = (lat["mean"][it] + lat["std"][it] * torch.randn(lat["mean"][it].shape, generator=g)) * scale
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        zt = noise_sched.add_noise(z0, noise, t)
        target = noise_sched.get_velocity(z0, noise, t)
        for grp, base in zip(opt.param_groups, base_lrs, strict=True):
            grp["lr"] = base * _lr_factor(step, cfg)
        cond = states(captions) if frozen else text(tokens(captions))[0]
        pred = unet(zt, t, cond).sample
        weight = torch.clamp(snr[t], max=cfg.min_snr) / (snr[t] + 1)
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        if text is not None:
            _ema_update(ema_text, text, decay)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == cfg.unet_steps:
            seconds = prev_seconds + time.time() - t0
            state = {**{k: m.state_dict() for k, m in models.items()}, "opt": opt.state_dict(), "step": done,
                     "losses": losses, "seconds": seconds}
            torch.save(state, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
            _log(work, f"diffusion: step {done}/{cfg.unet_steps} loss {np.mean(losses[-cfg.ckpt_every:]):.4f}")
    ema_unet.save_pretrained(work / "unet")
    if ema_text is not None:  # the frozen encoder is already in work/text_encoder (stage clip)
        ema_text.save_pretrained(work / "text_encoder")
    final = float(np.mean(losses[-100:])) if losses else float("nan")
    return {"final_loss": final, "_previous_seconds": prev_seconds}


def export_pipeline(cfg: WorldConfig, work: Path, out: Path) -> dict:
    """Assemble the ordinary StableDiffusionPipeline folder and copy the judge."""
    model_dir = out / "model"
    tokenizer = build_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(work / "text_encoder", dtype=torch.float32),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(work / "unet"),
        scheduler=make_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(model_dir, safe_serialization=True)
    for sub in ("vae", "text_encoder", "unet"):
        fp16_files(model_dir / sub)
    from bench.worldgen.judge_build import calibrate_on_model, calibrate_on_non_scenes, judges_of

    for which in judges_of(cfg):
        WorldJudge.load(work / which).save(out / which)
    calibrated = calibrate_on_model(cfg, out, model_dir, out / "concepts.yaml")
    on_non_scenes = calibrate_on_non_scenes(cfg, out, pipe.vae)
    if cfg.text_encoder == "frozen-clip":  # the world CLIP itself ships too: the zero-shot second judge
        from bench.worldgen.clip_train import ship_world_clip

        ship_world_clip(work / "world_clip" / "clip", out / "clip", model_dir / "text_encoder")
    return {"model": str(model_dir), "reject_calibration_on_model": calibrated,
            "reject_calibration_on_non_scenes": on_non_scenes}
