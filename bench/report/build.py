"""The leaderboard, built only from run folders (never from a run's memory).

``build_report(runs, out)`` scans complete cells and writes ``index.html`` (headline first, figures as
files under ``figures/``), ``leaderboard.md``, ``leaderboard.csv`` (tidy) and ``overall.csv`` to ``out``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.io import ensure_writable_dir
from bench.core.plan import COMPOSED, GROUPS, RETAIN_GROUPS
from bench.core.records import cell_status, scan_cells
from bench.metrics.formulas import (
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
from bench.metrics.registry import display, lookup, metrics
from bench.report.text import csv_safe, file_stem, html_text, md_code, md_text

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
        from bench.core.errors import InputError

        raise InputError(f"{runs} holds cells from {len(protocols)} different protocols (model, sampler, seeds, "
                         "prompts or judge differ); a leaderboard compares one protocol: use separate --out folders")
    from bench.report.labels import cell_label, tuned_for_spec

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


def _cluster_table(mine: list[dict[str, Any]], attacks: list[str], model: str = "edited",
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


def _pooled_stats(table: ClusterTable, attacks: list[str]) -> dict[str, Any]:
    """The pooled numbers as functions of per-key rates: each accuracy, each ASR, H and H_robust."""
    def h(r: dict[str, float]) -> float:
        return composite(r.get("ua", float("nan")), [r.get(k, float("nan")) for k in RETAIN_GROUPS.values()])

    stats: dict[str, Any] = {k: (lambda r, k=k: r.get(k, float("nan"))) for k in table.keys()}
    stats["composite"] = h
    stats["retain_mean"] = retain_mean
    if attacks:
        stats["asr_mean"] = lambda r: float(np.mean([r.get(f"asr_{a}", float("nan")) for a in attacks]))
        stats["composite_robust"] = lambda r: robust_composite(h(r), float(np.mean([r[f"asr_{a}"] for a in attacks])))
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


def pooled_agreement(cells: list[dict[str, Any]], key: str, every_image: bool = False) -> dict[str, float]:
    """Per head: the share of images (over ``cells``) on which the two judges agree, over the images
    each cell scored the head on (``bench.metrics.formulas.AGREEMENT_DEFINITION``), or over every image."""
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    for c in cells:
        a = c["metrics"].get(key)
        if not a:
            continue
        rates = a.get("every_image", a["heads"]) if every_image else a["heads"]
        for head, rate in rates.items():
            n = a["n"] if every_image else a.get("images", {}).get(head, a["n"])
            num[head] = num.get(head, 0.0) + rate * n
            den[head] = den.get(head, 0) + n
    return {h: num[h] / den[h] for h in num if den[h]}


def agreement_table(cells: list[dict[str, Any]], every_image: bool = False) -> pd.DataFrame:
    """The two judges' agreement per head: on the original model's images, then per method's edits;
    over the images each head is scored on (with the flagged cells), or over every image."""
    rows = []
    orig = pooled_agreement(cells, "judge_agreement_original", every_image)
    if orig:
        rows.append({"images": "original model", **orig} | ({} if every_image else {"flagged cells": "-"}))
    for method in sorted({c["label"] for c in cells}):
        mine = [c for c in cells if c["label"] == method]
        a = pooled_agreement(mine, "judge_agreement", every_image)
        if a:
            flagged = sum(bool(c["metrics"].get("judges_disagree")) for c in mine)
            rows.append({"images": f"{method} (edited)", **a}
                        | ({} if every_image else {"flagged cells": f"{flagged}/{len(mine)}"}))
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
            table = _cluster_table(mine, [], model, judge)
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
         "label on the worst head, over the images whose numbers read that head; a cell is flagged when they "
         f"disagree on more than {DISAGREEMENT_FLAG:.0%} of its images on some head") if s.get("second_judge") else "",
        f"- hardware: {hw}; package versions in each cell's environment.json",
        "- hyper-parameters: a method marked [tuned] uses the config chosen on dev concepts (" + code("bench tune") + ", "
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
        "- metrics (bench/metrics/registry.py): " + "; ".join(
            text(f"{m.display}: {m.definition} ({m.direction})") for m in _shown_metrics(cells)),
        "- per-concept CIs: bootstrap 95% over evaluation seeds",
        f"- overall CIs: {HIERARCHICAL_NOTE}",
    ]


# -- writing -------------------------------------------------------------------------------------
FIGURE_PATTERNS = ("*.png", "*.webp")  # what build_report writes into OUT/figures (and clears first)


def build_report(runs: Path, out: Path, only: list[Path] | None = None, sweeps: Path | None = None
                 ) -> dict[str, Any]:
    """The leaderboard of ``runs`` (or the cells ``only`` names) into ``out``: ``index.html`` (headline
    first, images as files under ``figures/``), ``leaderboard.md`` (the headline table and links),
    ``leaderboard.csv`` (tidy: one row per cell and metric), ``overall.csv`` (the headline's numbers);
    with ``sweeps``, a run folder of ``bench sweep``, also the trade-off curves (``curves.csv``,
    ``frontier.csv``). Returns the paths, and under ``summary`` the plain text a terminal prints."""
    from bench.report.failed import failed_only_report, split_failed

    cells, failed = split_failed(load_cells(Path(runs), only, include_failed=True))
    if not cells and not failed:
        from bench.core.errors import InputError

        raise InputError(f"no complete run cells under {runs}: run the benchmark first")
    out = ensure_writable_dir(out)
    if not cells:
        return failed_only_report(out, failed)
    return _write_report(out, cells, failed, sweeps)


def _write_report(out: Path, cells: list[dict[str, Any]], failed: list[dict[str, Any]], sweeps: Path | None
                  ) -> dict[str, Any]:
    from bench.report.curves import curves_section
    from bench.report.figures import (
        DRILL_GROUPS,
        asr_bars,
        cost_dots,
        drill_grid,
        method_colours,
        tradeoff_points,
    )
    from bench.report.leaderboard import (
        headline,
        headline_markdown,
        original_numbers,
        project_commit,
        sentence,
        tidy_table,
    )

    # 1. numbers: pooled per method, the original model, the headline
    overall, per_cell = overall_table(cells), cell_table(cells)
    coverage = coverage_table(overall.pop("images"), overall["method"])
    original = original_numbers(cells)
    head = headline(overall, original)
    methods = head.methods()
    colours = method_colours(methods)
    attacks = sorted(cells[0]["spec"].get("attacks", {}))
    # 2. figures, one colour per method in the table's order
    figures: dict[str, bytes] = {}
    by_spec = {}
    for c in sorted(cells, key=lambda c: not c["label"].endswith("[tuned]")):  # a spec's tuned row sets its colour
        by_spec.setdefault(c["spec"]["method"], colours[c["label"]])
    spec_of = {c["label"]: c["spec"]["method"] for c in cells}
    marks = {spec_of[r["method"]]: (float(r[display("ua")]), float(r[display("retain_mean")]))
             for _, r in overall.iterrows() if r["method"] == f"{spec_of[r['method']]}[tuned]"}
    curves = curves_section(sweeps, marks, by_spec, (original.get("ua", float("nan")), original["retain_mean"]))
    if curves:
        figures["curves.png"] = curves["figure"]
    else:
        figures["tradeoff.png"] = tradeoff_points(head, colours)
    if attacks:
        figures["robustness.png"] = asr_bars(head, overall, attacks, colours)
    figures["cost.png"] = cost_dots(head, colours, per_cell)
    drill: dict[str, list[tuple[str, str]]] = {}
    for concept in sorted(per_cell["concept"].unique()):
        for group, _ in DRILL_GROUPS:
            made = drill_grid(cells, concept, group, methods)
            if made:
                name = f"drill_{file_stem(concept)}_{group}.webp"
                figures[name] = made[0]
                drill.setdefault(concept, []).append((name, made[1]))
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    for pattern in FIGURE_PATTERNS:  # a figure of a concept no longer in the run must not linger
        for stale in fig_dir.glob(pattern):
            stale.unlink()
    for name, data in figures.items():
        (fig_dir / name).write_bytes(data)
    # 3. data files
    commit = project_commit()
    csv_safe(tidy_table(cells, commit)).to_csv(out / "leaderboard.csv", index=False)
    csv_safe(head.table).to_csv(out / "overall.csv", index=False)  # exactly the headline's numbers
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "overall_csv": out / "overall.csv",
             "html": out / "index.html"}
    if curves:
        csv_safe(curves["points"]).to_csv(out / "curves.csv", index=False)
        csv_safe(curves["frontier"]).to_csv(out / "frontier.csv", index=False)
    # 4. the Markdown summary and the page
    md = ["# Leaderboard", "", "Built by `bench.report.build` from the run folders; do not edit by hand. "
          "The full page: [index.html](index.html).", "", md_text(sentence(head)), "",
          *headline_markdown(head), "", md_text(HEADLINE_NOTE.format(rank=display(head.rank_key))), "",
          "Files: [overall.csv](overall.csv) (these numbers), [leaderboard.csv](leaderboard.csv) (every cell's "
          "numbers, one row per metric)" + (", [curves.csv](curves.csv), [frontier.csv](frontier.csv)"
                                            if curves else "") + ", figures in [figures/](figures/)."]
    judges = judges_table(cells)
    if len(judges):
        md += ["", "## Both judges", "", md_text(JUDGES_NOTE), "", markdown_table(judges)]
    paths["markdown"].write_text("\n".join(md) + "\n")
    paths["html"].write_text(_page(cells, failed, overall, per_cell, coverage, head, original, attacks, curves,
                                   drill, commit, sweeps, out, judges))
    # what a terminal prints at the end of a run: the failures, then the headline, as plain text
    from bench.report.failed import failed_table

    failures = [markdown_table(failed_table(failed)), ""] if failed else []
    paths["summary"] = "\n".join([*failures, sentence(head), "", *headline_markdown(head)]).replace("\\", "")
    return paths


JUDGES_NOTE = ("UA and RA as each judge reads the same images (judge 1 ranks the leaderboard; judge 2 is the second "
               "opinion named in the protocol), pooled as the leaderboard pools them, with 95% intervals over "
               "concepts and seeds; cells = the cells pooled (those in which the second judge could judge the "
               "concept); agree = the share of images on which both give the same label, on the worst head.")
HEADLINE_NOTE = ("Sorted by {rank}; rank = 1 + the number of methods whose {rank} interval lies wholly above this "
                 "one's, and '=' marks a rank shared with a method whose interval overlaps (a tie). Intervals: 95% "
                 "over concepts and seeds (hierarchical bootstrap). ↑ higher is better, ↓ lower is better; bold: "
                 "the best method. The last row is the original model, before any erasure.")


def _page(cells: list[dict[str, Any]], failed: list[dict[str, Any]], overall: pd.DataFrame, per_cell: pd.DataFrame,
          coverage: pd.DataFrame, head: Any, original: dict[str, float], attacks: list[str], curves: dict[str, Any],
          drill: dict[str, list[tuple[str, str]]], commit: str, sweeps: Path | None, out: Path,
          judges: pd.DataFrame) -> str:
    from bench.report.failed import failed_table
    from bench.report.leaderboard import sentence
    from bench.report.page import (
        concept_anchor,
        full_table_html,
        headline_html,
        heatmap_html,
        img,
        list_html,
        page,
        provenance_html,
        table_html,
    )

    def h(text: str) -> str:
        return html_text(text)

    rank_col = f"rank ({display(head.rank_key)})"
    held = sorted({str(c["metrics"].get("metrics_registry", "?")) for c in cells})  # what wrote the numbers
    body = ["<h1>Concept-erasure leaderboard</h1>", provenance_html(cells, commit, ", ".join(held)),
            f'<p class="lead">{h(sentence(head))}</p>', headline_html(head),
            f'<p class="note">{h(HEADLINE_NOTE.format(rank=display(head.rank_key)))}</p>']
    body.append('<h2 id="tradeoff">Erasure against retention</h2>')
    if curves:
        body += [f'<p class="note">{h(curves["note"])}</p>', img("figures/curves.png", "trade-off curves"),
                 table_html(curves["frontier_display"]),
                 "<details><summary>Every sweep point</summary>" + table_html(curves["points_display"]) + "</details>"]
    else:
        msg = (f"No trade-off curves: no sweep found in {sweeps} (make curves runs it)." if sweeps is not None
               else "Each method's operating point; make curves draws the whole trade-off.")
        body += [f'<p class="note">{h(msg)}</p>', img("figures/tradeoff.png", "erasure against retention")]
    if attacks:
        body += ['<h2 id="robustness">Robustness</h2>', img("figures/robustness.png", "ASR per method and attack")]
    body += ['<h2 id="cost">Cost</h2>', img("figures/cost.png", "seconds per concept")]
    body += ['<h2 id="per-concept">Per concept</h2>', '<p class="note">Click a concept for its images.</p>',
             heatmap_html(per_cell, head.methods())]
    body += ['<h2 id="full">Every pooled number</h2>', '<p class="note">Click a header to sort; hover it for its '
             'definition. Intervals: 95% over concepts and seeds.</p>',
             full_table_html(overall, original, attacks, rank_col),
             "<h3>Images behind each pooled number</h3>", table_html(coverage)]
    if failed:
        title = f"Failed cells ({len(failed)}): no numbers, counted in no mean"
        body += [f"<h2>{h(title)}</h2>", table_html(failed_table(failed))]
    warn = per_cell[per_cell["warnings"].astype(bool)]
    if len(warn):
        body += ["<h2>Warnings</h2>", table_html(warn[["method", "concept", "warnings"]])]
    agree = agreement_table(cells)
    if len(judges):
        body += ["<h2 id=\"judges\">Judges</h2>", f'<p class="note">{h(JUDGES_NOTE)}</p>', table_html(judges)]
    if len(agree):
        body += ["" if len(judges) else "<h2 id=\"judges\">Judges</h2>", '<p class="note">Agreement of the two judges per head: the share '
                 "of images with the same label, over the images whose numbers read that head (the head of the "
                 "concept an image is judged for, the attributes a composed prompt names; the reject verdict, "
                 f"scene, on every image). A cell is flagged when the judges disagree on more than "
                 f"{DISAGREEMENT_FLAG:.0%} of its images on a head.</p>", table_html(agree),
                 '<p class="note">The same on every image, heads the prompt leaves open included (there the '
                 "model draws whatever it likes and no number reads the head):</p>",
                 table_html(agreement_table(cells, every_image=True))]
    body.append('<h2 id="drill">Per-concept drill-down</h2><p class="note">Rows: the original model, then each '
                "method in the table's order; columns: evaluation seeds. Under each image the judge's verdict: ✓ it "
                "sees the prompt's concept, ✗ it does not, ∅ it rejected the image (nothing to judge). For the "
                "target prompt ✗ is the erasure working; for the other concepts ✓ is the model keeping them.</p>")
    for concept, grids in drill.items():
        links = []
        for c in sorted((c for c in cells if c["spec"]["concept"] == concept), key=lambda c: c["label"]):
            rel = os.path.relpath(os.path.abspath(Path(c["folder"]) / "run_spec.json"), os.path.abspath(out))
            links.append(f'<a href="{h(rel)}">{h(c["label"])}</a>')
        row = per_cell[per_cell["concept"] == concept]
        stats = ", ".join(f"{m}: UA {u:.2f}, H {x:.2f}" for m, u, x in zip(row["method"], row["ua"], row["composite"],
                                                                          strict=True))
        body.append(f'<section class="drill" id="{h(concept_anchor(concept))}"><h3>{h(concept)}</h3>'
                    f'<p class="note">{h(stats)}. Run records: {" · ".join(links)}</p>'
                    + "".join(f"<figure>{img('figures/' + n, cap)}<figcaption>{h(cap)}</figcaption></figure>"
                              for n, cap in grids) + "</section>")
    plain = protocol_text(cells, code=lambda v: f"'{v}'", text=str)
    body += ["<details><summary>Protocol and definitions</summary>", list_html([h(x[2:]) for x in plain if x]),
             "</details>"]
    return page("erasebench leaderboard", body)


def coverage_table(images: pd.Series, methods: pd.Series) -> pd.DataFrame:
    """Per method, how many images each pooled number covers."""
    rows = []
    for method, counts in zip(methods, images, strict=True):
        row = {"method": method}
        row.update({display(k): n for k, n in counts.items()})
        rows.append(row)
    return pd.DataFrame(rows)


