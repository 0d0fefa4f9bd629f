"""Nothing silently scores: bad numbers, hostile files and broken records are clear errors or
recorded failures, never leaderboard rows. Unit tests on files and on a tiny-pipeline grid."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import bench.core.records
import bench.run.grid
from bench.api.judge import Judge, scene_labels
from bench.api.method import build_method
from bench.cli.main import main
from bench.core.concepts import Concept
from bench.core.errors import ConfigError, InputError, NonFiniteError, RecordError, RunLockedError
from bench.core.images import load_images, read_image
from bench.core.lock import LOCK_NAME, acquire, release
from bench.core.protocol import EvalProtocol, SamplerSpec
from bench.core.records import cell_status, is_complete, verify_cells
from bench.model.guards import check_finite, image_warnings
from bench.report.build import build_report
from bench.run.grid import run_bench
from bench.run.plan import Bench, Track
from tests.conftest import state

# -- 1. sampler and config values: non-finite or out of range is refused before work --------------


@pytest.mark.parametrize(("kw", "match"), [
    ({"guidance": float("nan")}, "sampler guidance must be a finite number, got nan"),
    ({"guidance": float("inf")}, "sampler guidance must be a finite number, got inf"),
    ({"guidance": -1.0}, r"sampler guidance must be in \[0, 100\], got -1.0"),
    ({"guidance": 1e9}, r"sampler guidance must be in \[0, 100\]"),
    ({"eta": float("nan")}, "sampler eta must be a finite number"),
    ({"eta": 2.0}, r"sampler eta must be in \[0, 1\]"),
    ({"steps": 0}, r"sampler steps must be in \[1, 1000\], got 0"),
    ({"steps": 10**6}, r"sampler steps must be in \[1, 1000\]"),
    ({"steps": 2.5}, "sampler steps must be an integer, got 2.5"),
    ({"steps": True}, "sampler steps must be an integer, got True"),
    ({"height": 30}, "sampler height must be a multiple of 8, got 30"),
    ({"width": -64}, r"sampler width must be in \[8, 4096\], got -64"),
    ({"width": 10**6}, r"sampler width must be in \[8, 4096\]"),
])
def test_sampler_values_are_finite_and_in_range(kw, match):
    with pytest.raises(ConfigError, match=match):
        SamplerSpec(**kw)


def test_config_and_seed_values_are_finite():
    with pytest.raises(ConfigError, match="FuchiConfig.lr must be a finite number, got inf"):
        build_method("fuchi", {"lr": float("inf")})
    with pytest.raises(ConfigError, match="FuchiConfig.lr must be a finite number, got nan"):
        build_method("fuchi", {"lr": float("nan")})
    with pytest.raises(ConfigError, match="evaluation seed must be in"):
        EvalProtocol(seeds=(0, 2**64))


def test_cli_refuses_nan_guidance_before_work(tmp_path):
    res = subprocess.run([sys.executable, "-m", "bench", "run", "--methods", "fuchi", "--concepts", "star",
                          "--guidance", "nan", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: sampler guidance must be a finite number, got nan"
    assert not (tmp_path / "x").exists()


# -- 2. one guarded image loader --------------------------------------------------------------------


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [12_000, 20_000])  # over our limit; over PIL's own bomb error
def test_decompression_bomb_is_one_clear_error(tmp_path, side):
    path = _png_declaring(tmp_path / "bomb.png", side, side)
    with pytest.raises(InputError, match=r"cannot read image .*bomb.png: .*(megapixel|decompression bomb)"):
        read_image(path)
    with pytest.raises(InputError, match="bomb.png"):
        load_images(tmp_path)


def test_odd_modes_orientation_and_animation(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "a_grey.png")
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "b_rgba.png")
    Image.new("P", (4, 4), 3).save(tmp_path / "c_palette.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "d_cmyk.jpg")
    Image.fromarray(np.array([[65535, 32896], [0, 257]], dtype=np.uint16)).save(tmp_path / "e_16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (8, 2), (255, 0, 0)).save(tmp_path / "f_rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "g_animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    notes: list[str] = []
    images = load_images(tmp_path, notes)
    assert [im.mode for im in images] == ["RGB"] * 7
    assert np.asarray(images[0])[0, 0].tolist() == [200, 200, 200]
    assert np.asarray(images[4])[:, :, 0].tolist() == [[255, 128], [0, 1]]  # 16-bit scaled, not clipped
    assert images[5].size == (2, 8)  # EXIF orientation applied
    assert np.asarray(images[6])[0, 0].tolist() == [255, 0, 0]  # the first frame
    assert len(notes) == 1 and "g_animated.webp: animated image with 3 frames; only the first frame" in notes[0]


def test_truncated_image_is_one_clear_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:300])
    with pytest.raises(InputError, match="cannot read image .*cut.png"):
        read_image(tmp_path / "cut.png")


# -- 3. prompt length ---------------------------------------------------------------------------------


def test_long_concept_name_is_refused_by_erase(tmp_path, tiny_model_dir, concept_images):
    from bench.run.erase import erase_to_folder

    name = "golf ball " * 300
    with pytest.raises(InputError, match=r"concept 'golf ball .* prompt .* is \d+ tokens, over the text "
                                         r"encoder's limit of 77 .*--truncate-prompts"):
        erase_to_folder("fuchi", str(tiny_model_dir), name, concept_images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    record = erase_to_folder("fuchi", str(tiny_model_dir), name, concept_images, tmp_path / "out",
                             overrides={"epochs": 1}, truncate_prompts=True)
    cuts = record["prompt_truncations"]
    assert cuts and all(c["kept"] == 77 and c["tokens"] > 77 for c in cuts)
    assert json.loads((tmp_path / "out" / "erase.json").read_text())["prompt_truncations"] == cuts


def test_long_synonym_and_attack_prompt_are_refused_by_run(tmp_path):
    import yaml

    world = yaml.safe_load(Path(Track().concept_set).read_text())
    circle = next(c for c in world["concepts"] if c["name"] == "circle")
    circle["synonyms"] = ["disc " * 100]
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(world))
    bench = Bench(track=replace(Track(), concept_set=str(path)), methods=["fuchi"], concepts=["circle"],
                  protocol=EvalProtocol(seeds=(0,)))
    with pytest.raises(InputError, match="synonym prompt of concept 'circle' 'a picture of a disc disc"):
        run_bench(bench, tmp_path / "out", progress=False)
    circle["synonyms"] = ["disc"]
    circle["paraphrases"] = ["a circle " * 60]
    path.write_text(yaml.safe_dump(world))
    with pytest.raises(InputError, match="paraphrase attack prompt of concept 'circle'"):
        run_bench(replace(bench, attacks=("paraphrase",)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# -- 4. a run's report goes beside it, not over the committed leaderboard -----------------------------


def test_run_report_defaults_to_the_run_folder(tmp_path, monkeypatch):
    import bench.report.build
    import bench.run.regress
    import bench.run.sweep
    import bench.run.tune  # noqa: F401  (imported now, so none of them binds the stand-ins below for good)

    written = []
    monkeypatch.setattr(bench.run.grid, "run_bench", lambda b, out, progress=True, executor=None: [])
    monkeypatch.setattr(bench.report.build, "build_report",
                        lambda runs, out, only=None, sweeps=None: written.append(Path(out)) or {"html": Path(out) / "index.html"})
    assert main(["run", "--methods", "fuchi", "--concepts", "star", "--out", str(tmp_path / "x")]) == 0
    assert main(["run", "--methods", "fuchi", "--out", str(tmp_path / "y"), "--report", str(tmp_path / "r")]) == 0
    assert main(["report", "--runs", str(tmp_path / "x")]) == 0
    assert written == [tmp_path / "x" / "report", tmp_path / "r", tmp_path / "x" / "report"]


# -- non-finite guards at each stage -------------------------------------------------------------------


def test_diverging_erase_is_caught_and_restores_the_model(tiny_pipe, concept_images):
    before = state(tiny_pipe)
    with pytest.raises(NonFiniteError, match=r"non-finite erase loss \(nan at step \d+\)"):
        build_method("fuchi", {"lr": 1e30, "epochs": 1}).erase(tiny_pipe, Concept("cat"),
                                                               load_images(concept_images), seed=0)
    after = state(tiny_pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("module", "stage"), [("unet.conv_out", "latents"), ("vae.post_quant_conv", "decoded images")])
def test_generation_refuses_non_finite(tiny_pipe, module, stage):
    from bench.model.generation import generate

    with torch.no_grad():
        comp, name = module.split(".", 1)
        getattr(tiny_pipe, comp).get_submodule(name).weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=f"non-finite {stage}"):
        generate(tiny_pipe, ["a cat"], [0], SamplerSpec(steps=2))


def test_check_finite_names_the_stage():
    check_finite({"a": torch.ones(3), "b": [1.0, 2.0]}, "judge features")
    with pytest.raises(NonFiniteError, match=r"non-finite judge features \(1 of 3 values, edited\)"):
        check_finite({"original": torch.ones(3), "edited": torch.tensor([1.0, math.inf, 0.0])}, "judge features")
    err = NonFiniteError("latents", "denoising step 2").named("fuchi", "cat")
    assert str(err) == "method fuchi, concept 'cat': non-finite latents (denoising step 2)"


def test_degenerate_images_are_flagged():
    from bench.core.plan import ImageRow

    rows = [ImageRow("target", None, p, s) for p in ("a cat", "a kitty") for s in (0, 1)]
    rows.append(ImageRow("in_domain", None, "a dog", 0))
    rng = torch.Generator().manual_seed(0)
    varied = torch.randint(0, 255, (5, 3, 8, 8), generator=rng, dtype=torch.uint8)
    assert image_warnings(rows, {"edited": varied, "original": varied}) == []
    flat = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    flat[:, 0] = 7
    same = varied.clone()
    same[1], same[3] = same[0], same[2]
    w = image_warnings(rows, {"edited": flat, "original": same})
    assert w[0] == "constant images: all 5 edited images are one flat colour"
    assert "identical across seeds: every edited target prompt" in w[1]
    assert "identical across seeds: every original target prompt gives the same image for all 2 seeds" in w[2]


# -- a grid on the tiny pipeline: divergence, hostile names, records, lock, failed writes ---------------

HOSTILE = "<b>cat</b> | `x` $y$ *z*\nsecond line"
HOSTILE_SET = {"name": "hostile <i>set</i>", "version": "1|2", "concepts": [
    {"name": HOSTILE, "templates": ["a photo of a {}", "a {}"], "synonyms": ["=kit|ty"],
     "retain_in_domain": ["dog [link](http://x)"], "retain_cross_domain": ["<script>alert(1)</script>"]},
    {"name": "dog [link](http://x)"},
    {"name": "<script>alert(1)</script>", "type": "colour"},
]}


class FakeJudge(Judge):
    """Brightness as 'detection', pooled pixels as features: cheap and deterministic."""

    id, version = "fake-judge", "1"

    def detect(self, images, concept):
        return (images.mean(dim=(1, 2, 3)) > 0.5) & ~self.reject(images)

    def reject(self, images):
        return images.mean(dim=(1, 2, 3)) < 0.02  # a black frame: nothing to judge

    def labels(self, images):
        rejected = self.reject(images)
        return {"scene": scene_labels(rejected),
                "bright": ["none" if r else str(bool(b)) for r, b in zip(rejected.tolist(),
                                                                       (images.mean(dim=(1, 2, 3)) > 0.5).tolist(),
                                                                       strict=True)]}

    def features(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def _grid_bench(tiny_model_dir, root: Path, **kw) -> Bench:
    import yaml

    path = root / "hostile.yaml"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(HOSTILE_SET))
    track = Track(model=str(tiny_model_dir), concept_set=str(path), judge="fake", second_judge=None,
                  images="generate",
                  sampler=SamplerSpec(steps=1, guidance=5.0), device="cpu")
    args = {"track": track, "methods": ["fuchi", "full_finetune"], "concepts": [HOSTILE],
            "protocol": EvalProtocol(seeds=(0, 1), few_shot_images=2),
            "method_overrides": {"fuchi": {"epochs": 1}, "full_finetune": {"epochs": 1, "lr": 1e30}}}
    args.update(kw)
    return Bench(**args)


@pytest.fixture
def fake_judge(monkeypatch):
    monkeypatch.setattr(bench.run.grid, "load_judge", lambda track, cs, spec=None: FakeJudge())


@pytest.fixture(scope="module")
def grid(tiny_model_dir, tmp_path_factory):
    """One run of the grid (a healthy and a diverging method on a hostile concept), shared read-only."""
    root = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.run.grid, "load_judge", lambda track, cs, spec=None: FakeJudge())
        out = root / "runs"
        return out, run_bench(_grid_bench(tiny_model_dir, root), out, progress=False)


def test_diverging_method_is_a_failed_cell_never_a_score(grid, tmp_path, tiny_model_dir):
    out, cells = grid
    metrics = {json.loads((c / "run_spec.json").read_text())["method"]: json.loads((c / "metrics.json").read_text())
               for c in cells}
    assert cell_status(metrics["fuchi"]) == "ok" and 0 <= metrics["fuchi"]["ua"]["value"] <= 1
    bad = metrics["full_finetune"]  # lr 1e30: weights blow up to Inf/NaN within its first steps
    assert bad["status"] == "diverged" and "ua" not in bad and "composite" not in bad
    assert bad["stage"] in ("erase loss", "edited weights", "latents", "decoded images")
    assert bad["reason"].startswith(f"method full_finetune, concept {HOSTILE!r}: non-finite {bad['stage']} (")
    before = {c: (c / "metrics.json").stat().st_mtime_ns for c in cells}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.run.grid, "load_judge", lambda track, cs, spec=None: FakeJudge())
        again = run_bench(_grid_bench(tiny_model_dir, tmp_path), out, progress=False)
    assert again == cells  # the diverged cell is a record: skipped on rerun, not redone
    assert {c: (c / "metrics.json").stat().st_mtime_ns for c in cells} == before
    paths = build_report(out, tmp_path / "report")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "fuchi" in md and "full_finetune" not in md  # the headline: measured methods only
    failed = page.split("Failed cells (1): no numbers, counted in no mean")[1].split("<h2")[0]
    assert "full_finetune+" in failed and "<td>diverged</td>" in failed and f"<td>{bad['stage']}</td>" in failed
    assert "full_finetune" not in pd.read_csv(paths["csv"])["method"].str.cat()


def test_hostile_names_render_as_text(grid, tmp_path):
    out, _ = grid
    paths = build_report(out, tmp_path / "report")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    body = page.split("<body>", 1)[1]
    for raw in ("<b>cat", "<script>alert", "<i>set"):
        assert raw not in md and raw not in body, raw
    assert "](http" not in md  # a name is never a link
    assert "&lt;b&gt;cat&lt;/b&gt; | `x` $y$ *z*" in page and "hostile &lt;i&gt;set&lt;/i&gt;@1|2" in page
    assert "\nsecond line" not in md  # a newline would end a table row
    for table in re.findall(r"(?:^\|.*\|$\n?)+", md, flags=re.M):  # every Markdown table keeps its shape
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table.strip().splitlines()}
        assert len(widths) == 1, table
    figures = [p.name for p in (tmp_path / "report" / "figures").iterdir()]
    assert all(re.fullmatch(r"[A-Za-z0-9 _.-]+\.(png|webp)", f) for f in figures)
    csv = pd.read_csv(paths["csv"])
    assert set(csv["concept"]) == {HOSTILE}  # quoted, round-trips exactly


def test_degenerate_cell_gets_a_warning_column(grid, tmp_path):
    from bench.core.records import RunSpec, write_cell

    out, cells = grid
    ok = next(c for c in cells if cell_status(json.loads((c / "metrics.json").read_text())) == "ok")
    spec = json.loads((ok / "run_spec.json").read_text())
    spec.pop("hash")
    metrics = json.loads((ok / "metrics.json").read_text())
    metrics["image_warnings"] = ["constant images: all 10 edited images are one flat colour"]
    rows = [json.loads(line) for line in (ok / "per_image.jsonl").read_text().splitlines()]
    write_cell(tmp_path / "flagged", RunSpec.from_dict(spec), metrics, rows,
               json.loads((ok / "timing.json").read_text()), json.loads((ok / "environment.json").read_text()),
               extra_files={"samples.safetensors": (ok / "samples.safetensors").read_bytes()})
    page = build_report(tmp_path / "flagged", tmp_path / "report")["html"].read_text()
    warnings = page.split("<h2>Warnings</h2>")[1].split("<h2")[0]
    assert "constant images: all 10 edited images are one flat colour" in warnings


class BlindSecondJudge(FakeJudge):
    """A second opinion that labels every image but cannot judge the concepts (an ImageNet judge, a style)."""

    id = "blind-judge"

    def detect(self, images, concept):
        raise ConfigError(f"concept {concept.name!r}: this judge cannot judge it")


def test_a_second_judge_that_cannot_judge_the_concept_gives_no_ua(tmp_path, tiny_model_dir, monkeypatch):
    """Its labels still give the agreement; the cell says why it has no UA or RA by the second judge, and
    the report's Both judges table leaves the cell out rather than pooling judge 1 alone."""
    monkeypatch.setattr(bench.run.grid, "load_judge",
                        lambda track, cs, spec=None: BlindSecondJudge() if spec == "blind" else FakeJudge())
    grid_bench = _grid_bench(tiny_model_dir, tmp_path, methods=["fuchi"])
    grid_bench = replace(grid_bench, track=replace(grid_bench.track, second_judge="blind"))
    (cell,) = run_bench(grid_bench, tmp_path / "runs", progress=False)
    metrics = json.loads((cell / "metrics.json").read_text())
    assert cell_status(metrics) == "ok" and 0 <= metrics["judge_agreement"]["min"] <= 1
    assert "ua_second" not in metrics and "this judge cannot judge it" in metrics["second_judge_note"]
    rows = [json.loads(line) for line in (cell / "per_image.jsonl").read_text().splitlines()]
    assert all("second_judge" in r and "second_detected" not in r for r in rows)
    md = build_report(tmp_path / "runs", tmp_path / "report")["markdown"].read_text()
    assert "Both judges" not in md


def test_edited_or_truncated_records_are_named(grid, tmp_path, tiny_model_dir, fake_judge, capsys):
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(grid[0], out)
    # cells[0]: the failed cell, edited by hand (same size); cells[1]: the measured one, truncated
    cells = sorted((out / "cells" / c.name for c in grid[1]),
                   key=lambda c: cell_status(json.loads((c / "metrics.json").read_text())) == "ok")
    assert all(not p for p in verify_cells(out).values())
    metrics = cells[0] / "metrics.json"
    metrics.write_text(metrics.read_text().replace("diverged", "dIverged", 1))
    per_image = cells[1] / "per_image.jsonl"
    per_image.write_bytes(per_image.read_bytes()[: per_image.stat().st_size // 2])
    assert main(["verify", "--runs", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"FAILED  cell {cells[0].name} (" in text and "metrics.json does not match its sha256 (edited)" in text
    assert f"FAILED  cell {cells[1].name} (" in text and "per_image.jsonl has" in text
    with pytest.raises(RecordError, match=f"2 run record\\(s\\) under .* fail verification, not used: .*cell {cells[0].name} "
                                          r"\(full_finetune, concept .*\): metrics.json does not match"):
        build_report(out, tmp_path / "report")
    assert main(["report", "--runs", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 2 run record(s)") and len(err.splitlines()) == 1
    with pytest.raises(RecordError, match="fail verification"):
        run_bench(_grid_bench(tiny_model_dir, tmp_path), out, progress=False)


def test_one_driver_per_run_folder(tmp_path, tiny_model_dir, fake_judge):
    import psutil

    out = tmp_path / "runs"
    out.mkdir()
    lock = out / LOCK_NAME
    parent = psutil.Process().parent()  # alive, and not us
    lock.write_text(json.dumps({"pid": parent.pid, "host": socket.gethostname(),
                                "started": parent.create_time(), "since": 0}))
    with pytest.raises(RunLockedError, match=f"run folder .* is in use by another bench run: PID {parent.pid} on host"):
        run_bench(_grid_bench(tiny_model_dir, tmp_path), out, progress=False)
    assert not (out / "cells").exists()
    # a stale lock: the recorded process is gone (or its PID now belongs to a newer process)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder in ({"pid": dead.pid, "started": 1.0}, {"pid": parent.pid, "started": 1.0}):
        lock.write_text(json.dumps({**holder, "host": socket.gethostname(), "since": 0}))
        path = acquire(out)
        assert json.loads(path.read_text())["pid"] == os.getpid()
        release(path)
        assert not lock.exists()


def test_failed_write_leaves_no_partial_cell_and_rerun_completes(grid, tmp_path, tiny_model_dir, fake_judge,
                                                                  monkeypatch):
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(grid[0], out)
    missing = next(c for c in grid[1] if cell_status(json.loads((c / "metrics.json").read_text())) != "ok")
    shutil.rmtree(out / "cells" / missing.name)  # the grid lacks one cell: the next run writes it
    real = bench.core.records.write_json

    def disk_full(path, data):
        if Path(path).name == "metrics.json":  # the cell writer fails mid-way: disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(bench.core.records, "write_json", disk_full)
    with pytest.raises(RecordError, match=r"could not write cell \w+ \(full_finetune, concept .*\) under .*: "
                                          r"No space left on device; no partial cell was kept, rerun to complete"):
        run_bench(_grid_bench(tiny_model_dir, tmp_path), out, progress=False)
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(c.name for c in grid[1] if c != missing)
    monkeypatch.setattr(bench.core.records, "write_json", real)
    cells = run_bench(_grid_bench(tiny_model_dir, tmp_path), out, progress=False)
    assert [c.name for c in cells] == [c.name for c in grid[1]] and all(is_complete(c) for c in cells)
    assert all(not p for p in verify_cells(out).values())
