"""The numbers a reader meets first: the headline table (with the original model as a baseline row),
the sentence above it, and the tidy long-form table of every cell's numbers.

All of it is derived from the pooled overall table and the cells; names, directions and definitions
come from the metric registry.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.api.attack import ranked_attacks
from bench.core.records import sha256_json
from bench.metrics.formulas import linear_robust_composite, robust_composite
from bench.metrics.registry import display, lookup, metrics

# the headline columns, in order (those a run measured): at most rank + method + these 7
HEADLINE = ("composite_robust", "composite", "ua", "retain_mean", "asr_mean", "seconds_per_concept", "storage_bytes")
ORIGINAL = "original model (no erasure)"


@dataclass(frozen=True)
class Headline:
    """Rows (methods in rank order, then the original model), per metric key: value and interval."""

    keys: tuple[str, ...]
    rank_key: str
    table: pd.DataFrame  # columns: rank, method, <key>, <key>_ci_low, <key>_ci_high

    def methods(self) -> list[str]:
        return [m for m in self.table["method"] if m != ORIGINAL]

    def best(self, key: str) -> float | None:
        """The best value of ``key`` among the methods (by the registry's direction), None without one."""
        from bench.report.pooling import best_value

        return best_value(self.table.loc[self.table["method"] != ORIGINAL, key], key)


def headline(overall: pd.DataFrame, original: dict[str, float]) -> Headline:
    """The headline table from the overall table (pooled numbers, hierarchical intervals) and the
    original model's pooled numbers (``original_numbers``)."""
    from bench.report.pooling import interval, ranking_metric

    rank_key = ranking_metric(overall)
    keys = tuple(k for k in HEADLINE if display(k) in overall.columns)
    rows = []
    for _, r in overall.iterrows():
        row: dict[str, Any] = {"rank": r[f"rank ({display(rank_key)})"], "method": r["method"]}
        for k in keys:
            row[k] = float(r[display(k)]) if r[display(k)] != "" else float("nan")
            row[k + "_ci_low"], row[k + "_ci_high"] = interval(overall, r["method"], k)
        rows.append(row)
    base: dict[str, Any] = {"rank": "", "method": ORIGINAL}
    for k in keys:
        base[k] = original.get(k, float("nan"))
        base[k + "_ci_low"], base[k + "_ci_high"] = float("nan"), float("nan")
    rows.append(base)
    return Headline(keys, rank_key, pd.DataFrame(rows))


def original_numbers(cells: list[dict[str, Any]]) -> dict[str, float]:
    """The original model's pooled numbers over the leaderboard's concepts. Its images are the same in
    every method's cell of a concept (one cached reference), so one cell per concept holds them all."""
    from bench.report.pooling import cluster_table, pooled_stats

    one = list({c["spec"]["concept"]: c for c in cells}.values())
    table = cluster_table(one, [], model="original")
    rates = {k: table.rate(k) for k in table.keys()}
    out = {name: float(fn(rates)) for name, fn in pooled_stats(table, []).items()}
    flags = [bool(r.get("rejected")) for c in one for r in c["per_image"]
             if r["model"] == "original" and not r["group"].startswith("attack:")]
    if flags:
        out["reject_rate"] = float(np.mean(flags))
    masked = [r["masked"] for c in one for r in c["per_image"]
              if r["model"] == "original" and "masked" in r and not r["group"].startswith("attack:")]
    if masked:
        out["masked_detections"] = float(np.mean(masked))
    attacks = sorted(cells[0]["spec"].get("attacks", {})) if cells else []
    if attacks:  # the original model's ASR is cached per concept: the same in every method's cell
        asr = {a: [c["metrics"][f"asr_{a}_original"]["value"] for c in one] for a in attacks}
        out.update({f"asr_{a}": float(np.mean(v)) for a, v in asr.items()})
        ranked = ranked_attacks(attacks) or attacks  # upper bounds are shown, not ranked
        out["asr_mean"] = float(np.mean([np.mean([asr[a][i] for a in ranked]) for i in range(len(one))]))
        out["composite_robust"] = robust_composite(out["ua"], out["retain_mean"], out["asr_mean"])
        out["composite_robust_linear"] = linear_robust_composite(out["composite"], out["asr_mean"])
        out["pre_asr"] = 1 - out["ua"]
    return out


def sentence(h: Headline) -> str:
    """One plain-text sentence: the best method by the ranking metric (and by H), with its cost."""
    t = h.table[h.table["method"] != ORIGINAL]
    if t.empty:
        return "No method produced numbers."

    def name_value(key: str) -> tuple[str, str]:
        hib = metrics()[key].higher_is_better
        best = t.loc[t[key].astype(float).idxmax() if hib else t[key].astype(float).idxmin()]
        lo, hi = best[key + "_ci_low"], best[key + "_ci_high"]
        ci = f" [{lo:.2f}, {hi:.2f}]" if lo == lo else ""
        return best["method"], f"{best[key]:.2f}{ci}"

    m1, v1 = name_value(h.rank_key)
    top = t[t["method"] == m1].iloc[0]
    tied = [m for m, r in zip(t["method"], t["rank"], strict=True) if m != m1 and str(r).rstrip("=") == "1"]
    text = f"Best by {display(h.rank_key)}: {m1} ({v1})"
    if h.rank_key != "composite":
        m2, v2 = name_value("composite")
        text += f"; by {display('composite')}: {m2} ({v2})"
    cost = []
    if "seconds_per_concept" in h.keys:
        cost.append(f"{fmt_value('seconds_per_concept', top['seconds_per_concept'])} per concept")
    if "storage_bytes" in h.keys:
        cost.append(f"{fmt_value('storage_bytes', top['storage_bytes'])} per edit")
    if cost:
        text += f". {m1} costs {' and '.join(cost)}"
    if tied:
        text += f"; tied with {', '.join(tied)} (overlapping {display(h.rank_key)} intervals)"
    return text + "."


def fmt_value(key: str, v: Any) -> str:
    """A value as the page shows it, with the registry's unit: "—" when missing."""
    if v is None or v == "" or (isinstance(v, float) and v != v):
        return "—"
    unit = metrics()[lookup(key)[0].key].unit if lookup(key) else ""
    v = float(v)
    if unit == "bytes":
        for size, name in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
            if v >= size:
                return f"{v / size:.1f} {name}"
        return f"{int(v)} B"
    if unit == "s":
        return f"{v:.1f} s" if v < 100 else f"{v:.0f} s"
    if unit == "MB":
        return f"{v:,.0f} MB"
    if unit == "count":
        return f"{int(v):,}"
    return f"{v:.2f}"


def unit_label(key: str) -> str:
    """The unit shown in a column header ("" for shares and scores)."""
    unit = metrics()[lookup(key)[0].key].unit
    return {"s": "s", "MB": "MB", "count": "count", "ratio": "ratio"}.get(unit, "")  # sizes print B/KB/MB


def arrow(key: str) -> str:
    hib = metrics()[lookup(key)[0].key].higher_is_better
    return {True: "↑", False: "↓", None: ""}[hib]


def headline_markdown(h: Headline) -> list[str]:
    """The headline table as Markdown lines (plain text: the terminal prints it too)."""
    from bench.report.text import md_text

    cols = ["rank", "method"] + [f"{display(k)} {arrow(k)}".strip() for k in h.keys]
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in h.table.iterrows():
        cells = [md_text(r["rank"]), md_text(r["method"])]
        for k in h.keys:
            v = fmt_value(k, r[k])
            lo, hi = r[k + "_ci_low"], r[k + "_ci_high"]
            cells.append(md_text(v + (f" [{lo:.2f}, {hi:.2f}]" if lo == lo else "")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- tidy data -----------------------------------------------------------------------------------------
def tidy_table(cells: list[dict[str, Any]], commit: str) -> pd.DataFrame:
    """``leaderboard.csv``: one row per (cell, metric) of every declared number a cell holds."""
    rows = []
    for c in cells:
        s, m = c["spec"], c["metrics"]
        name, _, variant = s["method"].partition("@")
        is_tuned = c["label"].endswith("[tuned]")
        base = {"method": name, "variant": variant, "tuned": is_tuned, "config_hash": sha256_json(s["method_config"])[:12],
                "concept": s["concept"], "split": m.get("split", ""), "judge": s["judge"],
                "metrics_version": s["metrics_version"], "commit": c["environment"].get("git_commit", "")}
        for key, v in m.items():
            found = lookup(key)
            if found is None or v is None:
                continue
            model = found[1]["model"]
            row = {**base, "metric": key, "model": model}
            if isinstance(v, dict) and "value" in v:
                row.update(value=v["value"], ci_low=v.get("ci_low"), ci_high=v.get("ci_high"), n=v.get("n"))
            elif isinstance(v, dict) and "mean" in v:
                row.update(value=v["mean"], ci_low=None, ci_high=None, n=None)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                row.update(value=float(v), ci_low=None, ci_high=None, n=None)
            else:
                continue  # per-head agreement tables stay in metrics.json
            rows.append(row)
    cols = ["method", "variant", "tuned", "config_hash", "concept", "split", "metric", "model", "value", "ci_low",
            "ci_high", "n", "judge", "metrics_version", "commit"]
    return pd.DataFrame(rows, columns=cols).sort_values(["method", "config_hash", "concept", "metric"]).reset_index(
        drop=True)


def project_commit() -> str:
    """The commit of the code building the report ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
