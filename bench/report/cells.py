"""Reading run folders back: complete (and, on request, failed) cells with their derived labels, and the
per-cell table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.plan import GROUPS
from bench.core.records import cell_status, scan_cells
from bench.report.pooling import ACCURACIES

PROTOCOL_KEYS = ("model_sha256", "concept_set", "concept_set_sha256", "sampler", "eval_seeds", "protocol",
                 "judge", "metrics_version", "erase_seed", "images", "dtype", "attacks")


def load_cells(runs: Path, only: list[Path] | None = None, include_failed: bool = False) -> list[dict[str, Any]]:
    """Complete, verified cells under ``runs`` (or just the folders in ``only``), checked to share one
    protocol. Failed (diverged) cells carry no numbers: left out unless ``include_failed``."""
    cells = scan_cells(Path(runs))
    if only is not None:
        keep = {Path(p).resolve() for p in only}
        cells = [c for c in cells if Path(c["folder"]).resolve() in keep]
    protocols = {json.dumps({k: c["spec"].get(k) for k in PROTOCOL_KEYS if k != "images"}, sort_keys=True)
                 for c in cells}
    if len(protocols) > 1:
        from bench.core.errors import InputError

        raise InputError(f"{runs} holds cells from {len(protocols)} different protocols (model, sampler, seeds, "
                         "prompts or judge differ); a leaderboard compares one protocol: use separate --out folders")
    from bench.report.labels import cell_label, tuned_for_spec

    tuned = tuned_for_spec(cells[0]["spec"]) if cells else {}  # one protocol, so one concept set
    for c in cells:
        c["label"] = cell_label(c["spec"], tuned)
        folder = Path(c["folder"])
        c["per_image"] = [json.loads(line) for line in (folder / "per_image.jsonl").read_text().splitlines() if line]
        c["environment"] = json.loads((folder / "environment.json").read_text())
    return cells if include_failed else [c for c in cells if cell_status(c["metrics"]) == "ok"]


def cell_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (method, concept) cell with every headline number."""
    rows = []
    for c in cells:
        s, m = c["spec"], c["metrics"]
        row = {"method": c["label"], "concept": s["concept"], "cell": Path(c["folder"]).name}
        for key, _ in ACCURACIES:
            for suffix in ("", "_original"):
                v = m.get(key + suffix)
                row[key + suffix] = v["value"] if v else np.nan
                if not suffix and v:
                    row[key + "_ci"] = f"[{v['ci_low']:.2f}, {v['ci_high']:.2f}]"
        for name in s.get("attacks", {}):
            row[f"asr_{name}"] = m[f"asr_{name}"]["value"]
            row[f"asr_{name}_original"] = m[f"asr_{name}_original"]["value"]
        if "composite_robust" in m:
            row["composite_robust"] = m["composite_robust"]
        for g in GROUPS:
            v = m.get(f"diversity_{g}")
            row[f"diversity_{g}"] = np.nan if v is None else v
        for key in ("selective_alignment", "selective_alignment_original"):
            v = m.get(key)
            row[key] = v["value"] if v else np.nan
        row["reject"] = m["reject_rate"]["value"] if "reject_rate" in m else np.nan
        row["reject_original"] = m["reject_rate_original"]["value"] if "reject_rate_original" in m else np.nan
        masked = m.get("masked_detections")  # registry 5 on, with a judge that gives probabilities
        row["masked"] = masked["value"] if masked else np.nan
        agree = m.get("judge_agreement")
        row["agree"] = agree["min"] if agree else np.nan
        row["judges_disagree"] = ("yes: " + agree["worst_head"]) if m.get("judges_disagree") else ("no" if agree else "")
        row.update({"retain_mean": m["retain_mean"], "composite": m["composite"],
                    "composite_original": m["composite_original"], "kid_retain": m["kid_retain"]["mean"],
                    "seconds": m["seconds_per_concept"], "peak_memory_mb": m["peak_memory_mb"],
                    "trainable_params": m["trainable_params"], "storage_bytes": m["storage_bytes"],
                    "warnings": "; ".join(m.get("image_warnings", []))})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "concept"]).reset_index(drop=True)
