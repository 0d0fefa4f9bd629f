"""Escaping for every string that reaches a report: Markdown, HTML, CSV, file names, plots.

Concept names, prompts and config strings come from user files; in a report they must render as
the text they are (HTML tags, Markdown table pipes, newlines, backticks and spreadsheet formulas
included), never as markup or a broken table.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from bench.core.artefacts import csv_cell
from bench.metrics.formulas import (
    COMPOSITE_FORMULA,
    DISAGREEMENT_FLAG,
    HIERARCHICAL_NOTE,
    ROBUST_FORMULA,
)
from bench.metrics.registry import lookup, metrics

# what changes meaning mid-line or in a table cell; "_" only where it could open or close emphasis
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,80}")


def _one_line(text: str) -> str:
    """Newlines and other control characters become visible escapes (``\\n``), one line kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def md_text(value: Any) -> str:
    """Inline Markdown text (a table cell, a value mid-line): markup characters backslash-escaped,
    HTML as entities, one line."""
    text = _one_line(str(value))
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)
    return text.replace("&", "&amp;").replace("<", "&lt;")


def md_code(value: Any) -> str:
    """An inline code span holding ``value`` literally (a fence longer than any backtick run inside)."""
    text = _one_line(str(value))
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def csv_safe(df: Any) -> Any:
    """A copy of a DataFrame whose text cells are ``csv_cell``-safe."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype).startswith("str"):
            out[col] = out[col].map(csv_cell)
    return out


def file_stem(name: str) -> str:
    """``name`` when it is a plain file-name stem; else a slug plus a hash (no path, markup or control
    characters can reach the file system)."""
    if _SAFE_NAME.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "concept"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def md_link(path: str) -> str:
    """A relative link target with spaces and specials percent-encoded."""
    return quote(path, safe="/._-")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.3g}" if abs(v) >= 100 or (v != 0 and abs(v) < 0.01) else f"{v:.2f}")
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(md_text(fmt(r[c])) for c in cols) + " |")
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
        "and as a miss for retain; reject = share of a cell's images the judge rejected; masked = share of its "
        "images the judge rejected although its own head for the judged concept named it with p >= 0.9",
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
         f"pre-ASR = share of the plain target prompts' images in which the judge sees the concept, before any "
         f"attack (1 - UA); ASR = share of an attack's images (its found prompts, or a probe's own images) in which "
         f"the judge sees the concept; attack images use {_attack_seed_text(p)}, so their CIs resample those seeds; "
         f"an upper bound no text reproduces (soft_prefix) is shown but left out of the mean ASR; {ROBUST_FORMULA}")
        if s.get("attacks") else "",
        "- metrics (bench/metrics/registry.py): " + "; ".join(
            text(f"{m.display}: {m.definition} ({m.direction})") for m in _shown_metrics(cells)),
        "- per-concept CIs: bootstrap 95% over evaluation seeds",
        f"- overall CIs: {HIERARCHICAL_NOTE}",
    ]
