"""Command line: ``python -m bench <command>``. Flags become plain data; errors are one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from bench.core.errors import BenchError


def _cmd_methods(args: argparse.Namespace) -> int:
    from bench.api.method import get_method, leaderboard_specs, method_registry

    if args.specs:
        print(",".join(leaderboard_specs()))
        return 0
    rows: dict[str, Any] = {}
    for name in method_registry().names():
        cls = get_method(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        rows[name] = {
            "version": cls.version,
            "summary": doc[0] if doc else "",
            "variants": cls.variants,
            "defaults": cls.Config().to_dict(),
            "strength": [{"field": k.field, "low": k.low, "high": k.high, "help": k.help,
                          "ranges": {name: list(r) for name, r in k.ranges.items()}} for k in cls.strength],
            "tune_choices": {f: list(v) for f, v in cls.tune_choices.items()},
        }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name, row in rows.items():
        print(f"{name} (v{row['version']}): {row['summary']}")
        for variant, overrides in row["variants"].items():
            print(f"  variant {name}@{variant}: {json.dumps(overrides)}")
        print("  defaults: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in row["defaults"].items()))
        for k in row["strength"]:
            own = "".join(f"; on {name}: {lo:g}..{hi:g}" for name, (lo, hi) in k["ranges"].items())
            print(f"  strength knob {k['field']}: {k['low']:g}..{k['high']:g} (log{own}) — {k['help']}")
        for f, values in row["tune_choices"].items():
            print(f"  tuned over {f}: {', '.join(json.dumps(v) for v in values)} (one ladder each)")
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from bench.api.config import parse_overrides
    from bench.run.erase import erase_to_folder

    record = erase_to_folder(
        method_spec=args.method, overrides=parse_overrides(args.set or []), model=args.model,
        concept_name=args.concept, concept_type=args.concept_type, images=args.images, out=Path(args.out),
        seed=args.seed, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
        truncate_prompts=args.truncate_prompts,
    )
    for note in record["images"].get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    for cut in record.get("prompt_truncations", []):
        print(f"note: {cut['where']} cut from {cut['tokens']} to {cut['kept']} tokens (--truncate-prompts)",
              file=sys.stderr)
    print(f"erased {args.concept!r} with {args.method} in {record['seconds']:.2f} s: "
          f"{record['trainable_params']:,} trainable parameters, edit {record['storage_bytes']:,} bytes -> {args.out}")
    return 0


MAX_SEEDS = 10_000  # evaluation seeds one run may name (each costs every prompt an image)


def _parse_seeds(text: str | None, flag: str = "--seeds") -> tuple[int, ...] | None:
    """``"0-7"`` or ``"0,1,5"``: a rising range or a list, no empty item, no seed twice."""
    from bench.core.errors import ConfigError

    if text is None:
        return None
    usage = f"{flag} {text!r}: use a range like 0-7 or a list like 0,1,2"
    if not text.strip():
        raise ConfigError(f"{flag} is empty: use a range like 0-7 or a list like 0,1,2")
    try:
        if "-" in text and "," not in text:
            a, b = (int(x) for x in text.split("-", 1))
            if b < a:
                raise ConfigError(f"{flag} {text!r}: the range runs backwards; write {b}-{a}")
            if b - a + 1 > MAX_SEEDS:
                raise ConfigError(f"{flag} {text!r} names {b - a + 1:,} seeds; at most {MAX_SEEDS:,}")
            return tuple(range(a, b + 1))
        items = _split(text, flag)
        if len(items) > MAX_SEEDS:
            raise ConfigError(f"{flag} names {len(items):,} seeds; at most {MAX_SEEDS:,}")
        return tuple(int(x) for x in items)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(usage) from None


def _split(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list: no empty item (``a,,b``, a comma at an end) and no item twice."""
    from bench.core.errors import ConfigError

    if text is None:
        return None
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise ConfigError(f"{flag} is empty: name at least one item, e.g. {flag} a,b")
    if not all(items):
        kept = ",".join(x for x in items if x)
        raise ConfigError(f"{flag} {text!r} has an empty item (two commas, or one at an end); write {kept}")
    twice = sorted({x for x in items if items.count(x) > 1})
    if twice:
        raise ConfigError(f"{flag} names {twice[0]!r} twice; list each once")
    return items


def bench_from_args(args: argparse.Namespace):
    from dataclasses import replace

    from bench.api.config import parse_overrides
    from bench.core.errors import ConfigError
    from bench.core.protocol import PROTOCOLS
    from bench.run.plan import Bench, Track, world_track

    if getattr(args, "track", "conceptworld") == "sd":
        from bench.run.plan import sd_track

        if not args.model:
            raise ConfigError("--track sd needs --model PATH_OR_ID (a Stable Diffusion v1.x/v2.x pipeline)")
        if getattr(args, "world", None):
            raise ConfigError("--world names a ConceptWorld folder; it does not go with --track sd")
        track = sd_track(args.model, concepts=args.concept_set or "imagenette", judge=args.judge)
    else:
        track = world_track(args.world) if getattr(args, "world", None) else Track()
        for key in ("model", "concept_set", "judge"):
            if getattr(args, key, None):
                track = replace(track, **{key: getattr(args, key)})
    for key in ("images", "judge_weights", "clip_model", "clip_checkpoint", "device", "dtype"):
        if getattr(args, key, None):
            track = replace(track, **{key: getattr(args, key)})
    track = replace(track, verify_world=getattr(args, "verify_world", True),
                    shipped_references=getattr(args, "shipped_references", True))
    if getattr(args, "second_judge", None):
        track = replace(track, second_judge=None if args.second_judge == "none" else args.second_judge)
    sampler = track.sampler
    if args.steps is not None:
        sampler = replace(sampler, steps=args.steps)
    if args.guidance is not None:
        sampler = replace(sampler, guidance=args.guidance)
    track = replace(track, sampler=sampler)
    protocol = PROTOCOLS[getattr(args, "protocol", None) or "full"]
    seeds = _parse_seeds(args.seeds)
    if seeds is not None:
        protocol = replace(protocol, seeds=seeds)
    if getattr(args, "attack_seeds", None) is not None:
        protocol = replace(protocol, attack_seeds=args.attack_seeds)
        if args.attack_seeds > len(protocol.seeds):
            raise ConfigError(f"--attack-seeds {args.attack_seeds}: the run has {len(protocol.seeds)} evaluation "
                              f"seeds; attack images use the first N of them, so N is at most "
                              f"{len(protocol.seeds)} (or give more --seeds)")
    methods = _split(args.methods, "--methods") or []
    if methods == ["all"]:
        from bench.api.method import leaderboard_specs

        methods = leaderboard_specs()
    from bench.run.plan import ALL_ATTACKS, DEFAULT_ATTACKS

    given = getattr(args, "attacks", "none")
    attacks = ([] if given == "none" else list(DEFAULT_ATTACKS) if given is None
               else list(ALL_ATTACKS) if given == "all" else _split(given, "--attacks"))
    attack_overrides: dict[str, dict] = {}
    for i, a in enumerate(attacks):  # replay:FILE names the replay attack and its file
        if a.startswith("replay:"):
            attacks[i] = "replay"
            attack_overrides.setdefault("replay", {})["file"] = str(Path(a.split(":", 1)[1]).resolve())
    overrides: dict[str, dict] = {}
    if not getattr(args, "untuned", True):
        from bench.run.tune import load_tuned

        for spec, chosen in load_tuned(track).items():
            if spec in methods:
                overrides[spec] = dict(chosen)
    for key, value in parse_overrides(args.set or []).items():
        if "." not in key:
            raise ConfigError(f"--set {key}=...: name the method, e.g. --set fuchi.lr=2e-5")
        method, field = key.split(".", 1)
        if method in attacks:
            attack_overrides.setdefault(method, {})[field] = value
            continue
        if method not in methods:
            raise ConfigError(f"--set {key}: {method!r} is not among --methods {methods} or --attacks {attacks}")
        overrides.setdefault(method, {})[field] = value
    return Bench(track=track, methods=methods, concepts=_split(args.concepts, "--concepts"), protocol=protocol,
                 method_overrides=overrides, attacks=tuple(attacks),
                 attack_overrides=attack_overrides, truncate_prompts=getattr(args, "truncate_prompts", False))


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """The executor ``--executor`` names, closed (a Ray instance it started, stopped) at the end."""
    from bench.run.executors import build_executor

    executor = build_executor(args.executor, args.address, args.workers, args.worker_threads)
    try:
        yield executor
    finally:
        executor.close()


def _shown(path: str | None) -> str:
    """A default path as help prints it: relative to the checkout when it lies inside it."""
    from bench.core.paths import ROOT

    if path is None:
        return "none"
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return str(path)


def _add_world_arg(parser: argparse.ArgumentParser) -> None:
    from bench.world.presets import DEFAULT_PRESET, DEFAULT_WORLD

    parser.add_argument("--world", default=None,
                        help="a built ConceptWorld folder (model, concepts.yaml, judges), e.g. datasets/conceptworld "
                             f"for world 2.1 (default: world {DEFAULT_PRESET}, {_shown(str(DEFAULT_WORLD))})")
    parser.add_argument("--no-verify-world", dest="verify_world", action="store_false",
                        help="do not check the world's files against its MANIFEST.json before the first cell "
                             "(default: check, and refuse a file that differs); each cell's spec records it")
    parser.add_argument("--no-shipped-references", dest="shipped_references", action="store_false",
                        help="compute the original model's images and attacks instead of reading the ones the "
                             "world ships (its verified reference pack; the numbers are the same)")


def _add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", default="local", choices=["local", "ray"],
                        help="where cells run: local (this process, one pipeline) or ray (actors that each load "
                             "the pipeline once, one per GPU or per --worker-threads CPUs; pip install -e '.[ray]')")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: auto or HOST:PORT of a running cluster (default: start Ray here)")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --executor ray: actors (default: the cluster's GPUs, else its CPUs / --worker-threads)")
    parser.add_argument("--worker-threads", dest="worker_threads", type=int, default=None,
                        help="with --executor ray on CPUs: torch threads per actor (default: CPUs / --workers)")


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.report.build import build_report
    from bench.run.grid import run_bench
    from bench.run.plan import plan_bench

    bench = bench_from_args(args)
    if args.dry_run:
        grid = plan_bench(bench)
        t = bench.track
        print(f"model {t.model} | concept set {t.concept_set} | judge {t.judge} | images {t.images}")
        print(f"sampler {json.dumps(t.sampler.to_dict())} | device {t.device} dtype {t.dtype}")
        print(f"protocol {json.dumps(bench.protocol.to_dict())}")
        for cell in grid:
            print(f"  {cell['method']:<20} {cell['concept']:<20} {cell['prompts']:>3} prompts "
                  f"{cell['images']:>5} images {json.dumps(cell['groups'])}")
        total = sum(c["images"] for c in grid)
        print(f"{len(grid)} cells, {total} edited images (+ the original model's, generated once)")
        return 0
    from bench import STARTED
    from bench.run.cost import log_run

    out = Path(args.out)
    with _executor(args) as executor:
        cells = run_bench(bench, out, executor=executor)
        shape = executor.shape(bench.track)
    # the run's own report; only an explicit --report (make leaderboard: --report reports) writes elsewhere
    paths = build_report(out, Path(args.report) if args.report else out / "report", only=cells,
                         sweeps=Path(args.sweeps) if args.sweeps else None)
    log_run(out, STARTED, time.time() - STARTED, cells, args.executor, *shape)
    if paths.get("summary"):
        print(paths["summary"])
    print(f"report: {paths['html']} (beside it: leaderboard.md, leaderboard.csv, overall.csv)")
    if args.compare:
        _compare_with(Path(paths["html"]).parent, Path(args.compare))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    """``bench plan``: the grid's estimated wall time per method and phase (``bench.run.cost``), or the
    unit costs measured from run folders (``--calibrate``)."""
    import os

    from bench.core.errors import ConfigError
    from bench.run.cost import COSTS, UnitCosts, calibrate, estimate, missing_references
    from bench.run.plan import plan_bench

    if args.calibrate:
        if not args.costs_out:
            raise ConfigError("--calibrate writes a cost file: give --costs-out FILE")
        import platform

        from bench.core.io import write_json

        machine = args.machine or f"{platform.machine()} CPU, {os.cpu_count()} cores"
        costs = calibrate([Path(r) for r in args.calibrate], machine)
        write_json(args.costs_out, costs.to_dict())
        print(f"{args.costs_out}: {costs.executor} x{costs.workers} ({costs.threads} threads), "
              f"{costs.generate_per_image * 1e3:.1f} ms per image, startup {costs.startup:.0f} s, "
              f"{len(costs.erase)} methods, {len(costs.attack)} attacks")
        return 0
    costs = UnitCosts.load(Path(args.costs) if args.costs else COSTS)
    bench = bench_from_args(args)
    grid = plan_bench(bench)
    workers = 1
    for flag, value in (("--workers", args.workers), ("--worker-threads", args.worker_threads)):
        if value is not None and not 1 <= value <= 100_000:
            raise ConfigError(f"{flag} must be in 1..100000, got {value}")
        if value is not None and args.executor != "ray":
            raise ConfigError(f"{flag} needs --executor ray")
    if args.executor == "ray":
        workers = args.workers or max(1, (os.cpu_count() or 1) // (args.worker_threads or 1))
    try:
        est = estimate(grid, bench.attacks, costs, workers, missing_references(bench))
    except OverflowError as e:  # a grid whose seconds overflow a float is no grid to run
        raise ConfigError(f"cannot estimate this grid: {e}") from None
    print(f"{est.cells} cells, {len(bench.attacks)} attacks, {args.executor} x{workers}; costs of {costs.machine} "
          f"({costs.executor} x{costs.workers})")
    print(est.table())
    print(f"startup {est.startup:.0f} s + work {est.work:.0f} s / {workers} worker(s) = about "
          f"{est.wall / 60:.1f} min")
    for note in est.notes:
        print(f"note: {note}")
    return 0


def _compare_with(report: Path, committed: Path) -> None:
    """Print (and write beside the report, ``comparison.md``) how the run's leaderboard compares with the
    one in ``committed``; a report written into ``committed`` itself is not compared with itself."""
    from bench.report.compare import compare_leaderboards

    if report.resolve() == committed.resolve():
        return
    if not (committed / "leaderboard.csv").is_file() or not (report / "leaderboard.csv").is_file():
        print(f"no leaderboard to compare: {committed if (report / 'leaderboard.csv').is_file() else report} has none")
        return
    result = compare_leaderboards(report, committed)
    (report / "comparison.md").write_text(result.to_markdown(), encoding="utf-8")
    for line in result.lines():
        print(line)


def _cmd_tune(args: argparse.Namespace) -> int:
    from bench.api.config import parse_grid
    from bench.run.tune import TuneSpec, tune, tuned_path

    args.methods = args.method
    bench = bench_from_args(args)
    spec = TuneSpec(grid=parse_grid(args.grid) if args.grid else None, knob=args.knob, ratio=args.ratio,
                    fixed=bench.method_overrides.get(args.method, {}))
    committed = tuned_path(bench.track)
    record = committed if args.save_tuned else Path(args.out) / "tuned" / committed.name
    with _executor(args) as executor:
        chosen = tune(bench.track, args.method, bench.concepts, Path(args.out), bench.protocol, spec, executor,
                      record=record)
    for row in chosen["grid"]:
        print(f"{json.dumps(row['overrides']):<40} H={row['H']:.3f} UA={row['UA']:.3f} retain={row['retain']:.3f}")
    print(f"chosen for {args.method}: {json.dumps(chosen['overrides'])} -> {record}"
          + ("" if args.save_tuned else f" (bench run uses {committed}: make tune, or --save-tuned, writes it)"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report.build import build_report

    paths = build_report(Path(args.runs), Path(args.out) if args.out else Path(args.runs) / "report",
                         sweeps=Path(args.sweeps) if args.sweeps else None)
    print(f"report: {paths['html']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from bench.report.curves import curve_tables, frontier_display, points_display
    from bench.report.text import markdown_table
    from bench.run.sweep import parse_ranges, run_sweep

    bench = bench_from_args(args)
    out = Path(args.out)
    with _executor(args) as executor:
        run_sweep(bench, out, args.points, args.knob, executor=executor,  # Knob.sweep refuses fewer than 2 points
                  ranges=parse_ranges(args.range))
    points, front = curve_tables(out)
    if len(points):
        print(markdown_table(points_display(points)))
        print(markdown_table(frontier_display(front)))
    print(f"sweep cells and manifest: {out}; the leaderboard draws them with --sweeps {out}")
    return 0


def _cmd_attacks_export(args: argparse.Namespace) -> int:
    from bench.core.errors import InputError
    from bench.report.artefacts import gather, write_export

    runs = Path(args.runs)
    if not runs.is_dir():
        raise InputError(f"--runs {runs}: no such folder")
    rows = gather(runs)
    if not rows:
        raise InputError(f"--runs {runs}: no cell holds attack artefacts (run with --attacks)")
    out = write_export(rows, Path(args.out))
    replayable = sum(r["replayable"] for r in rows)
    print(f"{len(rows)} attack prompts ({replayable} replayable as text) from "
          f"{len({r['cell'] for r in rows})} cells -> {out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bench.core.errors import InputError
    from bench.core.records import cell_name, verify_cells

    runs = Path(args.runs)
    if not (runs / "cells").is_dir():
        raise InputError(f"no run folder at {runs} (no cells/ inside)")
    results = verify_cells(runs)
    bad = {d: p for d, p in results.items() if p}
    for folder, problems in results.items():
        print(f"{'ok' if not problems else 'FAILED'}  cell {cell_name(folder)}" + (f": {'; '.join(problems)}" if problems else ""))
    leftovers = [d for d in (runs / "cells").iterdir() if ".tmp-" in d.name]
    if leftovers:
        print(f"{len(leftovers)} temp folder(s) of an interrupted run (the next bench run removes them)")
    print(f"verify: {len(results) - len(bad)} of {len(results)} cells match their checksums"
          + (f"; {len(bad)} edited, truncated or incomplete: delete them to recompute" if bad else ""))
    return 1 if bad else 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from bench.run.migrate import migrate_runs

    report = migrate_runs(Path(args.runs))
    for line in report.lines():
        print(line)
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_regress(args: argparse.Namespace) -> int:
    import time

    from bench.run.regress import GOLDENS, run_regress

    t0 = time.perf_counter()
    problems = run_regress(update=args.update)
    took = time.perf_counter() - t0
    if args.update:
        print(f"goldens written to {GOLDENS} ({took:.0f} s)")
        return 0
    for line in problems:
        print(f"REGRESSION: {line}", file=sys.stderr)
    print(f"regress: {'FAILED' if problems else 'ok'} in {took:.0f} s")
    return 1 if problems else 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    from bench.run.smoke import run_smoke

    run_smoke(Path(args.out), seed=args.seed)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is the project's one-line error (exit 2) instead of usage text and a
    ``SystemExit`` from inside the parser (subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        from bench.core.errors import ConfigError

        flat = message.replace("\r", "\\r").replace("\n", "\\n")  # an argument with a newline stays on one line
        raise ConfigError(f"{self.prog}: {flat} (see {self.prog} --help)")


def _add_grid_args(r: argparse.ArgumentParser) -> None:
    """What names a grid: track, methods, concepts, protocol, attacks, executor (bench run and bench plan)."""
    from bench.world.presets import DEFAULT_SECOND_JUDGE

    r.add_argument("--methods", default="fuchi,lora_eraser,full_finetune",
                   help="comma-separated method specs, or all (every registered method as the leaderboard reports it)")
    r.add_argument("--concepts", default=None, help="comma-separated concept names (default: the test split)")
    _add_world_arg(r)
    r.add_argument("--model", default=None, help="pipeline folder (default: the committed ConceptWorld model)")
    r.add_argument("--concept-set", dest="concept_set", default=None,
                   help="concept-set YAML (with --track sd also: imagenette, styles, characters)")
    r.add_argument("--judge", default=None,
                   help="judge folder, imagenet, imagenet-restricted, resnet50[-restricted] or clip")
    r.add_argument("--second-judge", dest="second_judge", default=None,
                   help="a second judge, built differently, whose agreement per head each cell records (same "
                        f"forms as --judge), or none (default: {_shown(str(DEFAULT_SECOND_JUDGE))}; with --world W: "
                        "W/judge_vit, else W/clip; with --track sd: none)")
    r.add_argument("--images", default=None, help="few-shot image ROOT with ROOT/<concept>/ (default: rendered)")
    r.add_argument("--protocol", default="full", choices=["full", "quick"],
                   help="the declared protocol (bench.core.protocol.PROTOCOLS): full, the leaderboard's (seeds 0-7), "
                        "or quick, make bench's (seeds 0-3; its report says it is not the leaderboard); --seeds "
                        "overrides its seeds")
    r.add_argument("--seeds", default=None, help="evaluation seeds: 0-7 or 0,1,2")
    r.add_argument("--steps", type=int, default=None, help="sampler steps (default: the track's)")
    r.add_argument("--guidance", type=float, default=None)
    r.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="override a method's config field")
    r.add_argument("--out", default="runs/bench", help="run folder (cells are reused across invocations)")
    r.add_argument("--truncate-prompts", dest="truncate_prompts", action="store_true",
                   help="cut prompts over the tokenizer's limit and record it in each cell (default: refuse them)")
    r.add_argument("--untuned", action="store_true", help="use the methods' defaults, not the dev-tuned configs")
    r.add_argument("--sweeps", default=None, help="a sweep run folder whose curves the report draws (runs/sweep)")
    r.add_argument("--attacks", default=None,
                   help="robustness attacks against every erased model, comma-separated (default: "
                   "bench.run.plan.DEFAULT_ATTACKS; all: ALL_ATTACKS, what the leaderboard runs; NAME@world: the "
                   "declared CPU-world budget, NAME alone the published one; replay:FILE: the prompts of an export), "
                   "or none")
    r.add_argument("--attack-seeds", dest="attack_seeds", type=int, default=None,
                   help="attack images use the first N evaluation seeds (default: 4)")
    r.add_argument("--track", choices=["conceptworld", "sd"], default="conceptworld",
                   help="sd: SD sampler, generated few-shot images, Imagenette + ImageNet judge by default")
    r.add_argument("--judge-weights", dest="judge_weights", default=None, help="weights for --judge resnet50")
    r.add_argument("--clip-model", dest="clip_model", default=None, help="for --judge clip: an open_clip model name (with --clip-checkpoint), "
                        "or a transformers CLIPModel folder (e.g. clip-vit-large-patch14 saved locally)")
    r.add_argument("--clip-checkpoint", dest="clip_checkpoint", default=None, help="open_clip checkpoint file (not with a CLIPModel folder)")
    r.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16 (CUDA)")
    _add_executor_args(r)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description="Concept-erasure benchmark for diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("methods", help="list registered methods with their default hyper-parameters")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.add_argument("--specs", action="store_true",
                   help="print the leaderboard's method specs, comma-separated (what --methods all runs)")
    m.set_defaults(func=_cmd_methods)

    e = sub.add_parser("erase", help="erase one concept and write the edit and its record")
    e.add_argument("--method", required=True, help="method name, optionally @variant (e.g. fuchi@paper_era)")
    e.add_argument("--model", required=True, help="Stable-Diffusion-format folder or hub id")
    e.add_argument("--concept", required=True, help="the concept's name as written in prompts")
    e.add_argument("--concept-type", default="object", choices=["object", "style", "character", "colour"])
    e.add_argument("--images", required=True, help="folder with a few images of the concept")
    e.add_argument("--out", required=True, help="output folder for edit.safetensors and erase.json")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    e.add_argument("--device", default="auto")
    e.add_argument("--dtype", default="auto", help="float32 (CPU default), float16 or bfloat16")
    e.add_argument("--overwrite", action="store_true", help="replace an existing record in --out")
    e.add_argument("--truncate-prompts", dest="truncate_prompts", action="store_true",
                   help="cut prompts over the tokenizer's limit and record it (default: refuse them)")
    e.set_defaults(func=_cmd_erase)

    r = sub.add_parser("run", help="run the benchmark grid (resumable) and build the report")
    _add_grid_args(r)
    r.add_argument("--report", default=None,
                   help="where the leaderboard is written (default: OUT/report; make leaderboard names reports)")
    r.add_argument("--compare", default=None, metavar="REPORT_DIR",
                   help="compare the run's leaderboard with the one in REPORT_DIR (make bench: the committed "
                        "reports/): the same numbers where the cells are the same, else the rows that differ")
    r.add_argument("--dry-run", action="store_true", help="print the exact grid and exit (loads no model)")
    r.set_defaults(func=_cmd_run)

    pl = sub.add_parser("plan", help="estimate a grid's wall time on this machine, per method and phase, before "
                                     "running it (bench run's arguments), or --calibrate the costs from run folders")
    _add_grid_args(pl)
    pl.add_argument("--costs", default=None, help="a cost file (default: bench/run/costs.json, measured on 2 CPU cores)")
    pl.add_argument("--calibrate", nargs="+", default=None, metavar="RUNS",
                    help="measure unit costs from these run folders' cells and run logs (one executor) instead")
    pl.add_argument("--costs-out", dest="costs_out", default=None, help="with --calibrate: the cost file to write")
    pl.add_argument("--machine", default=None, help="with --calibrate: how the machine is named in the cost file")
    pl.set_defaults(func=_cmd_plan, report=None)

    t = sub.add_parser("tune", help="choose a method's strength on dev concepts (log steps of <= 2x; records every point)")
    t.add_argument("--method", required=True)
    t.add_argument("--grid", action="append", default=None, metavar="KEY=V1,V2",
                   help="explicit values to try (repeatable; default: the method's strength knob as a ladder)")
    t.add_argument("--knob", default=None, help="the strength knob to walk (default: the method's first; see bench methods)")
    t.add_argument("--ratio", type=float, default=2.0, help="largest step between neighbouring rungs (in (1, 2])")
    t.add_argument("--concepts", default=None, help="dev concepts (default: all dev concepts)")
    _add_world_arg(t)
    t.add_argument("--seeds", default="0-3")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--guidance", type=float, default=None)
    t.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="fixed overrides")
    t.add_argument("--out", default="runs/tune")
    t.add_argument("--save-tuned", dest="save_tuned", action="store_true",
                   help="write the choice into the committed tuned configs that bench run uses (reports/tuned/; "
                        "make tune does); default: OUT/tuned/ only")
    _add_executor_args(t)
    t.set_defaults(func=_cmd_tune, untuned=True, model=None, concept_set=None, judge=None, images=None,
                   track="conceptworld")

    sw = sub.add_parser("sweep", help="sweep each method's strength knob on test concepts (trade-off curves)")
    sw.add_argument("--methods", default="fuchi,lora_eraser,full_finetune",
                    help="comma-separated method specs, or all (every registered method as the leaderboard reports it)")
    sw.add_argument("--points", type=int, default=5, help="log-spaced points over each knob's declared range")
    sw.add_argument("--knob", default=None, help="the knob to sweep (default: each method's first; bench methods)")
    sw.add_argument("--range", action="append", metavar="METHOD=LOW:HIGH",
                    help="sweep METHOD's knob over LOW..HIGH instead of its declared range (repeatable; another "
                         "model's transition lies elsewhere), e.g. fuchi=1e-4:1e-2")
    sw.add_argument("--concepts", default=None, help="comma-separated concept names (default: the test split)")
    _add_world_arg(sw)
    sw.add_argument("--seeds", default=None, help="evaluation seeds (default: the protocol's 0-7)")
    sw.add_argument("--attacks", default="none", help="attacks at every point (default none)")
    sw.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="fixed overrides for every point")
    sw.add_argument("--untuned", action="store_true",
                    help="hold the other fields at the defaults, not at the dev-tuned config")
    sw.add_argument("--out", default="runs/sweep", help="run folder of the sweep cells and its manifest")
    sw.add_argument("--steps", type=int, default=None)
    sw.add_argument("--guidance", type=float, default=None)
    _add_executor_args(sw)
    sw.set_defaults(func=_cmd_sweep, model=None, concept_set=None, judge=None, images=None, track="conceptworld")

    rp = sub.add_parser("report", help="rebuild the leaderboard from run folders")
    rp.add_argument("--sweeps", default=None, help="a sweep run folder: adds trade-off curves (runs/sweep)")
    rp.add_argument("--runs", default="runs/bench")
    rp.add_argument("--out", default=None, help="where the leaderboard is written (default: RUNS/report)")
    rp.set_defaults(func=_cmd_report)

    v = sub.add_parser("verify", help="check every cell of a run folder against its recorded sha256")
    v.add_argument("--runs", default="runs/bench")
    v.set_defaults(func=_cmd_verify)

    mg = sub.add_parser("migrate", help="rename a run folder's cells to the current spec version's ids "
                        "(content, not paths), rewriting their specs and checksums")
    mg.add_argument("--runs", default="runs/bench")
    mg.set_defaults(func=_cmd_migrate)

    g = sub.add_parser("regress", help="quick configuration from scratch vs committed goldens")
    g.add_argument("--update", action="store_true", help="rewrite the goldens (make goldens)")
    g.set_defaults(func=_cmd_regress)

    at = sub.add_parser("attacks", help="the attacks' artefacts: export the prompts a run found")
    at_sub = at.add_subparsers(dest="attacks_command", required=True)
    ex = at_sub.add_parser("export", help="write every attack prompt a run's cells found (replay them on another "
                           "model with --attacks replay:FILE)")
    ex.add_argument("--runs", default="runs/bench")
    ex.add_argument("--out", required=True, help="a .jsonl or .csv file")
    ex.set_defaults(func=_cmd_attacks_export)

    s = sub.add_parser("smoke", help="every method on a tiny random pipeline (mechanics check)")
    s.add_argument("--out", default="runs/smoke")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_smoke)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except BenchError as e:
        # one line, whatever the message carries (a name read from a file may hold a newline)
        print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return 2
