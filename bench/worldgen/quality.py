"""Measure ConceptWorld's quality gates: judge accuracy, per-concept generation accuracy, throughput.

Generation goes through the pipeline's ordinary ``__call__`` with the benchmark's default sampler
(``bench.core.protocol.WORLD_SAMPLER``) and one ``torch.Generator().manual_seed(seed)`` per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from bench.core.concepts import ConceptSet, load_concept_set
from bench.core.protocol import WORLD_SAMPLER, SamplerSpec
from bench.world.captions import TEMPLATES, describe
from bench.world.judge import WorldJudge, accuracy
from bench.world.render import CHARACTER_SPECS, VOCABULARIES, Vocabulary, render_batch, to_tensor
from bench.worldgen.negatives import render_negatives
from bench.worldgen.sampling import generate, load_pipeline

GATES = {"judge": 0.98, "object": 0.90, "style": 0.90, "character": 0.90, "colour": 0.90, "composed": 0.75,
         # the judges on the model's own images (judge 2.2): the prompt's named attributes as the truth
         "judge_on_generated": 0.97, "reject_original": 0.02, "judge_agreement": 0.95,
         # world 3's CLIP as a zero-shot judge: on renders, and against the CNN on the model's images
         "clip_zero_shot": 0.95, "clip_agreement": 0.95,
         # the reject option (judge 2.4): degraded but valid scenes read, not rejected; non-scenes rejected
         "reject_degraded": 0.05, "degraded_heads": 0.95, "reject_non_scenes": 0.95}
# world 3's gates are world 2's with composed prompts at 85 % all-right (its twice-richer concept set
# is meant to measure selective alignment; 75 % leaves too little room above a broken model)
GATES_BY_VOCAB = {"2": GATES, "3": {**GATES, "composed": 0.85}}


def _tile(images: torch.Tensor, label: str, scale: int = 2) -> Image.Image:
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    row = Image.fromarray(np.concatenate(list(arr), axis=1))
    row = row.resize((row.width * scale, row.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (row.width + 110, row.height), (255, 255, 255))
    canvas.paste(row, (110, 0))
    ImageDraw.Draw(canvas).text((4, row.height // 2 - 6), label, fill=(0, 0, 0))
    return canvas


def _stack(rows: list[Image.Image]) -> Image.Image:
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def vocabulary_of(judge: WorldJudge) -> Vocabulary:
    """The world vocabulary whose class lists the judge's attribute heads have."""
    from bench.world.judge import judge_heads

    for vocab in VOCABULARIES.values():
        for unclear in (False, True):  # judges built with and without the style none class
            heads = judge_heads(vocab, unclear)
            if all(list(heads[h]) == list(judge.classes.get(h, ())) for h in vocab.heads):
                return vocab
    raise ValueError(f"judge {judge.id} has classes of no known world vocabulary: {judge.classes}")


def judge_quality(judge: WorldJudge, vae=None, n: int = 2000, seed: int = 987_654) -> dict[str, dict[str, float]]:
    """Judge accuracy per head on freshly rendered scenes of its world (and on their VAE round trip)."""
    vocab = vocabulary_of(judge)
    images, scenes = render_batch(seed, n, vocab=vocab)
    x = to_tensor(images)
    labels = {h: torch.tensor([s.labels()[h] for s in scenes]) for h in vocab.heads}
    res = {"rendered": accuracy(judge, x, labels)}
    if vae is not None:
        from bench.worldgen.data import vae_roundtrip

        res["vae_roundtrip"] = accuracy(judge, vae_roundtrip(vae, x), labels)
    return res


def reject_quality(judge: WorldJudge, vae=None, n: int = 2000, seed: int = 987_655) -> dict:
    """The reject option on seeds no judge trained on: degraded but valid scenes (``degraded.py``, with
    the VAE kind where a VAE is given; the reject rate and each head's accuracy on the images it reads)
    and synthetic non-scenes (the share rejected, as rendered and through the VAE)."""
    from bench.worldgen.degraded import degraded_report, render_degraded

    vocab = vocabulary_of(judge)
    x, scenes, kinds = render_degraded(seed, n, vocab, vae)
    out = {"degraded": degraded_report(judge, x, scenes, kinds), "threshold": judge.reject_threshold}
    neg = to_tensor(render_negatives(seed + 1, n // 2, vocab=vocab)[0])
    out["non_scenes"] = float(judge.rejected(judge.predict(neg)).float().mean())
    if vae is not None:
        from bench.worldgen.data import vae_roundtrip

        with torch.no_grad():
            out["non_scenes_vae"] = float(judge.rejected(judge.predict(vae_roundtrip(vae, neg))).float().mean())
    out["non_scene_images"] = len(neg)
    return out


def evaluate(world: str | Path, seeds: int = 64, composed: int = 32, sampler: SamplerSpec = WORLD_SAMPLER,
             grid_path: str | Path | None = None) -> dict:
    """All gates of the world in ``world`` (model/, judge/, concepts.yaml); returns the quality table."""
    world = Path(world)
    cs: ConceptSet = load_concept_set(world / "concepts.yaml")
    judge = WorldJudge.load(world / "judge")
    vocab = vocabulary_of(judge)
    heads = vocab.heads
    shapes, colours, styles = list(vocab.shapes), list(vocab.colours), list(vocab.styles)
    named: list[tuple[torch.Tensor, dict[str, int]]] = []  # every generated batch, with the attributes its prompt names
    pipe = load_pipeline(world / "model", sampler)
    result: dict = {"vocab": vocab.version, "sampler": sampler.to_dict(), "seeds": seeds, "judge_id": judge.id,
                    "judge": judge_quality(judge, pipe.vae), "judge_reject": reject_quality(judge, pipe.vae)}
    seed_list = list(range(seeds))
    per_concept, rows, gen_time, gen_n = {}, [], 0.0, 0
    for c in tqdm(cs.concepts, desc="concepts"):
        head, label = c.extra["head"], c.extra["label"]
        prompt = c.prompts()[0]
        t0 = time.time()
        images = generate(pipe, prompt, seed_list, sampler)
        gen_time += time.time() - t0
        gen_n += len(images)
        named.append((images, {head: heads[head].index(label)}))
        pred = judge.predict(images)[head]
        per_concept[c.name] = {"type": c.type, "split": c.split, "prompt": prompt,
                               "accuracy": float((pred == heads[head].index(label)).float().mean())}
        rows.append(_tile(images[:12], f"{c.name} ({c.type})"))
    result["concepts"] = per_concept
    # characters must stay separable from their plain ingredients ("purple dotted star" is not zorbo)
    ingredients = {}
    for name in vocab.characters:
        spec = CHARACTER_SPECS[name]
        prompt = TEMPLATES[0].format(describe(spec["shape"], spec["colour"], spec["style"]))
        images = generate(pipe, prompt, seed_list, sampler)
        named.append((images, {"object": shapes.index(spec["shape"]), "colour": colours.index(spec["colour"]),
                               "style": styles.index(spec["style"])}))
        pred = judge.predict(images)
        ingredients[name] = {
            "prompt": prompt,
            "judged_as_character": float((pred["character"] == heads["character"].index(name)).float().mean()),
            "all_attributes_right": float(((pred["object"] == shapes.index(spec["shape"]))
                                           & (pred["colour"] == colours.index(spec["colour"]))
                                           & (pred["style"] == styles.index(spec["style"]))).float().mean()),
        }
        rows.append(_tile(images[:12], f"{spec['colour']} {spec['style']} {spec['shape']}"[:18]))
    result["character_ingredients"] = ingredients
    # composed prompts: object + colour + style all right
    rng = np.random.default_rng(4242)
    per_prompt = max(1, seeds // 4)
    hits, total, composed_rows = 0, 0, []
    for k in tqdm(range(composed), desc="composed"):
        shape, colour, style = str(rng.choice(shapes)), str(rng.choice(colours)), str(rng.choice(styles))
        prompt = TEMPLATES[0].format(describe(shape, colour, style))
        images = generate(pipe, prompt, list(range(per_prompt)), sampler)
        named.append((images, {"object": shapes.index(shape), "colour": colours.index(colour),
                               "style": styles.index(style)}))
        pred = judge.predict(images)
        ok = ((pred["object"] == shapes.index(shape)) & (pred["colour"] == colours.index(colour))
              & (pred["style"] == styles.index(style)))
        hits += int(ok.sum())
        total += len(ok)
        if k < 6:
            composed_rows.append(_tile(images[:12], f"{style} {colour} {shape}"[:18]))
    result["composed"] = {"prompts": composed, "seeds_per_prompt": per_prompt, "all_right": hits / max(total, 1)}
    result["judges_on_generated"] = judges_on_generated(world, named, heads)
    if (world / "clip").is_dir():
        result["world_clip"] = world_clip_quality(world / "clip", vocab, torch.cat([x for x, _ in named]),
                                                  scored=named_masks(named, heads))
    result["throughput_images_per_s"] = gen_n / max(gen_time, 1e-9)
    result["torch_threads"] = torch.get_num_threads()
    result["summary"] = summarise(result)
    if grid_path is not None:
        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        _stack(rows + composed_rows).save(grid_path)
    return result


def named_masks(named: list[tuple[torch.Tensor, dict[str, int]]], heads: Iterable[str]) -> dict[str, list[bool]]:
    """Per head, one flag per image of ``named``'s batches: whether the image's prompt names the head."""
    return {h: [h in truth for x, truth in named for _ in range(len(x))] for h in heads}


def judges_on_generated(world: Path, named: list[tuple[torch.Tensor, dict[str, int]]],
                        heads: dict[str, tuple[str, ...]]) -> dict:
    """Each judge on the model's own images: per-head accuracy against the attributes the prompt
    names (a rejected image counts as wrong), reject rate; and the two judges' agreement per head, over
    the images whose prompt names the head (``every_image`` and ``agreement_by_prompt`` keep the rest)."""
    from bench.api.judge import REJECT_LABEL, SCENE_HEAD
    from bench.judges.world import WorldConceptJudge
    from bench.metrics.formulas import agreement
    from bench.worldgen.judge_build import FIRST, SECOND

    images = torch.cat([x for x, _ in named])
    out: dict = {"images": len(images)}
    labels = {}
    for which in (FIRST, SECOND):
        if not (world / which).is_dir():
            continue
        judge = WorldConceptJudge(world / which)
        labels[which] = got = judge.labels(images)
        hits: dict[str, list[bool]] = {}
        start = 0
        for x, truth in named:
            for head, index in truth.items():
                hits.setdefault(head, []).extend(v == heads[head][index] for v in got[head][start:start + len(x)])
            start += len(x)
        out[which] = {"reject_rate": float(np.mean([v == REJECT_LABEL for v in got[SCENE_HEAD]])),
                      "head_accuracy": {h: float(np.mean(v)) for h, v in hits.items()},
                      "head_images": {h: len(v) for h, v in hits.items()}}
    if len(labels) == 2:
        # per head over the images whose prompt names it (and the reject verdict on every image), as a
        # cell's numbers read them (bench.metrics.formulas.AGREEMENT_DEFINITION); where the prompt names no value
        # the model draws whatever it likes there (often a half-formed texture) and neither judge has a truth
        named_mask = named_masks(named, heads)
        out["agreement"] = agreement(labels[FIRST], labels[SECOND], scored=named_mask)
        out["agreement_by_prompt"] = {}
        for h, mask in named_mask.items():
            for key, want in (("named", True), ("unnamed", False)):
                pick = [i for i, m in enumerate(mask) if m == want]
                if pick:
                    same = [labels[FIRST][h][i] == labels[SECOND][h][i] for i in pick]
                    out["agreement_by_prompt"].setdefault(key, {})[h] = {"agreement": float(np.mean(same)),
                                                                           "images": len(pick)}
    return out


def world_clip_quality(folder: Path, vocab: Vocabulary, generated: torch.Tensor, n: int = 2000,
                       seed: int = 987_654, scored: dict[str, list[bool]] | None = None) -> dict:
    """The world CLIP as a zero-shot judge (``bench.world.clip.zero_shot_labels``): accuracy per
    head on fresh renders, and agreement per head with the CNN judge (``folder``'s sibling ``judge``)
    on the model's own images that the CNN does not reject, attribute heads only: each head over the
    images ``scored`` names it on (their prompt names it; ``every_image`` keeps all), or every image."""
    from bench.api.judge import REJECT_LABEL, SCENE_HEAD
    from bench.judges.world import WorldClipJudge, WorldConceptJudge
    from bench.metrics.formulas import agreement
    from bench.world.clip import load_world_clip, zero_shot

    model, _ = load_world_clip(folder)
    images, scenes = render_batch(seed, n, vocab=vocab)
    out: dict = {"zero_shot": zero_shot(model, to_tensor(images), scenes, vocab=vocab), "renders": n}
    judge = WorldConceptJudge(folder.parent / "judge")
    cnn = judge.labels(generated)
    keep = [i for i, s in enumerate(cnn[SCENE_HEAD]) if s != REJECT_LABEL]
    # the CLIP's style head abstains too where the CNN's can (a judge trained with unclear scenes)
    clip = WorldClipJudge(folder, unclear=judge.judge.unclear)
    every = clip.labels(generated)  # one pass: the agreement reads the images the CNN keeps, the reject rate all
    mine = {h: [v[i] for i in keep] for h, v in every.items() if h in vocab.heads}
    kept = {h: [m[i] for i in keep] for h, m in scored.items() if h in mine} if scored is not None else None
    out["agreement_with_judge"] = agreement({h: [cnn[h][i] for i in keep] for h in mine}, mine, scored=kept)
    out["generated_images"], out["rejected_by_judge"] = len(generated), len(generated) - len(keep)
    # what its reject does (not a gate): the share of the model's images and of fresh synthetic
    # non-scenes (``bench.worldgen.negatives``, of a seed no judge trained on) it rejects
    non_scenes = to_tensor(render_negatives(seed + 1, n // 2, vocab=vocab)[0])
    out["reject"] = {"rule": clip.rule, "generated": float(np.mean([v == REJECT_LABEL for v in every[SCENE_HEAD]])),
                     "non_scenes": float(clip.reject(non_scenes).float().mean()), "non_scene_images": len(non_scenes)}
    return out


def summarise(result: dict) -> dict:
    """Worst case per gate of the result's world (``GATES_BY_VOCAB``) and whether it passes."""
    gates = GATES_BY_VOCAB[str(result.get("vocab", "2"))]
    out = {}
    judge_min = min(min(v.values()) for v in result["judge"].values())
    out["judge_min_head_accuracy"] = {"value": judge_min, "gate": gates["judge"], "pass": judge_min >= gates["judge"]}
    for kind in ("object", "style", "character", "colour"):
        accs = [v["accuracy"] for v in result["concepts"].values() if v["type"] == kind]
        if accs:
            out[f"{kind}_min_accuracy"] = {"value": min(accs), "mean": float(np.mean(accs)), "gate": gates[kind],
                                           "pass": min(accs) >= gates[kind]}
    r = result.get("judge_reject")
    if r:  # worlds evaluated before judge 2.4 have none
        d = r["degraded"]["all"]
        out["judge_reject_rate_on_degraded"] = {"value": d["reject"], "gate": gates["reject_degraded"], "max": True,
                                                "pass": d["reject"] <= gates["reject_degraded"]}
        worst = min(v for h, v in d.items() if h not in ("n", "reject"))
        out["judge_min_head_accuracy_on_degraded"] = {"value": worst, "gate": gates["degraded_heads"],
                                                      "pass": worst >= gates["degraded_heads"]}
        non = r["non_scenes"]  # the synthetic non-scenes as drawn; their VAE round trips are reported beside
        out["judge_reject_rate_on_non_scenes"] = {"value": non, "gate": gates["reject_non_scenes"],
                                                  "pass": non >= gates["reject_non_scenes"]}
    c = result["composed"]["all_right"]
    out["composed_all_right"] = {"value": c, "gate": gates["composed"], "pass": c >= gates["composed"]}
    g = result.get("judges_on_generated", {}).get("judge")
    if g:
        worst = min(g["head_accuracy"].values())
        out["judge_min_head_accuracy_on_generated"] = {
            "value": worst, "mean": float(np.mean(list(g["head_accuracy"].values()))),
            "gate": gates["judge_on_generated"], "pass": worst >= gates["judge_on_generated"]}
        r = g["reject_rate"]
        out["judge_reject_rate_on_generated"] = {"value": r, "gate": gates["reject_original"], "max": True,
                                                  "pass": r <= gates["reject_original"]}
    a = result.get("judges_on_generated", {}).get("agreement")
    if a:
        out["judges_min_head_agreement_on_generated"] = {"value": a["min"], "gate": gates["judge_agreement"],
                                                         "pass": a["min"] >= gates["judge_agreement"]}
    clip = result.get("world_clip")
    if clip:
        worst = min(clip["zero_shot"].values())
        out["clip_min_zero_shot_on_renders"] = {"value": worst, "gate": gates["clip_zero_shot"],
                                                "pass": worst >= gates["clip_zero_shot"]}
        a = clip["agreement_with_judge"]["min"]
        out["clip_min_head_agreement_with_judge_on_generated"] = {"value": a, "gate": gates["clip_agreement"],
                                                                  "pass": a >= gates["clip_agreement"]}
    return out
