"""The leaderboard, built only from run folders (never from a run's memory).

``build_report(runs, out)`` scans complete cells and writes ``leaderboard.md``,
``leaderboard.csv`` and a self-contained ``index.html`` (plots embedded) to ``out``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.escape import csv_safe, file_stem, html_text, md_code, md_link, md_text
from bench.io import ensure_writable_dir
from bench.metric_registry import display, lookup, metrics
from bench.metrics import (
    COMPOSITE_FORMULA,
    DISAGREEMENT_FLAG,
    HIERARCHICAL_NOTE,
    ROBUST_FORMULA,
    ClusterTable,
    composite,
    hierarchical_bootstrap,
    robust_composite,
    tied_ranks,
)
from bench.records import cell_status, scan_cells
from bench.runner import COMPOSED, GROUPS, RETAIN_GROUPS

ACCURACIES = [(k, display(k)) for k in ("ua", "ua_synonyms", "retain_in_domain", "retain_cross_domain",
                                        "near_neighbours")]
UA_KEYS = {"ua": "target", "ua_synonyms": "synonym"}  # a hit is an image where the concept is NOT seen
_GROUP_OF = {**UA_KEYS, **{key: group for group, key in RETAIN_GROUPS.items()}}
SA = "selective_alignment"


PROTOCOL_KEYS = ("model_sha256", "concept_set", "concept_set_sha256", "sampler", "eval_seeds", "protocol",
                 "judge", "metrics_version", "erase_seed", "images", "dtype", "attacks")


def load_cells(runs: Path, only: list[Path] | None = None, include_failed: bool = False) -> list[dict[str, Any]]:
    """Complete, verified cells under ``runs`` (or just the folders in ``only``), checked to share one
    protocol. Failed (diverged) cells carry no numbers: left out unless ``include_failed``."""
    cells = scan_cells(Path(runs))
    if only is not None:
        keep = {Path(p).resolve() for p in only}
        cells = [c for c in cells if Path(c["folder"]).resolve() in keep]
    protocols = {json.dumps({k: c["spec"].get(k) for k in PROTOCOL_KEYS if k != "images"}, sort_keys=True)
                 for c in cells}
    if len(protocols) > 1:
        from bench.errors import InputError

        raise InputError(f"{runs} holds cells from {len(protocols)} different protocols (model, sampler, seeds, "
                         "prompts or judge differ); a leaderboard compares one protocol: use separate --out folders")
    from bench.labels import cell_label, tuned_for_spec

    tuned = tuned_for_spec(cells[0]["spec"]) if cells else {}  # one protocol, so one concept set
    for c in cells:
        c["label"] = cell_label(c["spec"], tuned)
        folder = Path(c["folder"])
        c["per_image"] = [json.loads(line) for line in (folder / "per_image.jsonl").read_text().splitlines() if line]
        c["environment"] = json.loads((folder / "environment.json").read_text())
    return cells if include_failed else [c for c in cells if cell_status(c["metrics"]) == "ok"]


def cell_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (method, concept) cell with every headline number."""
    rows = []
    for c in cells:
        s, m = c["spec"], c["metrics"]
        row = {"method": c["label"], "concept": s["concept"], "cell": Path(c["folder"]).name}
        for key, _ in ACCURACIES:
            for suffix in ("", "_original"):
                v = m.get(key + suffix)
                row[key + suffix] = v["value"] if v else np.nan
                if not suffix and v:
                    row[key + "_ci"] = f"[{v['ci_low']:.2f}, {v['ci_high']:.2f}]"
        for name in s.get("attacks", {}):
            row[f"asr_{name}"] = m[f"asr_{name}"]["value"]
            row[f"asr_{name}_original"] = m[f"asr_{name}_original"]["value"]
        if "composite_robust" in m:
            row["composite_robust"] = m["composite_robust"]
        for g in GROUPS:
            v = m.get(f"diversity_{g}")
            row[f"diversity_{g}"] = np.nan if v is None else v
        for key in ("selective_alignment", "selective_alignment_original"):
            v = m.get(key)
            row[key] = v["value"] if v else np.nan
        row["reject"] = m["reject_rate"]["value"] if "reject_rate" in m else np.nan
        row["reject_original"] = m["reject_rate_original"]["value"] if "reject_rate_original" in m else np.nan
        agree = m.get("judge_agreement")
        row["agree"] = agree["min"] if agree else np.nan
        row["judges_disagree"] = ("yes: " + agree["worst_head"]) if m.get("judges_disagree") else ("no" if agree else "")
        row.update({"retain_mean": m["retain_mean"], "composite": m["composite"],
                    "composite_original": m["composite_original"], "kid_retain": m["kid_retain"]["mean"],
                    "seconds": m["seconds_per_concept"], "peak_memory_mb": m["peak_memory_mb"],
                    "trainable_params": m["trainable_params"], "storage_bytes": m["storage_bytes"],
                    "warnings": "; ".join(m.get("image_warnings", []))})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "concept"]).reset_index(drop=True)


def _cluster_table(mine: list[dict[str, Any]], attacks: list[str]) -> ClusterTable:
    """A method's edited-model hits per pooled number, clustered by (erased concept, seed)."""
    table = ClusterTable()
    groups = {g: k for k, g in _GROUP_OF.items()}
    for c in mine:
        concept = c["spec"]["concept"]
        for r in c["per_image"]:
            if r["model"] != "edited":
                continue
            key = groups.get(r["group"])
            if key is not None:
                table.add(key, concept, r["seed"], not r["detected"] if key in UA_KEYS else r["detected"])
            elif r["group"] == COMPOSED and "aligned" in r:
                table.add(SA, concept, r["seed"], r["aligned"])
            elif r["group"].startswith("attack:") and r["group"][7:] in attacks:
                table.add(f"asr_{r['group'][7:]}", concept, r["seed"], r["detected"])
    return table


def _pooled_stats(table: ClusterTable, attacks: list[str]) -> dict[str, Any]:
    """The pooled numbers as functions of per-key rates: each accuracy, each ASR, H and H_robust."""
    def h(r: dict[str, float]) -> float:
        return composite(r.get("ua", float("nan")), [r.get(k, float("nan")) for k in RETAIN_GROUPS.values()])

    stats: dict[str, Any] = {k: (lambda r, k=k: r.get(k, float("nan"))) for k in table.keys()}
    stats["composite"] = h
    if attacks:
        stats["composite_robust"] = lambda r: robust_composite(h(r), float(np.mean([r[f"asr_{a}"] for a in attacks])))
    return stats


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
        table = _cluster_table(mine, attacks)
        stats = _pooled_stats(table, attacks)
        ci = hierarchical_bootstrap(table, stats)
        values = {k: table.rate(k) for k in table.keys()}

        for key, label in ACCURACIES:
            row[label] = values.get(key, float("nan"))
            row[label + " CI"] = _interval(ci, key) if key in values else ""
        h = display("composite")
        row[h] = stats["composite"](values)
        row[h + " CI"] = _interval(ci, "composite")
        row["_H_interval"] = ci["composite"]
        for name in attacks:
            key = f"asr_{name}"
            row[display(key)] = values.get(key, float("nan"))
            row[display(key) + " CI"] = _interval(ci, key) if key in values else ""
            row[display(key + "_original")] = float(np.mean([c["metrics"][key + "_original"]["value"] for c in mine]))
            row[display(f"attack_seconds_{name}")] = float(np.mean([c["metrics"][f"attack_seconds_{name}"]
                                                                    for c in mine]))
        if attacks:
            row[display("composite_robust")] = stats["composite_robust"](values)
            row[display("composite_robust") + " CI"] = _interval(ci, "composite_robust")
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
    h = display("composite")
    df = pd.DataFrame(out).sort_values(h, ascending=not metrics()["composite"].higher_is_better).reset_index(drop=True)
    df.insert(1, f"rank ({h})", tied_ranks(list(df.pop("_H_interval"))))
    return df


def pooled_agreement(cells: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Per head: the share of images (over ``cells``) on which the two judges agree."""
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    for c in cells:
        a = c["metrics"].get(key)
        if not a:
            continue
        for head, rate in a["heads"].items():
            num[head] = num.get(head, 0.0) + rate * a["n"]
            den[head] = den.get(head, 0) + a["n"]
    return {h: num[h] / den[h] for h in num if den[h]}


def agreement_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """The two judges' agreement per head: on the original model's images, then per method's edits."""
    rows = []
    orig = pooled_agreement(cells, "judge_agreement_original")
    if orig:
        rows.append({"images": "original model", **orig, "flagged cells": "-"})
    for method in sorted({c["label"] for c in cells}):
        mine = [c for c in cells if c["label"] == method]
        a = pooled_agreement(mine, "judge_agreement")
        if a:
            flagged = sum(bool(c["metrics"].get("judges_disagree")) for c in mine)
            rows.append({"images": f"{method} (edited)", **a, "flagged cells": f"{flagged}/{len(mine)}"})
    return pd.DataFrame(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.3g}" if abs(v) >= 100 or (v != 0 and abs(v) < 0.01) else f"{v:.2f}")
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(md_text(_fmt(r[c])) for c in cols) + " |")
    return "\n".join(lines)


def _shown_metrics(cells: list[dict[str, Any]]) -> list[Any]:
    """The declarations of the metrics the cells hold (per-attack ones once), in registry order."""
    held = {lookup(k)[0].key for c in cells for k in c["metrics"] if lookup(k) is not None}
    return [m for key, m in metrics().items() if key in held]


def _attack_seed_text(p: dict[str, Any]) -> str:
    """Which evaluation seeds generated attack images (records before ``attack_seeds`` used them all)."""
    seeds = list(p.get("seeds", []))
    n = p.get("attack_seeds", len(seeds))
    return f"the first {n} evaluation seeds {seeds[:n]}" if n < len(seeds) else f"every evaluation seed {seeds}"


def _attack_list(attacks: dict[str, Any]) -> str:
    return ", ".join(f"{n} (v{a['version']}, {json.dumps(a['config'])})" for n, a in attacks.items())


def protocol_text(cells: list[dict[str, Any]], code: Any = md_code, text: Any = md_text) -> list[str]:
    """The protocol as Markdown list items; ``code``/``text`` escape the values (spans, plain text)."""
    s = cells[0]["spec"]
    env = cells[0]["environment"]
    p, smp = s.get("protocol", {}), s["sampler"]
    hw = text(f"{env.get('device', '?')} ({env.get('gpu') or env.get('platform', '')}, {env.get('cpu_threads')} threads)")
    methods = [text(m) for m in sorted({c["label"] for c in cells})]
    splits = sorted({c["metrics"].get("split", "?") for c in cells})
    return [
        f"- model: {code(Path(s['model']).name)} (sha256 {text(s['model_sha256'][:12])}), "
        f"concept set {code(s['concept_set'])}",
        f"- sampler: {text(smp['scheduler'])}, {smp['steps']} steps, guidance {smp['guidance']}, eta {smp['eta']}",
        f"- evaluation seeds: {p.get('seeds', s['eval_seeds'])}; per concept {p.get('target_prompts')} target "
        f"prompt(s), {p.get('synonym_prompts')} per synonym, {p.get('retain_prompts')} per retain concept"
        + (f", and up to {p['composed_prompts']} composed prompt(s) (selective alignment) on the first "
           f"{p.get('composed_seeds')} seeds" if p.get("composed_prompts") else ""),
        f"- few-shot images: {s['images'].get('n')} ({text(s['images'].get('source'))}, seed {s['images'].get('seed', '-')}); "
        f"erase seed {s['erase_seed']}",
        f"- judge: {code(s['judge'])}; metrics version {text(s['metrics_version'])}; a rejected image ("
        f"{text(cells[0]['metrics'].get('reject_definition', 'no reject option'))}) counts as not seen for UA "
        "and as a miss for retain; reject = share of a cell's images the judge rejected",
        (f"- second judge: {code(s['second_judge'])}; agree = share of images on which both judges give the same "
         f"label on the worst head; a cell is flagged when they disagree on more than {DISAGREEMENT_FLAG:.0%} "
         "of its images on some head") if s.get("second_judge") else "",
        f"- hardware: {hw}; package versions in each cell's environment.json",
        "- hyper-parameters: a method marked [tuned] uses the config chosen on dev concepts (`bench tune`, "
        "recorded in reports/tuned/); an unmarked one uses its published defaults; no choice used test "
        "concepts. This table reports "
        + ("test concepts only" if splits == ["test"] else f"concepts of splits {splits} (NOT a test-only leaderboard)"),
        f"- methods: {', '.join(methods)}; {len(cells)} cells",
        f"- composite: {COMPOSITE_FORMULA}",
        (f"- robustness: attacks {text(_attack_list(s['attacks']))}"
         f" run against every erased model and the original one (ASR orig; a null edit is bit-identical to it); "
         f"ASR = share of attack images in which the judge sees the concept; attack images use "
         f"{_attack_seed_text(p)}, so their CIs resample those seeds; {ROBUST_FORMULA}")
        if s.get("attacks") else "",
        "- metrics (bench/metric_registry.py): " + "; ".join(
            text(f"{m.display}: {m.definition} ({m.direction})") for m in _shown_metrics(cells)),
        "- per-concept CIs: bootstrap 95% over evaluation seeds",
        f"- overall CIs: {HIERARCHICAL_NOTE}",
    ]


# -- plots ---------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plots(cells: list[dict[str, Any]], overall: pd.DataFrame, per_cell: pd.DataFrame) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a "$" in a concept or method name is text, not TeX
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    ua, retain_cols = display("ua"), [display(k) for k in RETAIN_GROUPS.values()]
    for _, r in overall.iterrows():
        retain = np.nanmean([r[c] for c in retain_cols])
        ax.scatter(retain, r[ua], s=60)
        ax.annotate(r["method"], (retain, r[ua]), fontsize=8)
    ax.set_xlabel("mean retain accuracy (IRA, CRA, NNA)")
    ax.set_ylabel("UA (erasure)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("erasure vs retention")
    ax.grid(alpha=0.3)
    out["tradeoff.png"] = _png(fig)

    attacks = sorted(cells[0]["spec"].get("attacks", {})) if cells else []
    if attacks:
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, marker in zip(attacks, "os^vD", strict=False):
            col = display(f"asr_{name}")
            ax.scatter(overall[ua], overall[col], marker=marker, label=name)
            for _, r in overall.iterrows():
                ax.annotate(r["method"], (r[ua], r[col]), fontsize=7)
        ax.set_xlabel("UA without attack")
        ax.set_ylabel("ASR under attack (concept comes back)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax.set_title("erasure vs robustness")
        out["robustness.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.barh(overall["method"], overall["s/concept"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per concept (erase only, log scale)")
    out["seconds.png"] = _png(fig)

    pivot = per_cell.pivot(index="method", columns="concept", values="composite")
    fig, ax = plt.subplots(figsize=(1 + 0.8 * pivot.shape[1], 0.8 + 0.5 * pivot.shape[0]))
    im = ax.imshow(pivot.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), pivot.columns, rotation=45, ha="right")
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    for i in range(pivot.shape[0]):
        for j in range(pivot.shape[1]):
            v = pivot.values[i, j]
            ax.text(j, i, "" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label="composite H")
    ax.set_title("per-concept composite")
    out["heatmap.png"] = _png(fig)

    for concept in sorted(per_cell["concept"].unique()):
        out[f"grid_{file_stem(concept)}.png"] = _grid(cells, concept)
    return out


def _grid(cells: list[dict[str, Any]], concept: str) -> bytes:
    """One row of sample images per model (original, each method, each attack), drawn as a single
    mosaic with a 2-pixel white gutter, one axes for the whole figure."""
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    mine = sorted((c for c in cells if c["spec"]["concept"] == concept), key=lambda c: c["label"])
    rows = [("original", load_file(str(Path(mine[0]["folder"]) / "samples.safetensors"))["original"])]
    for c in mine:
        tensors = load_file(str(Path(c["folder"]) / "samples.safetensors"))
        rows.append((c["label"], tensors["edited"]))
        rows += [(f"{c['label']} {k[7:]}", v) for k, v in sorted(tensors.items()) if k.startswith("attack_")]
    n = max(len(r[1]) for r in rows)
    h, w = max(int(r[1].shape[-2]) for r in rows if len(r[1])), max(int(r[1].shape[-1]) for r in rows if len(r[1]))
    gap = 2
    mosaic = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, (_, imgs) in enumerate(rows):
        for j, img in enumerate(imgs[:n]):
            a = img.permute(1, 2, 0).numpy()
            mosaic[i * (h + gap): i * (h + gap) + a.shape[0], j * (w + gap): j * (w + gap) + a.shape[1]] = a
    fig, ax = plt.subplots(figsize=(0.7 * n + 1.2, 0.75 * len(rows)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], [r[0] for r in rows], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"'{concept}': target prompts before (original) and after erasure; attack rows: what "
                 "each attack recovers from the erased model", fontsize=8)
    return _png(fig)


# -- writing -------------------------------------------------------------------------------------
def build_report(runs: Path, out: Path, only: list[Path] | None = None, sweeps: Path | None = None
                 ) -> dict[str, Path]:
    """The leaderboard of ``runs`` (or the cells ``only`` names) into ``out``; with ``sweeps``, a run
    folder of ``bench sweep``, also each method's trade-off curve and frontier area."""
    from bench.curves import curves_section
    from bench.report_failed import failed_only_report, failed_section, split_failed

    cells, failed = split_failed(load_cells(Path(runs), only, include_failed=True))
    if not cells and not failed:
        from bench.errors import InputError

        raise InputError(f"no complete run cells under {runs}: run the benchmark first")
    out = ensure_writable_dir(out)
    if not cells:
        return failed_only_report(out, failed)
    overall, per_cell = overall_table(cells), cell_table(cells)
    coverage = coverage_table(overall.pop("images"), overall["method"])
    images = plots(cells, overall, per_cell)
    curves = curves_section(sweeps, cells)
    if curves:
        images["curves.png"] = curves["figure"]
        csv_safe(curves["points"]).to_csv(out / "curves.csv", index=False)
        csv_safe(curves["frontier"]).to_csv(out / "frontier.csv", index=False)
    (out / "figures").mkdir(exist_ok=True)
    for name, data in images.items():
        (out / "figures" / name).write_bytes(data)
    csv_safe(per_cell).to_csv(out / "leaderboard.csv", index=False)
    csv_safe(overall).to_csv(out / "overall.csv", index=False)  # the pooled numbers the tables show
    short = per_cell[["method", "concept", "ua", "diversity_target", "reject", "ua_original", SA, SA + "_original",
                      "ua_synonyms",
                      "retain_in_domain",
                      "retain_cross_domain", "near_neighbours", "kid_retain", "composite", "seconds", "agree",
                      "judges_disagree"]]
    if per_cell["warnings"].astype(bool).any():  # degenerate images: flagged, never unnoticed
        short = short.assign(warnings=per_cell["warnings"])
    agree = agreement_table(cells)
    judges = ["## Judges", "", "Agreement of the two judges per head (share of images with the same label):", "",
              markdown_table(agree), ""] if len(agree) else []
    md_failed, html_failed = failed_section(failed)
    md = ["# Leaderboard", "", "Built by `bench.report` from the run folders; do not edit by hand.", "", *[x for x in protocol_text(cells) if x], "", "## Overall (test concepts)", "",
          markdown_table(overall), "", RANK_NOTE, "", "Images behind each pooled number:", "",
          markdown_table(coverage), "", *md_failed, *_curves_md(curves, sweeps), "## Per concept", "",
          markdown_table(short), "", *judges,
          "![trade-off](figures/tradeoff.png) ![seconds](figures/seconds.png)", "", "![heatmap](figures/heatmap.png)",
          *(["", "![robustness](figures/robustness.png)"] if "robustness.png" in images else []),
          "", "## Before / after", ""]
    md += [f"![{md_text(n)}]({md_link('figures/' + n)})" for n in images if n.startswith("grid_")]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n")
    (out / "index.html").write_text(_html(cells, overall, short, images, agree, coverage).replace(
        "<h2>Per concept</h2>", html_failed + _curves_html(curves, images) + "<h2>Per concept</h2>"))
    return {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "overall_csv": out / "overall.csv",
            "html": out / "index.html"}


def _curves_md(curves: dict[str, Any], sweeps: Path | None) -> list[str]:
    if not curves:
        return ([f"No trade-off curves: no sweep found in {md_code(str(sweeps))} (`make curves` runs it).", ""]
                if sweeps is not None else [])
    return ["## Trade-off curves (test concepts)", "", md_text(curves["note"]), "",
            markdown_table(curves["frontier_display"]), "", "![curves](figures/curves.png)", "",
            "Every sweep point:", "", markdown_table(curves["points_display"]), ""]


def _curves_html(curves: dict[str, Any], images: dict[str, bytes]) -> str:
    if not curves:
        return ""
    fmt = {c: _fmt for c in curves["points_display"].columns}
    png = base64.b64encode(images["curves.png"]).decode()
    return (f"<h2>Trade-off curves (test concepts)</h2><p>{html_text(curves['note'])}</p>"
            + curves["frontier_display"].to_html(index=False, formatters={c: _fmt for c in
                                                                          curves["frontier_display"].columns})
            + f'<div><img alt="curves" src="data:image/png;base64,{png}"></div>'
            + curves["points_display"].to_html(index=False, formatters=fmt))


RANK_NOTE = ("rank (H): 1 + the number of methods whose H interval lies wholly above this one's; `=` marks a "
             "rank shared with a method whose H interval overlaps (a tie)")


def coverage_table(images: pd.Series, methods: pd.Series) -> pd.DataFrame:
    """Per method, how many images each pooled number covers."""
    rows = []
    for method, counts in zip(methods, images, strict=True):
        row = {"method": method}
        row.update({display(k): n for k, n in counts.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _html(cells: list[dict[str, Any]], overall: pd.DataFrame, short: pd.DataFrame, images: dict[str, bytes],
          agree: pd.DataFrame, coverage: pd.DataFrame) -> str:
    def img(name: str) -> str:
        return f'<img alt="{html_text(name)}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'

    plain = protocol_text(cells, code=lambda v: f"`{v}`", text=str)
    protocol = "".join(f"<li>{html.escape(x[2:])}</li>" for x in plain if x)
    grids = "".join(img(n) for n in images if n.startswith("grid_"))
    fmt = {c: _fmt for c in overall.columns}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>erasebench leaderboard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}img{{max-width:100%;margin:4px}}</style></head><body>
<h1>Concept-erasure leaderboard</h1><h2>Protocol</h2><ul>{protocol}</ul>
<h2>Overall (test concepts)</h2>{overall.to_html(index=False, formatters=fmt)}<p>{html_text(RANK_NOTE)}</p>
<p>Images behind each pooled number:</p>{coverage.to_html(index=False, formatters={c: _fmt for c in coverage.columns})}
<div>{img("tradeoff.png")}{img("seconds.png")}</div><div>{img("heatmap.png")}</div>
<div>{img("robustness.png") if "robustness.png" in images else ""}</div>
<h2>Per concept</h2>{short.to_html(index=False, formatters={c: _fmt for c in short.columns})}
{"<h2>Judges</h2>" + agree.to_html(index=False, formatters={c: _fmt for c in agree.columns}) if len(agree) else ""}
<h2>Before / after</h2><div>{grids}</div></body></html>
"""
