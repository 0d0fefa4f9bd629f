"""The leaderboard, built only from run folders (never from a run's memory).

``build_report(runs, out)`` scans complete cells and writes ``index.html`` (headline first, figures as
files under ``figures/``), ``leaderboard.md``, ``leaderboard.csv`` (tidy) and ``overall.csv`` to ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.io import ensure_writable_dir
from bench.metrics.formulas import DISAGREEMENT_FLAG
from bench.metrics.registry import display
from bench.report.cells import cell_table, load_cells
from bench.report.labels import protocol_banner
from bench.report.pooling import agreement_table, judges_table, overall_table
from bench.report.text import csv_safe, file_stem, html_text, markdown_table, md_text, protocol_text

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
    prompts = _attack_prompts(cells, out) if attacks else {}
    # 4. the Markdown summary and the page
    banner = protocol_banner(cells)
    md = ["# Leaderboard" if banner is None else "# Run report (not the leaderboard)", "",
          *([f"**{md_text(banner)}**", ""] if banner else []),
          "Built by `bench.report` from the run folders; do not edit by hand. "
          "The full page: [index.html](index.html).", "", md_text(sentence(head)), "",
          *headline_markdown(head), "", md_text(HEADLINE_NOTE.format(rank=display(head.rank_key))), "",
          "Files: [overall.csv](overall.csv) (these numbers), [leaderboard.csv](leaderboard.csv) (every cell's "
          "numbers, one row per metric)" + (", [curves.csv](curves.csv), [frontier.csv](frontier.csv)"
                                            if curves else "") + ", figures in [figures/](figures/)."]
    if prompts:
        md += ["", "## Adversarial prompts", "", md_text(PROMPTS_NOTE), "",
               *[f"- [{md_text(m)}](attacks/{f})" for m, f in prompts.items()]]
    judges = judges_table(cells)
    if len(judges):
        md += ["", "## Both judges", "", md_text(JUDGES_NOTE), "", markdown_table(judges)]
    paths["markdown"].write_text("\n".join(md) + "\n")
    paths["html"].write_text(_page(cells, failed, overall, per_cell, coverage, head, original, attacks, curves,
                                   drill, commit, sweeps, out, judges, prompts))
    # what a terminal prints at the end of a run: the failures, then the headline, as plain text
    from bench.report.failed import failed_table

    failures = [markdown_table(failed_table(failed)), ""] if failed else []
    paths["summary"] = "\n".join([*failures, *([banner] if banner else []), sentence(head), "",
                                  *headline_markdown(head)]).replace("\\", "")
    return paths


PROMPTS_NOTE = ("What the attacks found against each method, one row per prompt: concept, attack, its text and "
                "token ids, whether the text replays it (python -m bench run --attacks replay:FILE), and its hits on "
                "the attack seeds.")


def _attack_prompts(cells: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """Each method's found prompts as ``attacks/<method>.csv``: method -> file name."""
    from bench.report.artefacts import cell_rows, write_per_method

    rows = cell_rows(cells)
    return write_per_method(rows, out / "attacks") if rows else {}


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
          judges: pd.DataFrame, prompts: dict[str, str] | None = None) -> str:
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
    banner = protocol_banner(cells)
    body = ["<h1>Concept-erasure leaderboard</h1>" if banner is None else
            f'<h1>Concept-erasure run (not the leaderboard)</h1><p class="lead"><strong>{h(banner)}</strong></p>',
            provenance_html(cells, commit, ", ".join(held)),
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
        if prompts:
            links = ", ".join(f'<a href="attacks/{html_text(f)}">{h(m)}</a>' for m, f in prompts.items())
            body += [f'<p class="note">{h(PROMPTS_NOTE)} Per method: {links}.</p>']
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
        accepted = agreement_table(cells, view="both_accept")
        if len(accepted):
            body += ['<p class="note">The attribute heads over the scored images that neither judge rejects: '
                     "whether the judges read a scene alike once both see one:</p>", table_html(accepted)]
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


