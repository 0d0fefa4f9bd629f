"""Collects the perf ratios and prints them side by side at the end of the run."""

from __future__ import annotations

RATIOS: list[tuple[str, float, float, float, str]] = []  # (what, ours s, bare s, ratio, target)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RATIOS:
        return
    tr = terminalreporter
    tr.section("erasebench perf ratios (min over rounds, 2 CPU threads unless stated)")
    tr.write_line(f"{'measurement':<52}{'ours':>10}{'bare':>10}{'ratio':>8}  target")
    for what, ours, bare, ratio, target in RATIOS:
        tr.write_line(f"{what:<52}{ours:>10.3f}{bare:>10.3f}{ratio:>8.2f}  {target}")
