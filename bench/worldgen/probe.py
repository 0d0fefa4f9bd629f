"""Why a world orders two erasures' robustness as it does: probes of an edit in the text and
cross-attention space, cheap enough for two CPU cores (no image is generated).

    python -m bench.world probe [--world DIR] [--methods uce,esd@x] [--concepts a,b] [--out FILE]

Each method, in its dev-tuned config (``reports/tuned/<concept set>.json``), erases each concept from
the world model; before ``Edit.restore()`` puts the weights back, five numbers are read off the edit.
``K`` below is every cross-attention key and value projection of the UNet stacked into one matrix
(rows: all ``attn2.to_k``/``to_v`` outputs; columns: the text width), ``K0`` before the erase and ``K1``
after; ``H`` a prompt's 77 text-encoder token states (what cross-attention reads).

``footprint``  the edit's relative change of the keys and values at a prompt's word token (its last
               word, where UCE reads a concept), ``|(K1 - K0) h| / |K0 h|``: on the concept's own
               prompts (``target``), and the share of every other concept's prompts of the set moved
               at least ``moved`` times as much (``others_moved``): how much of the text space the
               edit covers; ``cosine_others``, the mean cosine between the concept's word state and
               theirs: how crowded the text space is around it (the same for every method).
``detour``     the text states an attacker who writes the encoder's output directly would need,
               ``X = argmin |K1 X - K0 H|`` (least squares, per token): ``residual``, the share of the
               edit's effect on keys and values that no text state undoes, and ``distance``,
               ``|X - H| / |H|``, how far from the plain prompt's states that route lies. A closed-form
               edit of K and V with one map for every layer (UCE: ``K1 = K0 M``) has residual 0 by
               construction: the route exists, and the question is whether the encoder can reach it.
``reach``      what the encoder can reach: a soft prefix of ``prefix_len`` free token vectors (the
               ``soft_prefix`` attack's length and initialisation) optimised for ``reach_steps`` steps
               to undo the edit's change of keys and values on the concept's prompts. ``restored`` is
               ``1 - |K1 X' - K0 H| / |K1 H - K0 H|`` over the prompt's tokens: 1 undoes the edit, 0 is
               no better than the plain prompt. ``random_best`` is the same for the best of
               ``random_prefixes`` random token prefixes (what a discrete search could stumble on).
``attack``     the ``soft_prefix`` attack itself (its defaults, against the denoising loss on the
               concept's rendered held-out images): the same ``restored`` for the text states it
               found, and ``change``: the edit's relative change of the keys and values of the whole
               attacked sequence (prefix included) over that of the plain prompts. Restored near 1
               says the attack undoes the edit; change near 0, that it found states the edit does
               not touch; neither, that its route runs elsewhere (the queries, other tokens).

Only keys and values are read: ESD-x also trains cross-attention's queries and output projections,
whose change no text state can undo, so its ``restored`` is an upper bound on what the text can do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.concepts import Concept, ConceptSet
from bench.model.crossattn import kv_matrix, word_embeddings

PROBE_VERSION = "1"


@dataclass(frozen=True)
class ProbeConfig:
    """What the probes read; every random choice takes ``seed``."""

    methods: tuple[str, ...] = ("uce", "esd@x")
    concepts: tuple[str, ...] = ()  # () = the concept set's test split
    moved: float = 0.5  # a prompt counts as moved when its change is at least this share of the concept's
    prefix_len: int = 5  # soft_prefix's default
    reach_steps: int = 300
    reach_lr: float = 1e-2  # soft_prefix's default
    random_prefixes: int = 256
    attack_iterations: int | None = None  # None: the soft_prefix attack's own default
    seed: int = 0


# -- what the probes read ----------------------------------------------------------------------
def token_states(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """N x 77 x D text-encoder states (no gradient)."""
    from bench.model.training import encode_prompts

    with torch.no_grad():
        return encode_prompts(pipe, prompts).float()


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per prompt of an N x T x R tensor."""
    return x.flatten(1).norm(dim=1)


def relative_change(k0: torch.Tensor, k1: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per prompt: |(K1 - K0) H| / |K0 H|."""
    return _norm(h @ (k1 - k0).T) / _norm(h @ k0.T).clamp_min(1e-12)


def restored(k0: torch.Tensor, k1: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> float:
    """How much of the edit's change of keys and values the states ``x`` undo for prompts whose plain
    states are ``h`` (aligned tokens): 1 - |K1 x - K0 h| / |K1 h - K0 h|."""
    target = h @ k0.T
    gap = (h @ k1.T - target).norm()
    return float(1 - (x @ k1.T - target).norm() / gap.clamp_min(1e-12))


# -- the probes ----------------------------------------------------------------------------------
def footprint(k0: torch.Tensor, k1: torch.Tensor, target: torch.Tensor, others: torch.Tensor, moved: float
              ) -> dict[str, float]:
    """The edit's relative change of keys and values at each prompt's word token (N x D states)."""
    on = relative_change(k0, k1, target[:, None])
    off = relative_change(k0, k1, others[:, None])
    bar = moved * float(on.mean())
    cos = torch.nn.functional.cosine_similarity(target.mean(0, keepdim=True), others)
    return {"target": float(on.mean()), "others_median": float(off.median()),
            "others_moved": float((off >= bar).float().mean()), "others": len(off),
            "cosine_others": float(cos.mean())}


def detour(k0: torch.Tensor, k1: torch.Tensor, h: torch.Tensor) -> dict[str, float]:
    """The least-squares text states that restore the original keys and values under the edit."""
    flat = h.reshape(-1, h.shape[-1]).double()
    x = torch.linalg.lstsq(k1.double(), (flat @ k0.double().T).T).solution.T
    residual = (x @ k1.double().T - flat @ k0.double().T).norm() / (flat @ (k1 - k0).double().T).norm().clamp_min(1e-12)
    return {"residual": float(residual), "distance": float((x - flat).norm() / flat.norm())}


def _aligned(h: torch.Tensor, k: int) -> torch.Tensor:
    """The plain prompts' states at the positions a ``k``-token prefix shifts them from (1 .. 77-k)."""
    return h[:, 1 : h.shape[1] - k]


def reach(pipe: Any, k0: torch.Tensor, k1: torch.Tensor, prompts: list[str], cfg: ProbeConfig) -> dict[str, float]:
    """A soft prefix optimised to undo the edit on keys and values, and the best random token prefix."""
    from bench.model.text import encode_with_prefix
    from bench.model.training import only_trainable

    gen = torch.Generator().manual_seed(cfg.seed)
    k = cfg.prefix_len
    plain = _aligned(token_states(pipe, prompts), k)
    table = pipe.text_encoder.get_input_embeddings().weight
    n_ids = table.shape[0] - 2  # soft_prefix's draw: any token but the last two (start and end of text)

    def states(prefix: torch.Tensor) -> torch.Tensor:
        return encode_with_prefix(pipe, prompts, prefix).float()[:, 1 + k :]

    with torch.no_grad():
        scores = [restored(k0, k1, plain, states(table[torch.randint(0, n_ids, (k,), generator=gen)].float()))
                  for _ in range(cfg.random_prefixes)]
    start = torch.randint(0, n_ids, (k,), generator=gen)
    prefix = table[start].detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([prefix], lr=cfg.reach_lr)
    target = plain @ k0.T
    with only_trainable(pipe, {}):
        for _ in range(cfg.reach_steps):
            loss = (states(prefix) @ k1.T - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        soft = restored(k0, k1, plain, states(prefix))
    scores_t = torch.tensor(scores)
    return {"restored": soft, "random_best": float(scores_t.max()), "random_median": float(scores_t.median())}


def attack_restoration(pipe: Any, k0: torch.Tensor, k1: torch.Tensor, concept: Concept, images: list, seed: int,
                       iterations: int | None = None) -> dict[str, float]:
    """The soft_prefix attack (its defaults) on the edited model: how much of the edit its states undo."""
    from bench.api.attack import build_attack

    attack = build_attack("soft_prefix", {"iterations": iterations} if iterations is not None else None)
    out = attack.attack(pipe, concept, images, seed)
    k = attack.config.prefix_len
    prompts = [t.format(concept.name) for t in concept.templates[: attack.config.prompts]]
    states = token_states(pipe, prompts)
    found = out.prompt_embeds.float()
    change = relative_change(k0, k1, found).mean() / relative_change(k0, k1, states).mean()
    return {"restored": restored(k0, k1, _aligned(states, k), found[:, 1 + k :]), "change": float(change),
            "seconds": out.seconds}


# -- one world -----------------------------------------------------------------------------------
def _other_prompts(cs: ConceptSet, concept: Concept) -> list[str]:
    """Every other concept's prompts (templates and synonyms), the world's text space around ``concept``."""
    out: list[str] = []
    for c in cs.concepts:
        if c.name != concept.name:
            out += c.prompts() + [t.format(s) for s in c.synonyms for t in c.templates[:1]]
    return sorted(set(out))


def probe_concept(pipe: Any, method: Any, concept: Concept, cs: ConceptSet, images: list, held_out: list,
                  cfg: ProbeConfig) -> dict[str, Any]:
    """Erase ``concept`` with ``method``, read the five probes, put the weights back."""
    k0 = kv_matrix(pipe)
    target_prompts = concept.prompts()
    target = token_states(pipe, target_prompts)
    with torch.no_grad():
        words, other_words = word_embeddings(pipe, target_prompts), word_embeddings(pipe, _other_prompts(cs, concept))
    torch.manual_seed(cfg.seed)
    edit = method.erase(pipe, concept, images, seed=cfg.seed)
    try:
        k1 = kv_matrix(pipe)
        row = {"footprint": footprint(k0, k1, words, other_words, cfg.moved), "detour": detour(k0, k1, target),
               "reach": reach(pipe, k0, k1, target_prompts, cfg),
               "attack": attack_restoration(pipe, k0, k1, concept, held_out, cfg.seed, cfg.attack_iterations),
               "erase_seconds": edit.seconds}
    finally:
        edit.restore()
    return row


def probe_world(world: Path, cfg: ProbeConfig, progress: bool = True) -> dict[str, Any]:
    """Every (method, concept) of ``cfg`` on the built world ``world``; the methods in their tuned configs."""
    from tqdm.auto import tqdm

    from bench.api.method import build_method
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import PROTOCOLS
    from bench.report.labels import read_tuned, tuned_file
    from bench.run.plan import world_track
    from bench.world.sources import rendered
    from bench.worldgen.sampling import load_pipeline

    track = world_track(world)
    cs = load_concept_set(track.concept_set)
    concepts = list(cfg.concepts) or cs.names("test")
    tuned = read_tuned(tuned_file(cs.name))
    pipe = load_pipeline(Path(track.model))
    protocol = PROTOCOLS["full"]
    rows = []
    cells = [(m, c) for m in cfg.methods for c in concepts]
    for spec, name in tqdm(cells, desc="probe", disable=not progress):
        concept = cs.get(name)
        random.seed(cfg.seed)
        method = build_method(spec, tuned.get(spec, {}))
        images, _ = rendered(track, concept, protocol)
        held_out, _ = rendered(track, concept, dataclasses.replace(protocol, few_shot_seed=protocol.attack_image_seed))
        rows.append({"method": spec, "concept": name, "overrides": tuned.get(spec, {}),
                     **probe_concept(pipe, method, concept, cs, images, held_out, cfg)})
    return {"world": str(world), "concept_set": cs.id, "probe_version": PROBE_VERSION, "config": asdict(cfg),
            "rows": rows, "summary": summarise(rows)}


SUMMARY_FIELDS = (("footprint", "target"), ("footprint", "others_moved"), ("footprint", "cosine_others"), ("detour", "residual"),
                  ("detour", "distance"), ("reach", "restored"), ("reach", "random_best"),
                  ("attack", "restored"), ("attack", "change"))


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method, each probe's mean over concepts with a 95 % bootstrap interval (seed 0, 2,000 draws)."""
    import numpy as np

    out: dict[str, dict[str, dict[str, float]]] = {}
    for spec in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == spec]
        rng = np.random.default_rng(0)
        draws = rng.integers(0, len(mine), (2000, len(mine)))
        out[spec] = {}
        for probe, key in SUMMARY_FIELDS:
            v = np.array([r[probe][key] for r in mine], dtype=float)
            means = v[draws].mean(axis=1)
            out[spec][f"{probe}.{key}"] = {"mean": float(v.mean()), "ci_low": float(np.quantile(means, 0.025)),
                                           "ci_high": float(np.quantile(means, 0.975)), "n": len(v)}
    return out


def summary_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table: one row per probe, one column per method (mean [95 % interval])."""
    from bench.report.text import md_text

    methods = list(result["summary"])
    lines = ["| probe | " + " | ".join(md_text(m) for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for probe, key in SUMMARY_FIELDS:
        cells = []
        for m in methods:
            s = result["summary"][m][f"{probe}.{key}"]
            cells.append(f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
        lines.append(f"| {probe}.{key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the leaderboard numbers the crowding split reads (registry names), robustness first
# ("A - B": the per-concept difference of two, here an attack's gain over the plain prompts' own leak)
SPLIT_METRICS = ("ua", "asr_unlearndiffatk@world", "asr_unlearndiffatk@world - pre_asr", "asr_ringabell@world",
                 "asr_ringabell@world - pre_asr", "asr_soft_prefix", "asr_soft_prefix - pre_asr")


def leaderboard_values(csv: Path, metric: str, methods: list[str], concepts: list[str]) -> dict[str, list[float]]:
    """``{method: [value per concept]}`` of one metric of a leaderboard CSV (edited models, labels as the
    probe names methods: ``esd@x``), in ``concepts``' order; a missing value is an error. ``"A - B"``: the
    difference of two metrics per concept."""
    import pandas as pd

    from bench.core.errors import InputError

    if " - " in metric:
        first, second = (leaderboard_values(csv, m, methods, concepts) for m in metric.split(" - ", 1))
        return {m: [a - b for a, b in zip(first[m], second[m], strict=True)] for m in methods}
    if not csv.is_file():
        raise InputError(f"no leaderboard at {csv} (a leaderboard.csv: reports/leaderboard.csv, or a run's report/)")
    d = pd.read_csv(csv, keep_default_na=False)
    if not {"metric", "method", "variant", "concept", "value"} <= set(d.columns):
        raise InputError(f"{csv} is not a leaderboard.csv (no metric/method/variant/concept/value columns)")
    d = d[d["metric"] == metric]
    label = d["method"] + d["variant"].map(lambda v: f"@{v}" if v else "")
    out = {}
    for m in methods:
        mine = dict(zip(d.loc[label == m, "concept"], d.loc[label == m, "value"].astype(float), strict=True))
        missing = [c for c in concepts if c not in mine]
        if missing:
            raise InputError(f"{csv}: no {metric} for {m} on {', '.join(missing)}")
        out[m] = [mine[c] for c in concepts]
    return out


def crowding_split(result: dict[str, Any], csv: Path, metrics: tuple[str, ...] = SPLIT_METRICS) -> dict[str, Any]:
    """Each leaderboard metric against the concepts' crowding (``footprint.cosine_others``): Spearman's rho
    over concepts per method, and each method's mean over every concept, the sparse and the crowded half
    of them (split at the median crowding), with the paired difference of the first two methods; intervals
    are 95 % bootstrap ones over concepts (seed 0, 2,000 draws; within a half for its means)."""
    import numpy as np
    from scipy.stats import spearmanr

    methods = list(result["summary"])
    crowd = {r["concept"]: r["footprint"]["cosine_others"] for r in result["rows"]}
    concepts = sorted(crowd, key=lambda c: (crowd[c], c))
    half = len(concepts) // 2
    halves = {"all": list(range(len(concepts))), "sparse": list(range(half)),
              "crowded": list(range(half, len(concepts)))}
    c = np.array([crowd[k] for k in concepts])
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"concepts": {"sparse": concepts[:half], "crowded": concepts[half:]},
                           "crowding": {k: crowd[k] for k in concepts}, "metrics": {}}
    for metric in metrics:
        values = {m: np.array(v) for m, v in leaderboard_values(csv, metric, methods, concepts).items()}
        entry: dict[str, Any] = {"rho": {}, "halves": {}}
        for m, v in values.items():
            draws = [rng.integers(0, len(c), len(c)) for _ in range(2000)]
            rhos = [spearmanr(c[i], v[i])[0] for i in draws if np.ptp(c[i]) > 0 and np.ptp(v[i]) > 0]
            if np.ptp(v) == 0 or not rhos:  # a constant metric has no rank correlation
                entry["rho"][m] = {"rho": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
            else:
                entry["rho"][m] = {"rho": float(spearmanr(c, v)[0]), "ci_low": float(np.quantile(rhos, 0.025)),
                                   "ci_high": float(np.quantile(rhos, 0.975))}
        for name, idx in halves.items():
            idx = np.array(idx)
            row = {m: float(v[idx].mean()) for m, v in values.items()}
            if len(methods) >= 2:
                a, b = values[methods[0]][idx], values[methods[1]][idx]
                draws = rng.integers(0, len(idx), (2000, len(idx)))
                diffs = a[draws].mean(axis=1) - b[draws].mean(axis=1)
                row["difference"] = {"mean": float(a.mean() - b.mean()), "ci_low": float(np.quantile(diffs, 0.025)),
                                     "ci_high": float(np.quantile(diffs, 0.975))}
            entry["halves"][name] = row
        out["metrics"][metric] = entry
    return out


def split_table(split: dict[str, Any], methods: list[str]) -> str:
    """The crowding split as a Markdown table: per metric and half, each method's mean and the difference."""
    from bench.report.text import md_text

    head = f"{md_text(methods[0])} - {md_text(methods[1])}" if len(methods) >= 2 else ""
    lines = ["| metric | concepts | " + " | ".join(md_text(m) for m in methods) + (f" | {head} |" if head else " |"),
             "|---|---|" + "---|" * (len(methods) + bool(head))]
    for metric, entry in split["metrics"].items():
        for name, row in entry["halves"].items():
            cells = [f"{row[m]:.3f}" for m in methods]
            if head:
                d = row["difference"]
                cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            lines.append(f"| {md_text(metric)} | {name} | " + " | ".join(cells) + " |")
        rhos = [f"{r['rho']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" for r in entry["rho"].values()]
        lines.append(f"| {md_text(metric)} | rho with crowding | " + " | ".join(rhos) + (" | |" if head else " |"))
    return "\n".join(lines)


def write_result(result: dict[str, Any], out: Path) -> None:
    """``out`` (.json, every number) and the table beside it (.md)."""
    from bench.core.io import temp_path, write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), result)
    md = out.with_suffix(".md")
    tmp = temp_path(md)
    tmp.write_text(result_text(result) + "\n", encoding="utf-8")
    os.replace(tmp, md)


def result_text(result: dict[str, Any]) -> str:
    """The summary table, and the crowding split when the result holds one."""
    text = summary_table(result)
    if "crowding_split" in result:
        text += "\n\n" + split_table(result["crowding_split"], list(result["summary"]))
    return text


def main_result(world: Path, cfg: ProbeConfig, out: Path | None, leaderboard: Path | None = None,
                saved: Path | None = None) -> str:
    """Probe ``world`` (or read a result ``saved`` earlier), split by crowding against ``leaderboard``'s
    numbers when given, write ``out`` when given; the text to print."""
    from bench.core.errors import InputError

    if saved is not None:
        try:
            result = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read a probe result from {saved}: {e}") from None
    else:
        result = probe_world(world, cfg)
    if leaderboard is not None:
        result["crowding_split"] = crowding_split(result, leaderboard)
        result["leaderboard"] = str(leaderboard)
    if out is not None:
        write_result(result, out)
    return result_text(result) + "\n" + json.dumps({"n_rows": len(result["rows"])})
