"""The report's figures: one colour per method everywhere, methods in the table's order, every
point with its interval. Plots are PNG; image grids are WebP thumbnails (small files, lazy-loaded).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.metrics.registry import display
from bench.report.leaderboard import ORIGINAL, Headline

ORIGINAL_COLOUR = "#555555"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a "$" in a concept or method name is text, not TeX
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any, dpi: int = 110) -> bytes:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def webp(fig: Any, dpi: int = 100) -> bytes:
    """A figure as a WebP thumbnail (lossy, quality 80)."""
    from PIL import Image

    im = Image.open(io.BytesIO(png(fig, dpi))).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def method_colours(methods: list[str]) -> dict[str, str]:
    """A colour per method, in the given (table) order; the original model is grey."""
    plt = pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}
    out[ORIGINAL] = ORIGINAL_COLOUR
    return out


def _err(row: pd.Series, key: str) -> list[list[float]]:
    v, lo, hi = float(row[key]), float(row[key + "_ci_low"]), float(row[key + "_ci_high"])
    return [[v - lo if lo == lo else 0.0], [hi - v if hi == hi else 0.0]]


def asr_bars(h: Headline, overall: pd.DataFrame, attacks: list[str], colours: dict[str, str]) -> bytes:
    """ASR per method x attack with intervals; the original model's ASR per attack as a dashed line."""
    plt = pyplot()
    methods = h.methods()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(attacks), 3.2))
    width = 0.8 / max(len(methods), 1)
    by = overall.set_index("method")
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, a in enumerate(attacks):
            v = float(by.loc[m, display(f"asr_{a}")])
            ci = by.loc[m, display(f"asr_{a}") + " CI"]
            a_lo, a_hi = (float(x) for x in ci.strip("[]").split(",")) if ci else (v, v)
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(v)
            lo.append(v - a_lo)
            hi.append(a_hi - v)
        ax.bar(xs, ys, width=width * 0.9, color=colours[m], yerr=[lo, hi], capsize=2, label=m,
               error_kw={"elinewidth": 0.8})
    for i, a in enumerate(attacks):
        orig = float(np.mean(by[display(f"asr_{a}_original")]))
        ax.hlines(orig, i - 0.45, i + 0.45, colors=ORIGINAL_COLOUR, linestyles="dashed",
                  label=f"{ORIGINAL}" if i == 0 else None)
    ax.set_xticks(range(len(attacks)), attacks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ASR ↓ (share of attack images showing the concept)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("attacks: how often the erased concept comes back (95% CI over concepts and seeds)", fontsize=8)
    return png(fig)


def cost_dots(h: Headline, colours: dict[str, str], per_cell: pd.DataFrame) -> bytes:
    """Seconds per concept per method as a labelled dot plot (log scale), in the table's order; the
    whisker spans the fastest to the slowest concept."""
    plt = pyplot()
    methods = h.methods()
    t = h.table.set_index("method")
    fig, ax = plt.subplots(figsize=(5.5, 0.6 + 0.38 * len(methods)))
    for i, m in enumerate(methods):
        v = float(t.loc[m, "seconds_per_concept"])
        spread = per_cell.loc[per_cell["method"] == m, "seconds"].astype(float)
        if len(spread):
            ax.hlines(i, spread.min(), spread.max(), color=colours[m], lw=1.2, zorder=2)
        ax.scatter([v], [i], color=colours[m], s=40, zorder=3)
        ax.annotate(f"{v:.1f} s", (v, i), xytext=(6, -3), textcoords="offset points", fontsize=7)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("seconds per concept ↓ (the erasure alone; mean, line: fastest to slowest concept; log scale)")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (TeX is off, so the default 10^k labels would be raw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def tradeoff_points(h: Headline, colours: dict[str, str]) -> bytes:
    """Without sweeps: each method's operating point (UA against mean retain) with intervals, the
    original model and the ideal corner."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for _, r in h.table.iterrows():
        if r["method"] == ORIGINAL:
            ax.scatter([r["retain_mean"]], [r["ua"]], marker="s", color=ORIGINAL_COLOUR, label=ORIGINAL)
            continue
        ax.errorbar([r["retain_mean"]], [r["ua"]], xerr=_err(r, "retain_mean"), yerr=_err(r, "ua"), fmt="o",
                    color=colours[r["method"]], capsize=2, label=r["method"])
    ua_ra_axes(ax)
    return png(fig)


def ua_ra_axes(ax: Any, where: str = "", **legend: Any) -> None:
    """The UA-RA square every trade-off figure shares: the ideal corner, labelled axes, the legend."""
    ax.scatter([1], [1], marker="*", s=120, color="gold", edgecolor="k", zorder=4, label="ideal (erase all, keep all)")
    ax.set_xlabel(f"mean retain accuracy {display('retain_mean')} ↑{' (' + where + ')' if where else ''}")
    ax.set_ylabel(f"{display('ua')} ↑ (erasure{', ' + where if where else ''})")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(**{"fontsize": 6, "loc": "lower left", **legend})


# -- per-concept drill-down ------------------------------------------------------------------------------
DRILL_GROUPS = (("target", "target prompt"), ("near_neighbour", "near-neighbour concept"),
                ("in_domain", "an in-domain retain concept"))


def drill_grid(cells: list[dict[str, Any]], concept: str, group: str, methods: list[str]) -> tuple[bytes, str] | None:
    """One mosaic for a concept's prompt group: a row per model (original, then each method in the
    table's order), a column per sample (seed), each image marked with the judge's verdict:
    ✓ the judge sees the prompt's concept, ✗ it does not, ∅ rejected (nothing to judge). Returns
    (WebP bytes, caption) or None when the cells hold no samples of the group."""
    from safetensors import safe_open

    mine = {c["label"]: c for c in cells if c["spec"]["concept"] == concept}
    order = [m for m in methods if m in mine]
    if not order:
        return None
    first = mine[order[0]]
    rows_meta = _sample_rows(first)
    if group not in rows_meta:
        return None
    plan = [r for r in first["per_image"] if not r["group"].startswith("attack:")][::2]
    idx = rows_meta[group]
    prompt = plan[idx[0]]["prompt"]
    seeds = [plan[i]["seed"] for i in idx]
    grid_rows: list[tuple[str, Any, list[str]]] = []
    key_o, key_e = ("original", "edited") if group == "target" else (f"original_{group}", f"edited_{group}")
    with safe_open(str(Path(first["folder"]) / "samples.safetensors"), "pt") as f:
        grid_rows.append(("original", f.get_tensor(key_o), _marks(first, idx, "original")))
    for m in order:
        c = mine[m]
        with safe_open(str(Path(c["folder"]) / "samples.safetensors"), "pt") as f:
            if key_e not in f.keys():
                continue
            grid_rows.append((m, f.get_tensor(key_e), _marks(c, _sample_rows(c)[group], "edited")))
    plt = pyplot()
    n = len(seeds)
    h, w = grid_rows[0][1].shape[-2:]
    gap, label_h = 2, 9
    mosaic = np.full((len(grid_rows) * (h + gap + label_h), n * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, (_, imgs, _) in enumerate(grid_rows):
        for j, img in enumerate(imgs[:n]):
            y, x = i * (h + gap + label_h), j * (w + gap)
            mosaic[y:y + h, x:x + w] = img.permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(0.62 * n + 1.6, 0.78 * len(grid_rows) + 0.4))
    ax.imshow(mosaic, interpolation="nearest")
    for i, (_, _, marks) in enumerate(grid_rows):
        for j, mark in enumerate(marks[:n]):
            ax.text(j * (w + gap) + w / 2, i * (h + gap + label_h) + h + label_h / 2 + 0.5, mark, ha="center",
                    va="center", fontsize=6, color={"✓": "#1a7f37", "✗": "#b42318"}.get(mark, "#555"))
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(n)], [f"seed {s}" for s in seeds], fontsize=5.5)
    ax.set_yticks([i * (h + gap + label_h) + h / 2 for i in range(len(grid_rows))], [r[0] for r in grid_rows],
                  fontsize=6.5)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    judged = plan[idx[0]]["judged_concept"]
    caption = f"prompt '{prompt}' (the judge looks for '{judged}')"
    ax.set_title(caption, fontsize=7)
    return webp(fig), caption


def _sample_rows(cell: dict[str, Any]) -> dict[str, list[int]]:
    """Per shown group, the plan rows of a cell's samples (read once per cell, not once per grid)."""
    if "sample_rows" not in cell:
        from safetensors import safe_open

        with safe_open(str(Path(cell["folder"]) / "samples.safetensors"), "pt") as f:
            cell["sample_rows"] = json.loads((f.metadata() or {}).get("rows", "{}"))
    return cell["sample_rows"]


def _marks(cell: dict[str, Any], idx: list[int], model: str) -> list[str]:
    """The judge's verdict per shown image of ``model``: ✓ seen, ✗ not seen, ∅ rejected."""
    plan = [r for r in cell["per_image"] if not r["group"].startswith("attack:")]
    out = []
    for i in idx:
        r = plan[2 * i + (0 if model == "original" else 1)]
        out.append("∅" if r.get("rejected") else ("✓" if r["detected"] else "✗"))
    return out
