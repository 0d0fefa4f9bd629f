"""CLI: ``python -m bench.world build --out DIR`` rebuilds the world; ``evaluate --world DIR`` measures it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.core.errors import BenchError, InputError
from bench.world.presets import DEFAULT_PRESET, PRESET_FOLDERS
from bench.world.render import VOCABULARIES
from bench.worldgen.compare import FOUNDING
from bench.worldgen.config import MINI_OVERRIDES, PRESETS, WorldConfig, preset_of


def judged_preset(world: str | None, preset: str | None) -> str:
    """The preset whose judges ``judge`` retrains: the one the world's MANIFEST.json records (a world
    2.1 folder never gets world 3's judge heads), or ``preset``, which must agree with it."""
    if world is None:
        return preset or DEFAULT_PRESET
    manifest = Path(world) / "MANIFEST.json"
    try:
        recorded = preset_of(json.loads(manifest.read_text()).get("config", {})) if manifest.is_file() else None
    except (ValueError, AttributeError) as err:
        raise InputError(f"{manifest} is not a world manifest ({err})") from None
    if recorded is None and preset is None:
        raise InputError(f"{world}: no MANIFEST.json config names its preset; give --preset ({', '.join(PRESETS)})")
    if recorded is not None and preset is not None and preset != recorded:
        raise InputError(f"{world} was built with preset {recorded}, not --preset {preset}")
    return preset or recorded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.world")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the world (resumable) and write it to --out")
    b.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="which world: its WorldConfig overrides (config.PRESETS) and default folders")
    b.add_argument("--out", default=None, help="the world folder (default: the preset's, e.g. datasets/conceptworld3)")
    b.add_argument("--work", default=None, help="checkpoints and intermediate files, not committed (default: the "
                                                "preset's, e.g. work/conceptworld)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a WorldConfig field (after the preset's)")
    b.add_argument("--mini", action="store_true", help="a miniature world (tests)")
    b.add_argument("--no-eval", action="store_true")
    j = sub.add_parser("judge", help="retrain the two judges of a built world (its VAE; the model is untouched)")
    j.add_argument("--world", default=None, help="the built world (default: the preset's folder)")
    j.add_argument("--out", default=None, help="write the judges here instead of into --world")
    j.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="the world's preset (config.PRESETS; default: the one its MANIFEST.json records, or "
                        f"{DEFAULT_PRESET} without --world)")
    j.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a WorldConfig field (after the preset's)")
    j.add_argument("--threshold-only", dest="threshold_only", action="store_true",
                   help="train nothing: raise the judges' reject threshold as far as the non-scene budget allows "
                        "(judge_non_scene_recall, judge_build.calibrate_on_non_scenes), in --world")
    c = sub.add_parser("clip", help="pretrain the world CLIP alone (ConceptWorld 3, stage 1; resumable) and "
                                    "print its zero-shot accuracy per attribute on fresh renders")
    c.add_argument("--work", default="work/world-clip", help="scenes, checkpoints and the trained CLIPModel folder")
    c.add_argument("--scenes", type=int, default=60_000, help="rendered training scenes")
    c.add_argument("--eval-scenes", dest="eval_scenes", type=int, default=2_000)
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ClipConfig field")
    c.add_argument("--mini", action="store_true", help="a miniature CLIP (tests)")
    c.add_argument("--vocab", default="2", choices=sorted(VOCABULARIES), help="the world whose scenes it learns (render.VOCABULARIES)")
    c.add_argument("--vae", default=None, help="a VAE folder (a build's work/vae): a vae_share of the training images "
                                               "go through its round trip, as in `make world`")
    e = sub.add_parser("evaluate", help="measure the quality gates of a built world")
    e.add_argument("--world", default=None, help="the built world (default: --preset's folder)")
    e.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="whose folder --world defaults to")
    e.add_argument("--seeds", type=int, default=64)
    e.add_argument("--composed", type=int, default=32)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--json", default=None, help="write the full result here")
    e.add_argument("--write", action="store_true",
                   help="write the measured quality into the world's README and MANIFEST (after retraining its judges)")
    cmp = sub.add_parser("compare", help="two worlds side by side for the founding methods (bench.worldgen.compare)")
    cmp.add_argument("--side", action="append", required=True, metavar="LABEL=WORLD@RUNS",
                     help="a built world and the runs root holding its tune/, bench/ and sweep/ folders (repeatable)")
    cmp.add_argument("--methods", default=",".join(FOUNDING))
    cmp.add_argument("--out", default=None, help="write the table (.md) and every number (.json) beside it")
    cmp.add_argument("--merge", action="store_true",
                     help="keep the entries already in --out's .json (other methods or sides, measured earlier; "
                          "one measured again replaces its own) and write the table of them all")
    r = sub.add_parser("reference", help="compute the original model's references (images, attacks) for the "
                                         "world's default run and pack them into the world, listed in its MANIFEST")
    r.add_argument("--world", default=None, help="the built world (default: --preset's folder)")
    r.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="whose folder --world defaults to")
    r.add_argument("--attacks", default="all",
                   help="comma-separated attacks whose references to compute, 'default' or 'all' (default: all, "
                        "what make bench and make leaderboard run)")
    r.add_argument("--concepts", default=None, help="comma-separated concepts (default: the test split)")
    r.add_argument("--work", default="runs/world-reference", help="where they are computed (a run folder, kept)")
    r.add_argument("--from", dest="from_runs", default=None,
                   help="pack the reference folder of this run instead (a run on this world's model, e.g. runs/bench)")
    r.add_argument("--pack-only", dest="pack_only", action="store_true",
                   help="pack what --work holds (computed earlier by this command), computing nothing")
    r.add_argument("--replace", action="store_true", help="drop what the pack held before (default: keep it)")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="ray: the concepts spread over one worker per --threads CPUs (default: local)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: what make bench's Ray workers use on 2 cores)")
    pr = sub.add_parser("probe", help="why the world orders erasures' robustness as it does: probes of each "
                                      "method's edit in the text and cross-attention space (bench.worldgen.probe)")
    pr.add_argument("--world", default=None, help="the built world (default: --preset's folder)")
    pr.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="whose folder --world defaults to")
    pr.add_argument("--methods", default="uce,esd@x", help="comma-separated method specs, each in its tuned config")
    pr.add_argument("--concepts", default=None, help="comma-separated concepts (default: the test split)")
    pr.add_argument("--reach-steps", dest="reach_steps", type=int, default=None,
                    help="soft-prefix steps of the reach probe (default: ProbeConfig's)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", default=None, help="write every number (.json) and the table (.md) here")
    pr.add_argument("--leaderboard", default=None,
                    help="a leaderboard.csv measured on this world: split its robustness numbers by the concepts' "
                         "crowding (reports/leaderboard.csv for world 3)")
    pr.add_argument("--from", dest="from_result", default=None,
                    help="read the probes from this .json (an earlier --out) instead of measuring them")
    args = p.parse_args(argv)
    try:
        if args.cmd == "judge":
            args.preset = judged_preset(args.world, args.preset)
        if getattr(args, "world", "") is None:
            args.world = PRESET_FOLDERS[args.preset][0]
        if args.cmd == "build":
            from bench.worldgen.build import build

            cfg = WorldConfig().override(PRESETS[args.preset] + (MINI_OVERRIDES if args.mini else []) + args.set)
            out, work = PRESET_FOLDERS[args.preset]
            res = build(args.out or out, args.work or work, cfg, evaluate=not args.no_eval)
            if res["quality"]:
                print(json.dumps(res["quality"]["summary"], indent=2))
        elif args.cmd == "clip":
            from bench.world.render import vocabulary
            from bench.worldgen.clip_train import pretrain
            from bench.worldgen.config import MINI_CLIP, ClipConfig

            cfg = ClipConfig().override((MINI_CLIP if args.mini else []) + args.set)
            vae = None
            if args.vae:
                from diffusers import AutoencoderKL

                vae = AutoencoderKL.from_pretrained(args.vae, use_safetensors=True).eval()
            print(json.dumps(pretrain(cfg, Path(args.work), args.scenes, args.eval_scenes, vocabulary(args.vocab), vae),
                             indent=2))
        elif args.cmd == "compare":
            from bench.report.text import markdown_table
            from bench.worldgen.compare import Side, compare_side, kept_results, merge_results, table

            if args.merge and not args.out:
                raise InputError("--merge keeps the entries of --out's .json: give --out")
            sides = [Side.parse(text) for text in args.side]
            kept = kept_results(Path(args.out).with_suffix(".json")) if args.merge else []
            results = merge_results(kept, [compare_side(side, m) for m in args.methods.split(",") for side in sides])
            md = markdown_table(table(results))
            print(md)
            if args.out:
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.with_suffix(".md").write_text(md + "\n")
                out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        elif args.cmd == "reference":
            _reference(args)
        elif args.cmd == "probe":
            from bench.worldgen.probe import ProbeConfig, main_result

            fields = {"methods": tuple(args.methods.split(",")), "seed": args.seed,
                      "concepts": tuple(args.concepts.split(",")) if args.concepts else ()}
            if args.reach_steps is not None:
                fields["reach_steps"] = args.reach_steps
            print(main_result(Path(args.world), ProbeConfig(**fields), Path(args.out) if args.out else None,
                              Path(args.leaderboard) if args.leaderboard else None,
                              Path(args.from_result) if args.from_result else None))
        elif args.cmd == "judge":
            from bench.worldgen.judge_build import retrain_judges

            cfg = WorldConfig().override(PRESETS[args.preset] + args.set)
            if args.threshold_only:
                from bench.worldgen.judge_build import recalibrate_judges

                if args.out:
                    raise InputError("--threshold-only rewrites the judges in --world: no --out")
                info = recalibrate_judges(Path(args.world), cfg)
            else:
                info = retrain_judges(Path(args.world), cfg, Path(args.out) if args.out else None)
            print(json.dumps(info, indent=2))
        else:
            from dataclasses import replace

            from bench.core.protocol import WORLD_SAMPLER
            from bench.worldgen.quality import evaluate

            sampler = WORLD_SAMPLER
            if args.steps is not None:
                sampler = replace(sampler, steps=args.steps)
            if args.guidance is not None:
                sampler = replace(sampler, guidance=args.guidance)
            res = evaluate(Path(args.world), seeds=args.seeds, composed=args.composed, sampler=sampler)
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=2))
            if args.write:
                from bench.worldgen.build import refresh_manifest

                refresh_manifest(Path(args.world), res)
            print(json.dumps(res["summary"], indent=2))
            print(f"throughput {res['throughput_images_per_s']:.1f} images/s")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _reference(args: argparse.Namespace) -> None:
    """``reference``: compute (or take from --from) the original model's references, then pack them."""
    from bench.run.plan import ALL_ATTACKS, DEFAULT_ATTACKS
    from bench.run.shipped import MAX_ENTRY_BYTES, check_run_model, compute_references, pack_references

    world = Path(args.world)
    if args.from_runs:
        runs = Path(args.from_runs)
        print(f"{runs}: {check_run_model(world, runs)}")
    elif args.pack_only:
        runs = Path(args.work)
    else:
        named = {"all": ALL_ATTACKS, "default": DEFAULT_ATTACKS}
        attacks = named.get(args.attacks) or tuple(a for a in args.attacks.split(",") if a and a != "none")
        runs = Path(args.work)
        seconds = compute_references(world, runs, attacks, args.concepts.split(",") if args.concepts else None,
                                     executor=args.executor, threads=args.threads)
        print(f"references computed in {seconds:.0f} s -> {runs}")
    info = pack_references(world, runs / "reference", keep=not args.replace)
    print(f"{info['path']}: {info['tensor entries']} tensor entries, {info['records']} records, "
          f"{info['bytes'] / 1e6:.1f} MB ({info['left out']} attack references over "
          f"{MAX_ENTRY_BYTES // 1024} KB left out: runs compute them); listed in {world / 'MANIFEST.json'}")


if __name__ == "__main__":  # python -m bench.cli.world (python -m bench.world is the usual spelling)
    sys.exit(main())
