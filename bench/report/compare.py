"""How a run's leaderboard compares with another one (``make bench`` against the committed ``reports/``).

Both are read from their ``leaderboard.csv`` (one row per cell and metric). A cell is the same in both
when its method, variant, config hash and concept are: then every number of it should be the same, to
``REL_TOL``, except the machine's measurements (wall time and memory: metrics with unit ``s`` or ``MB``),
which are listed apart and never compared. What differs is named row by row; cells only one side has are
counted by method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.core.errors import InputError
from bench.metrics.registry import lookup

CELL = ("method", "variant", "config_hash", "concept")
ROW = (*CELL, "metric", "judge", "metrics_version")
NUMBERS = ("value", "ci_low", "ci_high", "n")
MEASURED_UNITS = ("s", "MB")  # this machine's wall time and memory: never the same twice
REL_TOL, ABS_TOL = 1e-6, 1e-6  # float32 noise of another machine or thread count (KID moved ~1e-6 between two)
SHOWN = 10  # differing rows named one by one


@dataclass
class Comparison:
    """The outcome: shared cells, the rows that differ among them, cells only one side has."""

    ours: Path
    theirs: Path
    shared_cells: int = 0
    compared_numbers: int = 0
    differing: list[str] = field(default_factory=list)  # one line per differing row
    only_ours: dict[str, int] = field(default_factory=dict)  # method -> cells the other side lacks
    only_theirs: dict[str, int] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return self.shared_cells > 0 and not self.differing

    def lines(self, shown: int | None = SHOWN) -> list[str]:
        """What a terminal prints: the first ``shown`` differing rows (None: every one, as ``to_markdown``)."""
        out = [f"compared with {self.theirs}: {self.shared_cells} cell(s) in both"]
        if self.shared_cells:
            if self.differing:
                out.append(f"  {len(self.differing)} row(s) differ (this run vs committed):")
                out += [f"    {line}" for line in self.differing[:shown]]
                if shown is not None and len(self.differing) > shown:
                    out.append(f"    ... and {len(self.differing) - shown} more (every one in comparison.md)")
            else:
                out.append(f"  the same numbers: all {self.compared_numbers:,} of them (wall time and memory "
                           "are this machine's and not compared)")
        if self.only_ours:
            out.append("  cells of this run that the committed leaderboard lacks (another method, config or "
                       "concept): " + ", ".join(f"{m} {n}" for m, n in sorted(self.only_ours.items())))
        if self.only_theirs:
            out.append("  the committed leaderboard also has: "
                       + ", ".join(f"{m} ({n} cells)" for m, n in sorted(self.only_theirs.items())))
        return out

    def to_markdown(self) -> str:
        return "# This run against the committed leaderboard\n\n" + "\n".join(
            f"- {line.strip()}" if not line.startswith("    ") else f"  - `{line.strip()}`" for line in self.lines(shown=None)
        ) + "\n"


def _read(path: Path) -> pd.DataFrame:
    csv = path / "leaderboard.csv" if path.is_dir() else path
    if not csv.is_file():
        raise InputError(f"no leaderboard.csv at {path} to compare with")
    frame = pd.read_csv(csv, keep_default_na=False, dtype={k: str for k in ROW})
    missing = [c for c in (*ROW, *NUMBERS) if c not in frame.columns]
    if missing:
        raise InputError(f"{csv} is not a leaderboard table (no column {missing[0]!r})")
    return frame


def _number(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _same(a: object, b: object) -> bool:
    x, y = _number(a), _number(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _measured(metric: str) -> bool:
    found = lookup(metric)
    return found is not None and found[0].unit in MEASURED_UNITS


def _cells(frame: pd.DataFrame) -> set[tuple[str, ...]]:
    return set(map(tuple, frame[list(CELL)].drop_duplicates().itertuples(index=False)))


def compare_leaderboards(ours: Path, theirs: Path) -> Comparison:
    """Compare the leaderboard in ``ours`` (a report folder or its CSV) with the one in ``theirs``."""
    a, b = _read(Path(ours)), _read(Path(theirs))
    result = Comparison(Path(ours), Path(theirs))
    cells_a, cells_b = _cells(a), _cells(b)
    shared = cells_a & cells_b
    result.shared_cells = len(shared)
    for cells, counts in ((cells_a - cells_b, result.only_ours), (cells_b - cells_a, result.only_theirs)):
        for cell in cells:
            name = cell[0] + (f"@{cell[1]}" if cell[1] else "")
            counts[name] = counts.get(name, 0) + 1
    if not shared:
        return result
    in_shared = [frame[list(CELL)].apply(tuple, axis=1).isin(shared) for frame in (a, b)]
    rows = a[in_shared[0]].merge(b[in_shared[1]], on=list(ROW), how="outer", suffixes=("", "_theirs"),
                                 indicator="side").sort_values(list(ROW))
    for r in rows.to_dict("records"):
        if _measured(r["metric"]):
            continue
        label = f"{r['method']}{'@' + r['variant'] if r['variant'] else ''} {r['concept']} {r['metric']}"
        if r["side"] != "both":
            result.differing.append(f"{label}: only {'this run' if r['side'] == 'left_only' else 'committed'} has it")
            continue
        result.compared_numbers += len(NUMBERS)
        moved = [c for c in NUMBERS if not _same(r[c], r[c + "_theirs"])]
        if moved:
            result.differing.append(f"{label}: " + ", ".join(f"{c} {r[c]} vs {r[c + '_theirs']}" for c in moved))
    return result
