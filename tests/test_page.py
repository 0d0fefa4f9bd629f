"""The leaderboard page as a reader's browser shows it: headless Chromium at 1440 and 390 px."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.report.build import build_report
from tests.fixtures.make_runs import PAGE_RUNS
from tests.fixtures.make_runs import make as make_page_runs

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_PAGE = 500 * 1024

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  imgs.forEach(function (i) { i.loading = 'eager'; });
  Promise.all(imgs.map(function (i) {
    return i.complete ? null : new Promise(function (r) { i.onload = i.onerror = r; });
  })).then(function () {
    var t = document.querySelector('table.headline');
    var out = {vw: document.documentElement.clientWidth, doc: document.documentElement.scrollWidth,
               table: t.scrollWidth, wrap: t.parentElement.clientWidth,
               broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                           .map(function (i) { return i.getAttribute('src'); }),
               images: imgs.length, text: document.body.innerText};
    var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  });
});
</script></body>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a real (small) run, read from the committed fixture run folder (``tests/fixtures``):
    two methods, one concept, two seeds, one attack."""
    tmp = tmp_path_factory.mktemp("page")
    build_report(PAGE_RUNS, tmp / "report")
    return tmp / "report"


# wall-clock and memory readings differ between any two runs; every other number must not
VOLATILE = ("seconds", "memory")


def _numbers(folder: Path) -> tuple[dict, list[str]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    kept = {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}
    return kept, (folder / "per_image.jsonl").read_text().splitlines()


def test_fixture_run_is_complete_and_verified():
    from bench.core.records import verify_cells

    checked = verify_cells(PAGE_RUNS)
    assert len(checked) == 2 and all(problems == [] for problems in checked.values())


@pytest.mark.slow  # runs the fixture's grid again (make test-slow)
def test_fixture_run_is_what_the_code_makes_today(tmp_path):
    """The committed cells are what ``python -m tests.fixtures.make_runs`` makes now, number for number (rerun
    it after a change to what a cell records)."""
    made = make_page_runs(tmp_path / "runs")
    assert sorted(p.name for p in made) == sorted(p.name for p in (PAGE_RUNS / "cells").iterdir())
    for cell in made:
        assert _numbers(cell) == _numbers(PAGE_RUNS / "cells" / cell.name), cell.name


def _probe(page: Path, width: int, tmp: Path) -> dict:
    probed = page.parent / f"probe_{width}.html"
    probed.write_text(page.read_text().replace("</body>", PROBE, 1))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp / f'chromium-{width}'}", f"--window-size={width},900",
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, flags=re.S)
    assert m, f"no probe output from chromium: {out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def test_page_is_light_and_its_files_exist(report):
    page = report / "index.html"
    assert page.stat().st_size < MAX_PAGE
    text = page.read_text()
    assert "data:image" not in text  # images are files beside the page
    for src in re.findall(r'<img[^>]* src="([^"]+)"', text):
        assert (report / html.unescape(src)).is_file(), src
    assert '<meta name="viewport"' in text


def test_committed_report_is_light():
    page = ROOT / "reports" / "index.html"
    assert page.stat().st_size < MAX_PAGE, page.stat().st_size
    text = page.read_text()
    for src in re.findall(r'<img[^>]* src="([^"]+)"', text):
        assert (page.parent / html.unescape(src)).is_file(), src


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium; "
                                             "where it cannot be installed this browser check is skipped)")
@pytest.mark.parametrize("width", [1440, 390])
def test_page_in_a_browser(report, width, tmp_path):
    got = _probe(report / "index.html", width, tmp_path)
    assert got["broken"] == [] and got["images"] >= 3
    if width == 1440:  # the headline fits: no horizontal scroll, neither in its box nor on the page
        assert got["table"] <= got["wrap"] and got["doc"] <= got["vw"], got
    text = got["text"]
    assert "`" not in text and not re.search(r"\bnan\b", text, flags=re.I)
    assert "original model (no erasure)" in text and "Best by" in text
