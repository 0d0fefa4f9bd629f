"""Failed cells in the report: shown with their reason (e.g. "diverged"), counted in no mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.records import cell_status
from bench.report.text import html_text

FAILED_COLUMNS = ["method", "concept", "status", "stage", "reason"]


def split_failed(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(measured cells, failed cells)."""
    ok = [c for c in cells if cell_status(c["metrics"]) == "ok"]
    return ok, [c for c in cells if cell_status(c["metrics"]) != "ok"]


def failed_table(failed: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"method": c["label"], "concept": c["spec"]["concept"], "status": cell_status(c["metrics"]),
             "stage": c["metrics"].get("stage", ""), "reason": c["metrics"].get("reason", "")} for c in failed]
    return pd.DataFrame(rows, columns=FAILED_COLUMNS).sort_values(["method", "concept"]).reset_index(drop=True)


def failed_section(failed: list[dict[str, Any]]) -> tuple[list[str], str]:
    """Markdown lines and HTML for the failed cells (nothing when every cell was measured)."""
    if not failed:
        return [], ""
    from bench.report.text import markdown_table

    table = failed_table(failed)
    title = f"Failed cells ({len(failed)}): no numbers, counted in no mean"
    md = [f"## {title}", "", markdown_table(table), ""]
    return md, f"<h2>{html_text(title)}</h2>{table.to_html(index=False)}"


def failed_only_report(out: Path, failed: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a run in which no cell could be measured: the failures, nothing else."""
    from bench.report.text import csv_safe, protocol_text

    md_failed, html_failed = failed_section(failed)
    md = ["# Leaderboard", "", "Built by `bench.report` from the run folders; do not edit by hand.", "",
          *[x for x in protocol_text(failed) if x], "", "No cell produced numbers.", "", *md_failed]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n")
    csv_safe(failed_table(failed)).to_csv(out / "leaderboard.csv", index=False)
    plain = protocol_text(failed, code=lambda v: f"`{v}`", text=str)
    items = "".join(f"<li>{html_text(x[2:])}</li>" for x in plain if x)
    (out / "index.html").write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>erasebench leaderboard</title></head><body><h1>Concept-erasure leaderboard</h1><h2>Protocol</h2>
<ul>{items}</ul><p>No cell produced numbers.</p>{html_failed}</body></html>
""")
    from bench.report.text import markdown_table

    return {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "index.html",
            "summary": markdown_table(failed_table(failed)) + "\nNo cell produced numbers."}
