"""Numbers pooled over a method's cells: hits clustered by (concept, seed), hierarchical bootstrap intervals,
the overall table with its tied ranks, and the two judges' agreement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.api.attack import ranked_attacks
from bench.core.plan import COMPOSED, RETAIN_GROUPS
from bench.metrics.formulas import (
    ClusterTable,
    composite,
    hierarchical_bootstrap,
    linear_robust_composite,
    robust_composite,
    tied_ranks,
)
from bench.metrics.registry import display, lookup, metrics

ACCURACIES = [(k, display(k)) for k in ("ua", "ua_synonyms", "retain_in_domain", "retain_cross_domain",
                                        "near_neighbours")]


UA_KEYS = {"ua": "target", "ua_synonyms": "synonym"}  # a hit is an image where the concept is NOT seen


_GROUP_OF = {**UA_KEYS, **{key: group for group, key in RETAIN_GROUPS.items()}}


SA = "selective_alignment"


def cluster_table(mine: list[dict[str, Any]], attacks: list[str], model: str = "edited",
                   judge: str = "detected") -> ClusterTable:
    """A method's hits per pooled number on ``model``'s images, clustered by (erased concept, seed);
    ``judge``: whose detections (``detected``, or the second judge's ``second_detected``)."""
    table = ClusterTable()
    groups = {g: k for k, g in _GROUP_OF.items()}
    for c in mine:
        concept = c["spec"]["concept"]
        for r in c["per_image"]:
            if r["model"] != model or judge not in r:
                continue
            key = groups.get(r["group"])
            if key is not None:
                table.add(key, concept, r["seed"], not r[judge] if key in UA_KEYS else r[judge])
            elif r["group"] == COMPOSED and "aligned" in r:
                table.add(SA, concept, r["seed"], r["aligned"])
            elif r["group"].startswith("attack:") and r["group"][7:] in attacks:
                table.add(f"asr_{r['group'][7:]}", concept, r["seed"], r["detected"])
    return table


def pooled_stats(table: ClusterTable, attacks: list[str]) -> dict[str, Any]:
    """The pooled numbers as functions of per-key rates: each accuracy, each ASR, H and H_robust."""
    def h(r: dict[str, float]) -> float:
        return composite(r.get("ua", float("nan")), [r.get(k, float("nan")) for k in RETAIN_GROUPS.values()])

    stats: dict[str, Any] = {k: (lambda r, k=k: r.get(k, float("nan"))) for k in table.keys()}
    stats["composite"] = h
    stats["retain_mean"] = retain_mean
    if attacks:
        ranked = ranked_attacks(attacks) or list(attacks)  # upper bounds are shown, not ranked

        def asr_mean(r: dict[str, float]) -> float:
            return float(np.mean([r.get(f"asr_{a}", float("nan")) for a in ranked]))

        stats["asr_mean"] = asr_mean
        stats["composite_robust"] = lambda r: robust_composite(r.get("ua", float("nan")), retain_mean(r), asr_mean(r))
        stats["composite_robust_linear"] = lambda r: linear_robust_composite(h(r), asr_mean(r))
        stats["pre_asr"] = lambda r: 1 - r.get("ua", float("nan"))
    return stats


def retain_mean(r: dict[str, float]) -> float:
    """RA from per-key rates: the mean of the retain accuracies the concept set has."""
    kept = [r[k] for k in RETAIN_GROUPS.values() if k in r and r[k] == r[k]]
    return float(np.mean(kept)) if kept else float("nan")


def interval(overall: pd.DataFrame, method: str, key: str) -> tuple[float, float]:
    """The unrounded hierarchical interval of ``key`` for ``method`` (NaN, NaN when it has none)."""
    return overall.attrs["intervals"].get(method, {}).get(key, (float("nan"), float("nan")))


def best_value(values: Any, key: str) -> float | None:
    """The best of ``values`` by the registry's direction for ``key`` (None: no direction or no value)."""
    hib = metrics()[lookup(key)[0].key].higher_is_better
    vals = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if hib is None or vals.empty:
        return None
    return float(vals.max() if hib else vals.min())


def _interval(ci: dict[str, tuple[float, float]], name: str) -> str:
    lo, hi = ci[name]
    return f"[{lo:.2f}, {hi:.2f}]" if lo == lo else ""


def overall_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """Per method: accuracies pooled over concepts, with hierarchical bootstrap CIs over concepts and
    seeds (``HIERARCHICAL_NOTE``), H and H_robust with theirs; costs averaged; a rank in which methods
    whose H intervals overlap are tied."""
    out = []
    for method in sorted({c["label"] for c in cells}):
        mine = [c for c in cells if c["label"] == method]
        row: dict[str, Any] = {"method": method, "concepts": len(mine)}
        attacks = sorted(mine[0]["spec"].get("attacks", {}))
        table = cluster_table(mine, attacks)
        stats = pooled_stats(table, attacks)
        ci = hierarchical_bootstrap(table, stats)
        values = {k: table.rate(k) for k in table.keys()}

        for key, label in ACCURACIES:
            row[label] = values.get(key, float("nan"))
            row[label + " CI"] = _interval(ci, key) if key in values else ""
        h = display("composite")
        row[h] = stats["composite"](values)
        row[h + " CI"] = _interval(ci, "composite")
        row[display("retain_mean")] = stats["retain_mean"](values)
        row[display("retain_mean") + " CI"] = _interval(ci, "retain_mean")
        row["_intervals"] = ci
        for name in attacks:
            key = f"asr_{name}"
            row[display(key)] = values.get(key, float("nan"))
            row[display(key) + " CI"] = _interval(ci, key) if key in values else ""
            row[display(key + "_original")] = float(np.mean([c["metrics"][key + "_original"]["value"] for c in mine]))
            row[display(f"attack_seconds_{name}")] = float(np.mean([c["metrics"][f"attack_seconds_{name}"]
                                                                    for c in mine]))
        if attacks:
            row[display("asr_mean")] = stats["asr_mean"](values)
            row[display("asr_mean") + " CI"] = _interval(ci, "asr_mean")
            for key in ("pre_asr", "composite_robust", "composite_robust_linear"):
                row[display(key)] = stats[key](values)
                row[display(key) + " CI"] = _interval(ci, key)
        order = [k for k, _ in ACCURACIES] + [SA] + [f"asr_{a}" for a in attacks]  # not the scan order
        row["images"] = {k: table.n(k) for k in order if k in table.keys()}
        row[display("ua_original")] = float(np.mean([c["metrics"]["ua_original"]["value"] for c in mine]))
        div = [c["metrics"].get("diversity_target") for c in mine]
        row[display("diversity_target")] = float(np.mean([v for v in div if v is not None])) if any(
            v is not None for v in div) else np.nan
        # selective alignment: empty (never 0) where no cell could measure it
        row[display(SA)] = values[SA] if SA in values else ""
        row[display(SA) + " CI"] = _interval(ci, SA) if SA in values else ""
        sa_orig = [c["metrics"][SA + "_original"]["value"] for c in mine if c["metrics"].get(SA + "_original")]
        row[display(SA + "_original")] = float(np.mean(sa_orig)) if sa_orig else ""
        for key, model in (("reject_rate", "edited"), ("reject_rate_original", "original")):
            flags = [r.get("rejected", False) for c in mine for r in c["per_image"]
                     if r["model"] == model and not r["group"].startswith("attack:")]
            row[display(key)] = float(np.mean(flags)) if flags else np.nan
        for key, model in (("masked_detections", "edited"), ("masked_detections_original", "original")):
            # recorded from registry 5 on; an older cell (or a judge without probabilities) has none
            flags = [r["masked"] for c in mine for r in c["per_image"]
                     if r["model"] == model and "masked" in r and not r["group"].startswith("attack:")]
            row[display(key)] = float(np.mean(flags)) if flags else np.nan
        agree = pooled_agreement(mine, "judge_agreement")
        if agree:
            row["agree"] = min(agree.values())
            row["flagged"] = sum(bool(c["metrics"].get("judges_disagree")) for c in mine)
        row[display("kid_retain")] = float(np.mean([c["metrics"]["kid_retain"]["mean"] for c in mine]))
        row[display("seconds_per_concept")] = float(np.mean([c["metrics"]["seconds_per_concept"] for c in mine]))
        row[display("peak_memory_mb")] = float(np.max([c["metrics"]["peak_memory_mb"] for c in mine]))
        row[display("trainable_params")] = int(np.mean([c["metrics"]["trainable_params"] for c in mine]))
        row[display("storage_bytes")] = int(np.mean([c["metrics"]["storage_bytes"] for c in mine]))
        out.append(row)
    df = pd.DataFrame(out)
    key = ranking_metric(df)
    df = df.sort_values(display(key), ascending=not metrics()[key].higher_is_better).reset_index(drop=True)
    intervals = df.pop("_intervals")
    df.insert(1, f"rank ({display(key)})", tied_ranks([ci[key] for ci in intervals]))
    df.attrs["intervals"] = dict(zip(df["method"], intervals, strict=True))  # numeric CIs, per method
    return df


def ranking_metric(overall: pd.DataFrame) -> str:
    """What the leaderboard ranks by: H robust when the robustness axis was measured, else H."""
    return "composite_robust" if display("composite_robust") in overall.columns else "composite"


AGREEMENT_VIEWS = ("scored", "every_image", "both_accept")


def pooled_agreement(cells: list[dict[str, Any]], key: str, every_image: bool = False,
                     view: str = "scored") -> dict[str, float]:
    """Per head: the share of images (over ``cells``) on which the two judges agree, over the images
    each cell scored the head on (``bench.metrics.formulas.AGREEMENT_DEFINITION``), over every image
    (``every_image``, or view "every_image"), or over the scored images neither judge rejects (view
    "both_accept"; cells recorded before it have none)."""
    if view not in AGREEMENT_VIEWS:
        raise ValueError(f"unknown agreement view {view!r}; one of {AGREEMENT_VIEWS}")
    every_image = every_image or view == "every_image"
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    for c in cells:
        a = c["metrics"].get(key)
        if a and view == "both_accept":
            a = a.get("both_accept")
        if not a:
            continue
        rates = a.get("every_image", a["heads"]) if every_image else a["heads"]
        for head, rate in rates.items():
            n = a["n"] if every_image else a.get("images", {}).get(head, a["n"])
            num[head] = num.get(head, 0.0) + rate * n
            den[head] = den.get(head, 0) + n
    return {h: num[h] / den[h] for h in num if den[h]}


def agreement_table(cells: list[dict[str, Any]], every_image: bool = False, view: str = "scored") -> pd.DataFrame:
    """The two judges' agreement per head: on the original model's images, then per method's edits;
    over the images each head is scored on (with the flagged cells), over every image, or over the
    scored images both judges accept (``pooled_agreement``'s views)."""
    view = "every_image" if every_image else view
    flags = view == "scored"
    rows = []
    orig = pooled_agreement(cells, "judge_agreement_original", view=view)
    if orig:
        rows.append({"images": "original model", **orig} | ({"flagged cells": "-"} if flags else {}))
    for method in sorted({c["label"] for c in cells}):
        mine = [c for c in cells if c["label"] == method]
        a = pooled_agreement(mine, "judge_agreement", view=view)
        if a:
            flagged = sum(bool(c["metrics"].get("judges_disagree")) for c in mine)
            rows.append({"images": f"{method} (edited)", **a}
                        | ({"flagged cells": f"{flagged}/{len(mine)}"} if flags else {}))
    return pd.DataFrame(rows)


def judges_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """UA and RA as each judge reads them, pooled like the leaderboard's (intervals over concepts and
    seeds), and the judges' agreement on the worst head: the original model (each concept's images
    once), then each method's edits; both judges over the same cells: those holding the second judge's
    detections (registry >= 4, and a second judge that can judge the concept). Empty without any."""
    cells = [c for c in cells if any("second_detected" in r for r in c["per_image"])]
    if not cells:
        return pd.DataFrame()
    first_per_concept = list({c["spec"]["concept"]: c for c in sorted(cells, key=lambda c: c["label"])}.values())
    groups = [("original model", first_per_concept, "original", "judge_agreement_original")]
    groups += [(f"{m} (edited)", [c for c in cells if c["label"] == m], "edited", "judge_agreement")
               for m in sorted({c["label"] for c in cells})]
    rows = []
    for name, mine, model, agree_key in groups:
        row: dict[str, Any] = {"images": name, "cells": len(mine)}
        for judge, tag in (("detected", "judge 1"), ("second_detected", "judge 2")):
            table = cluster_table(mine, [], model, judge)
            stats = {"ua": lambda r: r.get("ua", float("nan")), "retain_mean": retain_mean}
            ci = hierarchical_bootstrap(table, stats)
            values = {k: table.rate(k) for k in table.keys()}
            for key, label in (("ua", "UA"), ("retain_mean", "RA")):
                row[f"{label} {tag}"] = stats[key](values)
                row[f"{label} {tag} CI"] = _interval(ci, key)
        agree = pooled_agreement(mine, agree_key)
        row["agree"] = min(agree.values()) if agree else np.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    order = ["images", "cells"] + [f"{k} {t}{ci}" for k in ("UA", "RA") for t in ("judge 1", "judge 2") for ci in ("", " CI")]
    return df[[*order, "agree"]]
