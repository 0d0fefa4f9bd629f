"""Trade-off curves: each method swept along its strength knob on **test** concepts, UA against mean
retain with intervals, and the area under its Pareto frontier.

``python -m bench sweep`` runs the sweep points as ordinary cells into a run folder (``runs/sweep``)
and keeps a manifest (``sweep.json``: per method, the knob and which cells each point is). Nothing is
*chosen* on these cells: a method's operating point still comes from dev (``bench tune``); the curve
shows where that point sits on the whole trade-off. The report reads the manifest back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import InputError
from bench.metrics.formulas import (
    FRONTIER_FORMULA,
    HIERARCHICAL_NOTE,
    frontier_area,
    hierarchical_draws,
    pareto_front,
    percentile_interval,
)
from bench.metrics.registry import display

SA = "selective_alignment"

MANIFEST = "sweep.json"


# -- running ---------------------------------------------------------------------------------------


def read_manifest(runs: Path) -> dict[str, Any] | None:
    path = Path(runs) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); delete it and run the sweep again") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise InputError(f"{path} is not a sweep manifest (no 'methods' mapping)")
    return data


# -- measuring ---------------------------------------------------------------------------------------
def curve_tables(runs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, frontier): one row per sweep point (pooled UA, RA, H, collapse, each with its
    hierarchical interval) and one row per method (frontier area with its interval). Empty frames
    when ``runs`` holds no sweep."""
    from bench.report.cells import load_cells
    from bench.report.pooling import cluster_table, pooled_stats

    manifest = read_manifest(runs)
    if not manifest:
        return pd.DataFrame(), pd.DataFrame()
    cells = {Path(c["folder"]).name: c for c in load_cells(Path(runs))}
    rows, fronts = [], []
    shown = {"ua": "ua", "retain": "retain_mean", "composite": "composite", SA: SA}  # column: pooled number
    for spec, entry in manifest["methods"].items():
        draws_ua, draws_ra, ua, ra, shape = [], [], [], [], None
        for point in entry["points"]:
            mine = [cells[name] for name in point["cells"] if name in cells]  # diverged cells: no numbers
            if not mine:
                continue
            table = cluster_table(mine, [])
            pooled = pooled_stats(table, [])
            stats = {col: pooled.get(key, lambda r: float("nan")) for col, key in shown.items()}
            concepts, seeds, _ = table.arrays()
            shape = shape or (concepts, seeds)
            draws = hierarchical_draws(table, stats)
            values = {k: table.rate(k) for k in table.keys()}
            row = {"method": spec, "knob": entry["knob"], "value": point["value"], "concepts": len(mine),
                   "missing": len(point["cells"]) - len(mine)}
            for name, fn in stats.items():
                row[name] = fn(values)
                row[name + "_ci_low"], row[name + "_ci_high"] = percentile_interval(draws[name])
            div = [c["metrics"].get("diversity_target") for c in mine]
            row["diversity_target"] = float(np.mean([v for v in div if v is not None])) if any(
                v is not None for v in div) else float("nan")
            rows.append(row)
            if (concepts, seeds) == shape and not row["missing"]:  # frontier draws need identical tables
                draws_ua.append(draws["ua"])
                draws_ra.append(draws["retain"])
                ua.append(row["ua"])
                ra.append(row["retain"])
        if ua:
            per_draw = np.array([frontier_area(u, r) for u, r in zip(np.stack(draws_ua, 1), np.stack(draws_ra, 1),
                                                                      strict=True)])
            lo, hi = percentile_interval(per_draw)
            fronts.append({"method": spec, "knob": entry["knob"], "points": len(ua),
                           "frontier_area": frontier_area(ua, ra), "frontier_area_ci_low": lo,
                           "frontier_area_ci_high": hi})
    points = pd.DataFrame(rows)
    if len(points):
        points["pareto"] = False
        for spec in points["method"].unique():
            sel = points.index[points["method"] == spec]
            front = pareto_front(points.loc[sel, "ua"].tolist(), points.loc[sel, "retain"].tolist())
            points.loc[sel[front], "pareto"] = True
    return points, pd.DataFrame(fronts)


# -- showing -----------------------------------------------------------------------------------------
def frontier_display(front: pd.DataFrame) -> pd.DataFrame:
    """The frontier table as the report shows it."""
    if not len(front):
        return front
    name = display("frontier_area")
    return pd.DataFrame({
        "method": front["method"], "knob": front["knob"], "points": front["points"],
        name: front["frontier_area"],
        name + " CI": [f"[{a:.2f}, {b:.2f}]" if a == a else "" for a, b in
                       zip(front["frontier_area_ci_low"], front["frontier_area_ci_high"], strict=True)],
    }).sort_values(name, ascending=False).reset_index(drop=True)


def points_display(points: pd.DataFrame) -> pd.DataFrame:
    """The sweep points as the report shows them (intervals as text)."""
    if not len(points):
        return points

    def ci(col: str) -> list[str]:
        return [f"[{a:.2f}, {b:.2f}]" if a == a else "" for a, b in
                zip(points[col + "_ci_low"], points[col + "_ci_high"], strict=True)]

    return pd.DataFrame({
        "method": points["method"], "knob": [f"{k}={v:g}" for k, v in zip(points["knob"], points["value"],
                                                                          strict=True)],
        display("ua"): points["ua"], display("ua") + " CI": ci("ua"),
        display("retain_mean"): points["retain"], display("retain_mean") + " CI": ci("retain"),
        display("composite"): points["composite"], display("composite") + " CI": ci("composite"),
        display("diversity_target"): points["diversity_target"],
        display(SA): points[SA], display(SA) + " CI": ci(SA),
        "Pareto": ["yes" if p else "" for p in points["pareto"]],
        "concepts": points["concepts"],
    })


def curves_figure(points: pd.DataFrame, marks: dict[str, tuple[float, float]],
                  colours: dict[str, str] | None = None, original: tuple[float, float] | None = None) -> bytes:
    """UA against RA per method along its sweep, interval whiskers both ways, knob values written at
    the points, the dev-tuned operating point as a star (``colours``: per method spec, as the
    leaderboard colours its tuned row), the original model (UA, RA) and the ideal corner."""
    from bench.report.figures import ORIGINAL_COLOUR, png, pyplot, ua_ra_axes

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, spec in enumerate(points["method"].unique()):
        mine = points[points["method"] == spec].sort_values("value")
        c = (colours or {}).get(spec, cycle[i % len(cycle)])
        xerr = [mine["retain"] - mine["retain_ci_low"], mine["retain_ci_high"] - mine["retain"]]
        yerr = [mine["ua"] - mine["ua_ci_low"], mine["ua_ci_high"] - mine["ua"]]
        ax.errorbar(mine["retain"], mine["ua"], xerr=xerr, yerr=yerr, color=c, marker="o", ms=4, lw=1.2,
                    elinewidth=0.7, capsize=2, label=f"{spec} ({mine['knob'].iloc[0]} sweep)")
        for _, r in mine.iterrows():
            ax.annotate(f"{r['value']:g}", (r["retain"], r["ua"]), fontsize=6, color=c, xytext=(3, 3),
                        textcoords="offset points")
        if spec in marks:
            ax.scatter([marks[spec][1]], [marks[spec][0]], marker="*", s=180, color=c, edgecolor="k", zorder=5,
                       label=f"{spec} dev-tuned point")
    if original is not None:
        ax.scatter([original[1]], [original[0]], marker="s", s=50, color=ORIGINAL_COLOUR, zorder=5,
                   label="original model (no erasure)")
    ua_ra_axes(ax, "test concepts", fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("trade-off along each method's strength knob (whiskers: 95% CI over concepts and seeds)",
                 fontsize=8)
    return png(fig)


CURVES_NOTE = (f"Each method swept along its strength knob on the test concepts (attacks off); nothing is chosen "
               f"on these cells: the star is the dev-tuned operating point the leaderboard ranks. {FRONTIER_FORMULA}. "
               f"Intervals: {HIERARCHICAL_NOTE}; the frontier area's interval recomputes the area on each draw.")


def curves_section(runs: Path | None, marks: dict[str, tuple[float, float]], colours: dict[str, str] | None = None,
                   original: tuple[float, float] | None = None) -> dict[str, Any]:
    """Everything the report needs for its curves section: tables, the figure and the note; an
    empty mapping when ``runs`` holds no sweep. ``marks``: per method spec, the (UA, RA) of its
    dev-tuned operating point on the leaderboard; ``colours``: per method spec."""
    if runs is None or not (Path(runs) / MANIFEST).is_file():
        return {}
    points, front = curve_tables(Path(runs))
    if not len(points):
        return {}
    return {"points": points, "frontier": front,
            "figure": curves_figure(points, marks, colours, original),
            "points_display": points_display(points), "frontier_display": frontier_display(front),
            "note": CURVES_NOTE}
