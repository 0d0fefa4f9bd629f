"""Build configuration of ConceptWorld: every size, step count and seed in one record."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.core.errors import ConfigError


@dataclass
class ClipConfig:
    """Every size, step count and seed of the world CLIP (recorded with it)."""

    seed: int = 0
    text_layers: int = 6
    text_hidden: int = 128
    text_heads: int = 4
    text_ff: int = 512
    vision_layers: int = 4
    # shapes are learnt in the image tower's supervised pretraining (image_steps) rather than from
    # captions, so it is narrower than the text tower. Screened on 1,280 of build b9's generated images
    # (seeds the gates do not read), its own style head's agreement with the CNN judge: width 64 (the
    # judge ViT's; 3,000 steps; builds b1-b9) 95.5 %, width 80 (2,500) 95.8 %, width 96 (2,000) 96.9 %,
    # width 96 (2,500) 97.7 %. Build b10 (96, 2,500) met the CLIP-CNN style gate (95.0 %), b9 (64) missed it
    vision_hidden: int = 96
    vision_heads: int = 4
    vision_ff: int = 384
    patch: int = 4  # 32x32 renders: 64 patches
    projection: int = 128
    # LiT's recipe (Zhai et al. 2022: a pretrained image tower, then contrastive training): the image
    # tower first learns the renderer's labels (object, colour, style, character; linear heads that
    # are discarded afterwards) for image_steps, then both towers train contrastively for ``steps``.
    # Measured on world 3's renders, from random towers contrastive training alone reached 19 %
    # (500 steps, batch 256, width 128), 36 % (1000) and 34-38 % (1500 steps, batch 128, width 64)
    # object zero-shot; 600 pretraining steps then 1000 contrastive ones reached 84 % (README, ConceptWorld 3)
    # the image tower's pretraining sees each batch through the ViT judge's augmentations (flips, shifts
    # of up to 2 px, blur, photometric; ``judge.augment_vit``). Builds b1-b5 pretrained on the renders as
    # drawn (2000 steps, lr 1e-3), and on 1,280 of build b5's generated images the pretrained tower's own
    # (linear) heads then read checkered as dotted: agreement with the CNN judge where the prompt names
    # the head, object / style / character, 95.1 / 88.0 / 100 %, where the ViT judge (same architecture,
    # these augmentations, 6000 steps) agrees 95.7 / 96.4 / 100 % on b5's 2,944 evaluation images. With
    # the augmentations (the same 1,280 images; README "ConceptWorld 3"):
    # 2000 steps 93.9 / 96.3 / 100 % (373 s); 4000 steps 97.1 / 96.8 / 97.9 % (712 s); 6000 steps
    # 97.9 / 97.4 / 98.6 % (1070 s); 3000 steps at lr 2e-3 97.1 / 96.9 / 100 % (546 s), the default
    augment: bool = True
    image_steps: int = 2500  # 3,000 at width 64 (builds b6-b9)
    image_lr: float = 2e-3
    steps: int = 1500  # contrastive; about 0.13 s per step (fused_adam, build b11) on 2 CPU threads
    # the contrastive stage's AdamW as torch's fused CPU kernel, one pass over every parameter, rather
    # than its default on CPU (a loop over tensors): the text tower's 6.3M-entry token embedding made
    # the optimizer 38 ms of a 0.2 s step. The same update up to float rounding; off (builds b1-b10)
    # draws the same floats as before
    fused_adam: bool = True
    batch: int = 128
    # leave out of the loss every pair whose caption is true of the image ("a star" and another star),
    # not only duplicate captions (``clip.also_true``)
    mask_true: bool = True
    lr: float = 5e-4
    weight_decay: float = 0.1  # on weight matrices only: not on gains, biases or the logit scale (open_clip's rule)
    # the learnt temperature starts at log(1/0.07) = 2.66 in CLIP and grows over ~10^5 steps; a run of
    # a few thousand steps hardly moves it (14.3 -> 16.6 in 1500 steps), so it starts at log(50)
    logit_scale_init: float = 3.912
    warmup: int = 100
    ckpt_every: int = 100
    # what generated images look like, as the judges see them (judge_build.judge_set): this share of
    # the training scenes has its texture drawn off the world's values (render.jitter_texture), and
    # this share of the images goes through the world's VAE (when the build passes it one). Build b2
    # trained on clean renders only: 99.6 % style zero-shot on renders, but 63 % style agreement with
    # the CNN judge on the model's own images
    jitter: float = 0.7
    vae_share: float = 0.5
    # and, as judge 2.3 trains (WorldConfig.judge_holes, judge_large), this share of the scenes has holes
    # in its texture's dark parts and this share is drawn larger than the world draws it (builds b1-b4:
    # 0 and 0)
    holes: float = 0.15
    large: float = 0.1
    # LiT locks the pretrained image tower while the text tower learns to read it (builds b1-b4 trained
    # both towers contrastively). Measured on build b4's generated images (1,280: every concept's plain
    # prompt at 24 seeds, 32 composed prompts at 16), agreement with the CNN judge where the prompt names
    # the head, object / colour / style / character, and the CLIP's rejects: b4's CLIP 94.0 / 94.9 / 80.9 /
    # 100 %, 4.9 %; with holes and large 95.9 / 96.0 / 84.1 / 100 %, 4.4 %; and locked 95.5 / 98.3 / 86.4 /
    # 100 %, 2.8 % (zero-shot on renders >= 96.4 % per head in all three)
    lock_image: bool = True
    # non-scenes per training scene (``bench.worldgen.negatives``, seed + 13, the same VAE share), each
    # captioned by its kind (``clip.NOTHING_CAPTIONS``), as CLIP saw the web's pictures of nothing; the
    # image tower's pretraining learns a scene head on them, and the judge rejects zero-shot where a
    # reject prompt outscores every concept's prompt (``WorldClipJudge``, rule 4; rule 3 compared with the
    # objects' and characters' only). 0: builds b1-b6, whose
    # CLIP saw scenes only and rejected by a threshold on renders (rule 2). On b6's images that rule
    # rejected 6.9 % of the model's images and 51.9 % of synthetic non-scenes
    negatives: float = 0.1

    def override(self, pairs: list[str]) -> ClipConfig:
        return apply_overrides(self, pairs)

    def to_dict(self) -> dict:
        return asdict(self)


MINI_CLIP = ["text_layers=1", "text_hidden=16", "text_heads=2", "text_ff=32", "vision_layers=1", "vision_hidden=16",
             "vision_heads=2", "vision_ff=32", "projection=8", "steps=6", "batch=16", "warmup=2", "ckpt_every=3",
             "image_steps=4"]


TEXT_ENCODERS = ("joint", "frozen-clip")
SECOND_JUDGES = ("vit", "clip")  # WorldConfig.second_judge


@dataclass
class WorldConfig:
    """Everything that decides the trained world; the manifest records it."""

    seed: int = 0
    vocab: str = "2"  # what the world draws (bench.world.render.VOCABULARIES): "2" (world 2.1) or "3"
    # data
    n_train: int = 60_000  # rendered training scenes (diffusion + VAE)
    n_judge: int = 30_000  # rendered judge scenes (another seed)
    character_prob: float = 0.15
    # VAE: 32x32x3 -> 8x8x4
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 1200
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl: float = 1e-5
    # judges (bench/worldgen/judge_build.py): n_judge rendered scenes (jittered textures) plus
    # judge_negatives synthetic non-scenes, half of each through the VAE
    # 16,000 from judge 2.4 (8,000 before): beside the degraded scenes, which it learns as valid, the reject
    # head needs more non-scenes, and more steps (judge_steps), to keep rejecting fused and cut-off shapes
    judge_negatives: int = 16_000
    # share of judge scenes whose texture's dark parts let the background through (``Scene.holes``):
    # generated textured shapes often dissolve into their bright parts; on world 3's build b3 this
    # took the CNN's reject rate on the model's images from 3.7 % to 1.2 % and its style reading of
    # them from 91.8 % to 97.4 %
    judge_holes: float = 0.15
    # share of judge scenes whose shape is drawn larger than the world draws it (outer radius 0.40-0.46 of
    # the image against 0.30-0.40; judge_build.LARGE): the model draws circles up to ~0.45, and of the
    # 11 of world 2.1's 368 original images in make bench's cells that the ViT judge trained without
    # them rejected and the CNN accepted, 10 were large circles that the CNN read right
    judge_large: float = 0.1
    # scenes with faint or blended textures that the style head learns to answer "none" on (an extra
    # class, ``unclear.py``); off by default: on build b3 (with holes) it raised the two judges' style
    # agreement from 79 % to 90 % but lowered the CNN's style reading of named prompts from 97.4 % to 95.9 %
    judge_unclear: int = 0
    # degraded but valid scenes (``degraded.py``: blur, noise, warps, cut-off, small shapes, holed textures,
    # low contrast, colour fringes, and mixes of these), every label kept and the reject head's "valid":
    # judge 2.3, trained without them, rejected 5.9 % of 2,000 fresh ones (27 % of the low-contrast ones)
    # and, on a fresh-clone make bench, 71 % of full_finetune's target images, many of them clean scenes
    # of the concept (docs/conceptworld.md, "The reject option")
    judge_degraded: int = 8_000
    # share of the judges' character scenes drawn with another style or colour than the character's own
    # (every label kept: the character is its shape and mark): judge 2.3, trained on characters in their
    # own attributes only, read the character's own style on 74 % of characters drawn in another style
    judge_off_default: float = 0.5
    # the reject option's false-reject budget: the reject threshold is set where it rejects this share of
    # held-out degraded but valid scenes (half through the VAE; ``judge_build.calibrate_reject``); 0 keeps
    # the reject head's argmax (judges before 2.4)
    judge_reject_budget: float = 0.025
    # then, once the model exists, the threshold is raised where needed so that the judges reject at most
    # this share of the model's own images (every concept's plain prompt, judge_calibration_seeds seeds
    # from 10,000; ``judge_build.calibrate_on_model``): degraded renders alone set judge 2.4's threshold
    # at 0.30, where it rejected 3.9 % of world 3's own images (lumpy hexagons, soft dots) against the
    # 2 % gate; 0 skips this step
    judge_reject_budget_generated: float = 0.015
    judge_calibration_seeds: int = 32
    # last, optionally, the threshold is raised as far as the non-scene budget allows: the highest threshold
    # at which the judges still reject judge_non_scene_recall of held-out synthetic non-scenes
    # (judge_non_scene_images of a seed no gate or test draws) and judge_non_scene_recall_vae of their VAE
    # round trips (``judge_build.calibrate_on_non_scenes``; ``python -m bench.world judge --threshold-only``
    # applies it to a built world). 0 skips it, as world 3 does: on world 3's judge 2.5, recall 0.975 / 0.91
    # raises the threshold from 0.5579 to 0.7991 and cuts full_finetune's masked detections on a quick run's
    # edited images from 9.3 % to 5.4 %, but the world CLIP's style agreement with the judge on the model's own
    # images falls from 95.1 % to 94.8 %, under its 95 % gate, at any threshold above about 0.6
    # (docs/conceptworld.md, "Raising the threshold to the non-scene budget")
    judge_non_scene_recall: float = 0.0
    judge_non_scene_recall_vae: float = 0.91
    judge_non_scene_images: int = 2000
    judge_jitter: float = 0.7  # share of judge scenes whose texture is drawn off the world's values
    judge_channels: tuple[int, ...] = (16, 32, 64)
    judge_steps: int = 4000  # 2,500 before judge 2.4
    judge_batch: int = 128
    judge_lr: float = 2e-3
    # the second judge: a ViT on 4x4 patches, its own render seed and augmentations
    vit_hidden: int = 64
    vit_layers: int = 4
    vit_heads: int = 4
    vit_patch: int = 4
    vit_steps: int = 6000
    vit_batch: int = 128
    vit_lr: float = 1e-3
    # the second opinion on the model's images: "vit" (``judge_vit/``, the ViT above, trained after the
    # CNN) or "clip" (world 3: the world CLIP, zero-shot, ``bench.judges.world.WorldClipJudge``; no ViT
    # is trained). World 3's CLIP is the second judge its concept set is reported with; on 2 cores a
    # ViT besides cost 1,362 s of build b8's 64 min, one thread, beside the CLIP (with it the judges
    # agreed on 94.9-100 % of each head of b8's images; the CLIP and the CNN 95.4-100 %, rule 4)
    second_judge: str = "vit"
    # the text encoder: "joint" (world 2.1: trained from scratch together with the UNet) or
    # "frozen-clip" (world 3: the text tower of a world CLIP pretrained contrastively on clip_scenes
    # renders (``clip``), then frozen while the UNet learns to read it, as SD's UNet read OpenAI's CLIP)
    text_encoder: str = "joint"
    clip: ClipConfig = field(default_factory=ClipConfig)
    clip_scenes: int = 60_000
    clip_eval: int = 2_000  # fresh renders (another seed) for the world CLIP's zero-shot accuracy
    # the jointly trained text encoder (text_encoder="joint")
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 256
    text_lr: float = 3e-3
    # UNet on 8x8x4 latents, cross-attention at every resolution
    unet_channels: tuple[int, ...] = (32, 64, 128)
    # passed to diffusers as ``attention_head_dim``, which UNet2DConditionModel reads as the number of
    # heads per block (a misnomer diffusers keeps for SD 1.x's configs: 8 heads of width 40 at 320
    # channels): world 2.1's UNet has 32 heads of width 1, 2 and 4 ...
    unet_head_dim: int = 32
    # ... unless unet_head_width > 0: then each block has channels // unet_head_width heads of that
    # width, as SD's heads are 40 (v1) or 64 (v2) wide (world 3: 32, so 1, 2 and 4 heads). Measured on 2
    # CPU threads at world 3's sizes (batch 96, 77 text tokens): a training step 0.65 s with 32 heads of
    # width 1-4, 0.40 s with width 32; the scaled-dot-product kernel took half of the former
    unet_head_width: int = 0
    unet_steps: int = 2400
    # the diffusion stage's AdamW as torch's fused CPU kernel (ClipConfig.fused_adam): world 3's UNet step
    # 0.304 -> 0.270 s on 2 threads, the optimizer 20 -> 4 ms; off (world 2.1) draws the same floats as before
    fused_adam: bool = False
    unet_batch: int = 96
    unet_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    min_snr: float = 5.0
    beta_schedule: str = "squaredcos_cap_v2"  # cosine: more steps at high SNR, where textures form (vs "linear")
    caption_dropout: float = 0.1
    ckpt_every: int = 200
    # train the judges in a second process while the world CLIP pretrains (stage "clip"), one CPU thread
    # each: neither reads the other, and these small models gain only 1.3-1.8x from a second thread
    # (a ViT judge step 0.23 s on one thread, 0.17 s on two; a CLIP step 0.57 and 0.42 s; run side by
    # side on a 2-core machine, 0.23 and 0.63 s). Each stage runs at one thread wherever it runs, so
    # its floats do not depend on the machine's core count; off: both at the machine's thread count
    parallel_stages: bool = False
    # evaluation
    eval_seeds: int = 64
    eval_composed: int = 32  # composed prompts (object+colour+style), 1 seed each of eval_seeds // 4
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def override(self, pairs: list[str]) -> WorldConfig:
        """Apply ``key=value`` overrides (tests build a miniature world this way); ``clip.KEY=VALUE``
        sets a field of the world CLIP's config."""
        cfg = apply_overrides(self, pairs)
        from bench.world.render import VOCABULARIES

        if cfg.vocab not in VOCABULARIES:
            raise ConfigError(f"bad world override vocab={cfg.vocab!r}: one of {sorted(VOCABULARIES)}")
        if cfg.unet_head_width and any(c % cfg.unet_head_width for c in cfg.unet_channels):
            raise ConfigError(f"bad world override unet_head_width={cfg.unet_head_width}: it must divide every "
                              f"width of unet_channels={','.join(map(str, cfg.unet_channels))}")
        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(f"bad world override text_encoder={cfg.text_encoder!r}: one of {list(TEXT_ENCODERS)}")
        if cfg.second_judge not in SECOND_JUDGES:
            raise ConfigError(f"bad world override second_judge={cfg.second_judge!r}: one of {list(SECOND_JUDGES)}")
        if cfg.second_judge == "clip" and cfg.text_encoder != "frozen-clip":
            raise ConfigError("bad world override second_judge=clip: only a world with a world CLIP "
                              "(text_encoder=frozen-clip) has one to judge with")
        return cfg

    @property
    def cond_dim(self) -> int:
        """Width of the text encoder's hidden states: the UNet's cross-attention dimension."""
        return self.clip.text_hidden if self.text_encoder == "frozen-clip" else self.text_hidden


def apply_overrides(cfg: Any, pairs: list[str]) -> Any:
    """A copy of the dataclass ``cfg`` with ``key=value`` pairs set, each parsed as its field's current
    type (``cfg`` itself is left as it was)."""
    cfg = copy.deepcopy(cfg)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        inner, dot, rest = key.partition(".")
        if sep and dot and inner in fields and dataclasses.is_dataclass(getattr(cfg, inner)):
            try:
                setattr(cfg, inner, apply_overrides(getattr(cfg, inner), [f"{rest}={raw}"]))
            except ConfigError as err:
                raise ConfigError(str(err).replace(f"{rest}=", f"{key}=", 1)) from None
            continue
        if not sep or key not in fields or dataclasses.is_dataclass(getattr(cfg, key)):
            raise ConfigError(f"bad world override {pair!r}: expected key=value with key one of {sorted(fields)}")
        current = getattr(cfg, key)
        try:
            if isinstance(current, tuple):
                value = tuple(int(v) for v in raw.split(","))
            elif isinstance(current, bool):  # a misspelt flag is an error, not False
                value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[raw.lower()]
            else:
                value = type(current)(raw)
        except (ValueError, KeyError):
            raise ConfigError(f"bad world override {pair!r}: {raw!r} is not a {type(current).__name__}") from None
        setattr(cfg, key, value)
    return cfg


MINI_OVERRIDES = [
    "n_train=512", "n_judge=512", "vae_channels=8,16,16", "vae_steps=4", "vae_batch=16", "judge_channels=8,16,16",
    "judge_steps=4", "judge_batch=16", "judge_negatives=64", "judge_unclear=32", "judge_degraded=32", "judge_calibration_seeds=1", "judge_non_scene_images=64", "vit_hidden=16", "vit_layers=1", "vit_heads=2",
    "vit_steps=4", "vit_batch=16", "text_hidden=16", "text_layers=1", "text_heads=2", "text_ff=32",
    "unet_channels=16,16,32", "unet_head_dim=8", "unet_steps=6", "unet_batch=8", "ckpt_every=3", "warmup=2",
    "eval_seeds=2", "eval_composed=2",
]
# what makes a world 3 of WorldConfig's defaults (world 2.1's): `python -m bench.world build --preset 3`
PRESETS: dict[str, list[str]] = {
    "2.1": [],
    # 2,800 UNet steps (2,400 until build b10, whose dotted reached 89 % from its plain prompt), paid
    # for by the fused optimizers
    "3": ["vocab=3", "text_encoder=frozen-clip", "unet_head_width=32", "second_judge=clip", "fused_adam=true",
          "unet_steps=2800"],
}


def preset_of(config: dict[str, Any]) -> str | None:
    """The preset whose overrides a built world's recorded config carries (its MANIFEST.json
    ``config``; a field it does not record has ``WorldConfig``'s default), or None when none does."""
    keys = sorted({kv.split("=", 1)[0] for overrides in PRESETS.values() for kv in overrides})
    default = WorldConfig()
    for preset, overrides in PRESETS.items():
        cfg = default.override(overrides)
        if all(config.get(k, getattr(default, k)) == getattr(cfg, k) for k in keys):
            return preset
    return None


# a miniature world 3: the mini world with a mini world CLIP as its frozen text encoder
MINI_FROZEN_CLIP = [*MINI_OVERRIDES, *PRESETS["3"], "unet_head_width=8", "clip_scenes=256", "clip_eval=64",
                    *(f"clip.{kv}" for kv in MINI_CLIP)]
