"""Command line: ``python -m bench <command>``. Flags become plain data; errors are one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.errors import BenchError


def _cmd_methods(args: argparse.Namespace) -> int:
    from bench.method import get_method, method_registry

    rows: dict[str, Any] = {}
    for name in method_registry().names():
        cls = get_method(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        rows[name] = {
            "version": cls.version,
            "summary": doc[0] if doc else "",
            "variants": cls.variants,
            "defaults": cls.Config().to_dict(),
        }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name, row in rows.items():
        print(f"{name} (v{row['version']}): {row['summary']}")
        for variant, overrides in row["variants"].items():
            print(f"  variant {name}@{variant}: {json.dumps(overrides)}")
        print("  defaults: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in row["defaults"].items()))
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from bench.config import parse_overrides
    from bench.erase import erase_to_folder

    record = erase_to_folder(
        method_spec=args.method, overrides=parse_overrides(args.set or []), model=args.model,
        concept_name=args.concept, concept_type=args.concept_type, images=args.images, out=Path(args.out),
        seed=args.seed, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
    )
    print(f"erased {args.concept!r} with {args.method} in {record['seconds']:.2f} s: "
          f"{record['trainable_params']:,} trainable parameters, edit {record['storage_bytes']:,} bytes -> {args.out}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    from bench.smoke import run_smoke

    run_smoke(Path(args.out), seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Concept-erasure benchmark for diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("methods", help="list registered methods with their default hyper-parameters")
    m.add_argument("--json", action="store_true", help="print JSON")
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
    e.set_defaults(func=_cmd_erase)

    s = sub.add_parser("smoke", help="every method on a tiny random pipeline (mechanics check)")
    s.add_argument("--out", default="runs/smoke")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_smoke)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
