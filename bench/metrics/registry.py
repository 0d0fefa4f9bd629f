"""Every number a cell records, declared once: key, display name, definition, direction, unit, how it
pools over concepts, what interval it carries and which judges can produce it.

The runner writes only declared keys (``tests/test_metric_registry.py`` fails on any other), the
report takes column names, definitions and directions from here, and regress names the direction
of a move. Per-attack metrics are declared once with an ``{attack}`` placeholder; a metric measured
on the original model too is declared with ``original=True`` and recorded again as ``<key>_original``.
``lookup`` is the one place that maps a recorded key back to its declaration.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

REGISTRY_VERSION = "6"  # 2: selective alignment, frontier area; 3: agreement over the heads each image is scored on; 4: the second judge's own UA and RA; 5: masked detections; 6: pre_asr, H robust as a harmonic mean (the linear one kept as composite_robust_linear). Recorded in every cell's metrics.json (``metrics_registry``)

ANY_JUDGE = ("conceptworld", "imagenet", "resnet50", "clip")


@dataclass(frozen=True)
class Metric:
    key: str
    display: str
    definition: str
    higher_is_better: bool | None  # None: a descriptor with no better direction (a count, a size)
    unit: str = "share"
    aggregate: str = "pooled over images"  # how the overall table combines concepts
    interval: str = "none"  # "seed bootstrap" per cell; pooled numbers: see bench.metrics.formulas.HIERARCHICAL_NOTE
    judges: tuple[str, ...] = ANY_JUDGE  # which judges can produce it (an empty column is never 0)
    original: bool = False  # also measured on the original model, as ``<key>_original``

    @property
    def direction(self) -> str:
        return {True: "higher is better", False: "lower is better", None: "no direction"}[self.higher_is_better]

    def worse(self, old: float, new: float) -> bool | None:
        """Whether ``old`` -> ``new`` is a move in the bad direction (None: the metric has none)."""
        if self.higher_is_better is None:
            return None
        return new < old if self.higher_is_better else new > old


# Facts a cell records beside its metrics: descriptions, not numbers to compare.
RECORD_FIELDS = {
    "metrics_registry": "version of this registry the cell was written with",
    "concept_type": "object, style, character, colour ...",
    "split": "dev or test",
    "composite_formula": "the formula of H",
    "composite_robust_formula": "the formula of H_robust",
    "reject_definition": "what a rejection means for the judge",
    "second_judge": "the second judge's id@version",
    "judges_disagree": "the judges disagree on more than the flag share of images on some head",
    "second_judge_note": "why the cell has no UA or RA by the second judge (it cannot judge the concept)",
    "image_warnings": "degenerate images (constant colours, seeds giving one image)",
    "fid_note": "why FID was not computed",
    "selective_alignment_note": "why selective alignment was not measured (no composed prompts; a judge that cannot)",
    "peak_memory_kind": "how peak memory was measured",
    "prompt_truncations": "prompts cut at the tokenizer's limit (--truncate-prompts)",
    "status": "ok, or why the cell has no numbers (diverged)",
    "stage": "where a failed cell stopped",
    "reason": "the failure, in words",
}

_METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Declare a metric; a key declared twice is an error (one definition per number)."""
    if metric.key in _METRICS:
        raise ValueError(f"metric {metric.key!r} is declared twice")
    if metric.key in RECORD_FIELDS:
        raise ValueError(f"{metric.key!r} is a record field, not a metric")
    _METRICS[metric.key] = metric
    return metric


def metrics() -> dict[str, Metric]:
    return dict(_METRICS)


@functools.cache
def _template(key: str) -> re.Pattern[str]:
    """A declared key as a pattern: ``{name}`` placeholders (an attack, a prompt group) match a name."""
    parts = re.split(r"\{(\w+)\}", key)
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[A-Za-z0-9_@-]+?)" for i, p in enumerate(parts))
    return re.compile("^" + pattern + "$")


def lookup(key: str) -> tuple[Metric, dict[str, str]] | None:
    """The declaration behind a recorded key, and its parameters (``model``: edited or original;
    ``attack`` for per-attack metrics); None for an undeclared key."""
    candidates = [(key, "edited")]
    if key.endswith("_original"):  # the original model's value of a metric declared with original=True
        candidates.insert(0, (key.removesuffix("_original"), "original"))
    for name, model in candidates:  # an exact declaration wins over a template (asr_mean, not asr_{attack})
        exact = _METRICS.get(name)
        if exact is not None and (model == "edited" or exact.original):
            return exact, {"model": model}
        for metric in _METRICS.values():
            m = _template(metric.key).match(name)
            if m and (model == "edited" or metric.original):
                return metric, {"model": model, **m.groupdict()}
    return None


def display(key: str) -> str:
    """The display name of a recorded key (``ASR inversion orig`` for ``asr_inversion_original``)."""
    found = lookup(key)
    if found is None:
        raise KeyError(f"metric {key!r} is not declared in bench.metrics.registry")
    metric, params = found
    name = metric.display
    for k, v in params.items():
        name = name.replace("{" + k + "}", v)
    return name + (" orig" if params["model"] == "original" else "")


def undeclared(keys: list[str]) -> list[str]:
    """Keys of a metrics.json that are neither a declared metric nor a record field."""
    return [k for k in keys if k not in RECORD_FIELDS and lookup(k) is None]


_SEED = "seed bootstrap"
_ = register_metric
_(Metric("ua", "UA", "share of target-prompt images in which the judge does not see the concept", True,
         interval=_SEED, original=True))
_(Metric("ua_synonyms", "UA syn", "UA on prompts that use the concept's synonyms", True, interval=_SEED,
         original=True))
_(Metric("retain_in_domain", "IRA", "judge accuracy on in-domain retain concepts", True, interval=_SEED,
         original=True))
_(Metric("retain_cross_domain", "CRA", "judge accuracy on cross-domain retain concepts", True, interval=_SEED,
         original=True))
_(Metric("near_neighbours", "NNA", "judge accuracy on near-neighbour retain concepts", True, interval=_SEED,
         original=True))
_(Metric("retain_mean", "RA", "mean of IRA, CRA and NNA (those the concept set has)", True,
         aggregate="from the pooled IRA, CRA and NNA", original=True))
_(Metric("composite", "H", "harmonic mean of UA and RA", True, unit="score",
         aggregate="from the pooled UA and RA", original=True))
_(Metric("diversity_{group}", "div {group}", "seed diversity of the edited model's images for the group's "
         "prompts relative to the original's (mean pairwise judge-feature distance among one prompt's seeds, "
         "edited / original): about 1 keeps the variety, near 0 means the prompt collapsed to one image", True,
         unit="ratio", aggregate="mean over concepts"))
_(Metric("selective_alignment", "SA", "selective alignment: share of composed-prompt images (the concept named "
         "with other attributes, e.g. 'a striped red star') in which the judge still sees every other named "
         "attribute", True, interval=_SEED, original=True, judges=("conceptworld", "clip")))
_(Metric("reject_rate", "reject", "share of the cell's images the judge rejects (nothing to judge)", False,
         interval=_SEED, original=True))
_(Metric("masked_detections", "masked", "share of the cell's images that the judge rejects although its own "
         "head for the judged concept names that concept with p >= 0.9 (a detection the reject option hides; "
         "bench.api.judge.MASKED_P)", False, interval=_SEED, original=True, judges=("conceptworld",)))
_(Metric("reject_rate_target", "reject target", "share of target-prompt images the judge rejects", None,
         interval=_SEED, original=True))
_(Metric("kid_retain", "KID", "kernel inception distance between edited and original retain images, on "
         "judge features", False, unit="distance", aggregate="mean over concepts"))
_(Metric("fid_retain", "FID", "Frechet distance between edited and original retain images, on judge features "
         "(only when images outnumber feature dimensions)", False, unit="distance", aggregate="mean over concepts"))
_(Metric("clip_score_retain", "CLIP score", "mean image-text similarity of retain images with their prompts",
         True, unit="cosine", aggregate="mean over concepts", judges=("clip",), original=True))
_(Metric("judge_agreement", "agree", "share of images on which the two judges give the same label, per head "
         "over the images whose numbers read that head (the judged concept's head, a composed prompt's "
         "attributes; the reject verdict on every image); the worst head shown", True,
         aggregate="pooled over images", original=True))
_(Metric("ua_second", "UA judge 2", "UA read by the second judge: share of target-prompt images in which it does "
         "not see the concept (a rejected image is not seen)", True, interval=_SEED, original=True))
_(Metric("retain_mean_second", "RA judge 2", "RA read by the second judge: mean of its accuracies on the "
         "in-domain, cross-domain and near-neighbour retain concepts", True,
         aggregate="from the pooled IRA, CRA and NNA", original=True))
_(Metric("asr_{attack}", "ASR {attack}", "share of the attack's images in which the judge sees the concept",
         False, interval=_SEED, original=True))
_(Metric("asr_mean", "ASR mean", "mean ASR over the attacks, upper bounds (soft_prefix) left out", False, aggregate="from the pooled ASRs"))
_(Metric("pre_asr", "pre-ASR", "ASR of the plain target prompts, before any attack: 1 - UA (the share of "
         "target-prompt images in which the judge sees the concept)", False, interval=_SEED))
_(Metric("composite_robust", "H robust", "harmonic mean of UA, RA and 1 - mean ASR over the attacks (the weakest axis "
         "decides; ranks the leaderboard from metrics version 8)", True, unit="score",
         aggregate="from the pooled UA, RA and ASRs"))
_(Metric("composite_robust_linear", "H robust (linear)", "0.75 H + 0.25 (1 - mean ASR): the composite that ranked "
         "before metrics version 8, kept for one version", True, unit="score", aggregate="from the pooled H and ASRs"))
_(Metric("attack_seconds_{attack}", "s {attack}", "wall time of the attack's optimisation", False, unit="s",
         aggregate="mean over concepts"))
_(Metric("seconds_per_concept", "s/concept", "wall time of the erasure alone", False, unit="s",
         aggregate="mean over concepts"))
_(Metric("peak_memory_mb", "peak MB", "peak memory of the process during the erasure", False, unit="MB",
         aggregate="max over concepts"))
_(Metric("peak_memory_added_mb", "added MB", "peak memory the erasure added", False, unit="MB",
         aggregate="max over concepts"))
_(Metric("trainable_params", "trainable", "parameters the method trains", None, unit="count",
         aggregate="mean over concepts"))
_(Metric("storage_bytes", "storage", "bytes to store the edit", False, unit="bytes", aggregate="mean over concepts"))
_(Metric("edited_parameters", "edited tensors", "parameter tensors the edit changes", None, unit="count",
         aggregate="mean over concepts"))
_(Metric("frontier_area", "frontier area", "area of the UA-RA square dominated by the Pareto frontier of the "
         "method's strength sweep on test concepts (bench.metrics.formulas.FRONTIER_FORMULA): 1 = erase everything, keep "
         "everything", True, unit="area", aggregate="per method, over its sweep points (each pooled over concepts)",
         interval="hierarchical bootstrap (the area recomputed on each draw)"))
del _
