"""``index.html``: the leaderboard page, headline first.

Provenance header -> one sentence -> the headline table (rank, method, <= 7 numbers, intervals on one
line, best in bold, ties marked, the original model as a baseline row) -> trade-off curves -> attacks
-> cost -> per-concept heatmap (linked to the drill-down) -> the full table in column groups (sortable,
sticky method column) -> judges -> per-concept drill-down -> protocol and definitions. Images are
files beside the page (lazy-loaded), so the page itself stays small. Every string from a user file
is escaped; a missing value is "—".
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
import pandas as pd

from bench.metrics.registry import display, lookup
from bench.report.leaderboard import ORIGINAL, Headline, arrow, fmt_value, unit_label
from bench.report.text import file_stem, html_text, md_link

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:12px 20px;max-width:1400px;
color:#1f2328;line-height:1.4}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:16px 0 6px}
.prov{font-size:12px;color:#57606a}.prov code{font-size:12px}
.lead{font-size:16px;margin:10px 0}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #d8dee4;padding:4px 7px;
text-align:right;white-space:nowrap}th{background:#f6f8fa;vertical-align:bottom}
td.m,th.m{text-align:left}
.ci{font-size:10.5px;color:#6e7781;margin-left:3px}
.headline{font-size:14px}.headline td{padding:5px 9px}
tr.base td{color:#57606a;font-style:italic;background:#fbfbfb}
.scroll{overflow-x:auto;max-width:100%}
.full th.m,.full td.m,.headline td.m{position:sticky;left:0;background:#fff;z-index:1}
.full th.m{background:#f6f8fa}tr.base td.m{background:#fbfbfb}
.full th.g{text-align:center;border-left:2px solid #d0d7de}
.full td.s{border-left:2px solid #d0d7de}
th[data-k]{cursor:pointer}
.note{font-size:12px;color:#57606a}
img{max-width:100%;height:auto}
.heat td{text-align:center;min-width:44px}
.drill figure{margin:6px 0}.drill figcaption{font-size:12px;color:#57606a}
details{margin:16px 0}summary{cursor:pointer;font-weight:600}
@media (max-width:700px){body{padding:8px}.headline{font-size:12.5px}.headline td{padding:4px 5px}
.headline .ci{display:block;margin:0}}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th[data-k]').forEach(function(th){
    th.addEventListener('click',function(){
      var k=+th.dataset.k, body=t.tBodies[0], asc=th.dataset.dir!=='asc';
      var rows=[].slice.call(body.rows).filter(function(r){return !r.classList.contains('base');});
      rows.sort(function(a,b){var x=parseFloat(a.cells[k].dataset.v),y=parseFloat(b.cells[k].dataset.v);
        if(isNaN(x))return 1; if(isNaN(y))return -1; return asc?x-y:y-x;});
      th.dataset.dir=asc?'asc':'desc';
      var base=body.querySelector('tr.base');
      rows.forEach(function(r){body.insertBefore(r,base);});
    });
  });
});
"""


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _header(key: str, label: str | None = None) -> str:
    """A column header: display name, unit, arrow; the registry's definition as a tooltip."""
    found = lookup(key)
    if found is None:
        return html_text(label or key)
    metric = found[0]
    unit = unit_label(key)
    text = f"{label or display(key)}{' (' + unit + ')' if unit else ''} {arrow(key)}".strip()
    return f'<span title="{html_text(metric.definition + " (" + metric.direction + ")")}">{html_text(text)}</span>'


def _value_cell(key: str, v: Any, lo: float = float("nan"), hi: float = float("nan"), bold: bool = False,
                sep: bool = False) -> str:
    x = _num(v)
    text = html_text(fmt_value(key, x))
    if bold:
        text = f"<b>{text}</b>"
    ci = f'<span class="ci">[{lo:.2f}, {hi:.2f}]</span>' if lo == lo and hi == hi else ""
    cls = ' class="s"' if sep else ""
    return f'<td{cls} data-v="{x if x == x else ""}">{text}{ci}</td>'


def headline_html(h: Headline) -> str:
    best = {k: h.best(k) for k in h.keys}
    head = "".join(f"<th>{_header(k)}</th>" for k in h.keys)
    rows = []
    for _, r in h.table.iterrows():
        base = r["method"] == ORIGINAL
        tds = [f"<td>{html_text(r['rank'])}</td>", f'<td class="m">{html_text(r["method"])}</td>']
        for k in h.keys:
            v = _num(r[k])
            tds.append(_value_cell(k, v, r[k + "_ci_low"], r[k + "_ci_high"],
                                   bold=not base and best[k] is not None and v == best[k]))
        rows.append(f'<tr{" class=base" if base else ""}>{"".join(tds)}</tr>')
    return (f'<div class="scroll"><table class="headline"><thead><tr><th>rank</th><th class="m">method</th>{head}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


# the full table: registry keys per column group (those a run measured are shown)
GROUPS = (
    ("Erasure", ("ua", "ua_synonyms", "reject_rate", "masked_detections")),
    ("Retention", ("retain_in_domain", "retain_cross_domain", "near_neighbours", "retain_mean",
                   "selective_alignment", "kid_retain")),
    ("Robustness", ("pre_asr", "asr_{attack}", "asr_mean", "composite_robust", "composite_robust_linear")),
    ("Collapse", ("diversity_target",)),
    ("Cost", ("seconds_per_concept", "attack_seconds_{attack}", "peak_memory_mb", "trainable_params",
              "storage_bytes")),
)


def _expand(key: str, attacks: list[str]) -> list[str]:
    return [key.replace("{attack}", a) for a in attacks] if "{attack}" in key else [key]


def full_table_html(overall: pd.DataFrame, original: dict[str, float], attacks: list[str], rank_col: str) -> str:
    """Every pooled number in column groups, sortable by a click on a header, "—" where missing."""
    groups = []
    for name, keys in GROUPS:
        cols = [k for key in keys for k in _expand(key, attacks) if display(k) in overall.columns]
        if cols:
            groups.append((name, cols))
    top = '<tr><th class="m" rowspan="2">method</th><th rowspan="2">rank</th><th rowspan="2">H</th>'
    top += "".join(f'<th class="g" colspan="{len(cols)}">{html_text(name)}</th>' for name, cols in groups) + "</tr>"
    sub, k = [], 3
    order = []
    for _, cols in groups:
        for i, c in enumerate(cols):
            sub.append(f'<th data-k="{k}"{" class=g" if i == 0 else ""}>{_header(c)}</th>')
            order.append((c, i == 0))
            k += 1
    from bench.report.pooling import best_value, interval

    rows = []
    best = {c: best_value(overall[display(c)], c) for c, _ in order}
    for _, r in overall.iterrows():
        m = r["method"]
        tds = [f'<td class="m">{html_text(m)}</td>', f"<td>{html_text(r[rank_col])}</td>",
               _value_cell("composite", r[display("composite")], *interval(overall, m, "composite"))]
        for c, first in order:
            v = _num(r[display(c)])
            tds.append(_value_cell(c, v, *interval(overall, m, c), bold=best[c] is not None and v == best[c],
                                   sep=first))
        rows.append(f"<tr>{''.join(tds)}</tr>")
    base = [f'<td class="m">{html_text(ORIGINAL)}</td>', "<td></td>",
            _value_cell("composite", original.get("composite"))]
    base += [_value_cell(c, original.get(c), sep=first) for c, first in order]
    rows.append(f'<tr class="base">{"".join(base)}</tr>')
    return (f'<div class="scroll"><table class="full sortable"><thead>{top}<tr>{"".join(sub)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def heatmap_html(per_cell: pd.DataFrame, methods: list[str]) -> str:
    """H per method x concept as a coloured table; each concept links to its drill-down section."""
    concepts = sorted(per_cell["concept"].unique())
    head = "".join(f'<th><a href="#{concept_anchor(c)}">{html_text(c)}</a></th>' for c in concepts)
    rows = []
    for m in methods:
        tds = []
        for c in concepts:
            v = per_cell.loc[(per_cell["method"] == m) & (per_cell["concept"] == c), "composite"]
            x = float(v.iloc[0]) if len(v) else float("nan")
            if x != x:
                tds.append("<td>—</td>")
                continue
            x = min(max(x, 0.0), 1.0)
            rb, g = int(255 - 160 * x), int(255 - 75 * x)  # white (H 0) to green (H 1)
            tds.append(f'<td style="background:rgb({rb},{g},{rb})">{x:.2f}</td>')
        rows.append(f'<tr><td class="m">{html_text(m)}</td>{"".join(tds)}</tr>')
    return (f'<div class="scroll"><table class="heat"><thead><tr><th class="m">H ↑ per concept</th>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')


def concept_anchor(concept: str) -> str:
    return "concept-" + file_stem(concept).replace(" ", "-")


def img(path: str, alt: str) -> str:
    return f'<img loading="lazy" alt="{html_text(alt)}" src="{html_text(md_link(path))}">'


def provenance_html(cells: list[dict[str, Any]], commit: str, registry_version: str) -> str:
    s, env = cells[0]["spec"], cells[0]["environment"]
    made = sorted({c["environment"].get("git_commit", "")[:12] for c in cells} - {""})
    hw = f"{env.get('device', '?')} ({env.get('gpu') or env.get('platform', '')}, {env.get('cpu_threads')} threads)"
    model = s["model"].rstrip("/").split("/")
    name = "/".join(model[-2:]) if len(model) > 1 else model[-1]
    desc = _model_description(s["model"])
    items = [
        f"project commit <code>{html_text(commit)}</code>"
        + (f" (cells made at {', '.join(f'<code>{html_text(x)}</code>' for x in made)})" if made else ""),
        f"built {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d')} (UTC)",
        f"hardware: {html_text(hw)}",
        f"model <code>{html_text(name)}</code> (sha256 {html_text(s['model_sha256'][:12])}){': ' + html_text(desc) if desc else ''}",
        f"concept set <code>{html_text(s['concept_set'])}</code> (sha256 {html_text(s['concept_set_sha256'][:12])})",
        f"judge <code>{html_text(s['judge'])}</code>"
        + (f", second judge <code>{html_text(s['second_judge'])}</code>" if s.get("second_judge") else ""),
        f"metrics version {html_text(s['metrics_version'])}, metric registry {html_text(registry_version)}",
        "reproduce: <code>make leaderboard</code> (every leaderboard method; <code>make bench</code> the founding "
        "three; curves: <code>make curves</code>)",
    ]
    return '<div class="prov">' + " · ".join(items) + "</div>"


def _model_description(model: str) -> str:
    """The first line of the model's README (its parent folder's, for the committed world), if any."""
    from pathlib import Path

    for readme in (Path(model) / "README.md", Path(model).parent / "README.md"):
        if readme.is_file():
            for line in readme.read_text(errors="replace").splitlines():
                line = line.strip().lstrip("#").strip()
                if line:
                    return line[:160]
    return ""


def list_html(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{x}</li>" for x in items) + "</ul>"


def table_html(df: pd.DataFrame) -> str:
    """A plain table; numbers as the report formats them (``report.fmt``), missing values as "—",
    every cell escaped."""
    from bench.report.text import fmt

    head = "".join(f"<th>{html_text(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        tds = []
        for c in df.columns:
            v = r[c]
            if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and v.lower() == "nan"):
                text = "—"
            elif isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)):
                text = fmt(v)
            else:
                text = str(v)
            tds.append(f"<td>{html_text(text)}</td>")
        rows.append(f"<tr>{''.join(tds)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html_text(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{SORT_JS}</script></body></html>\n")
