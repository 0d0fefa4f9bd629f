"""Display labels for a leaderboard row, derived at report time from a cell's run spec.

A cell records what it ran (method, config), never what to call it: the label comes from the
spec and the dev-tuned configs in ``reports/tuned/`` when the report is built, so a cell made
under ``--set`` and reused by a later tuned run gets the label its config deserves.

- ``fuchi[tuned]``: the config is the one ``bench tune`` chose on dev concepts;
- ``fuchi``: the method's published defaults;
- ``fuchi+1a2b3c``: any other config (the first six hex digits of its hash).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.core.paths import ROOT

TUNED_DIR = ROOT / "reports" / "tuned"


def tuned_file(concept_set_name: str, folder: Path = TUNED_DIR) -> Path:
    """``reports/tuned/<concept set name>.json``: the dev-tuned configs of one concept set."""
    return Path(folder) / f"{concept_set_name}.json"


def read_tuned(path: Path) -> dict[str, dict[str, Any]]:
    """``{method spec: config overrides}`` recorded by ``bench tune`` (empty when never tuned)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {spec: entry["overrides"] for spec, entry in data.get("methods", {}).items()}


def tuned_for_spec(spec: dict[str, Any], folder: Path = TUNED_DIR) -> dict[str, dict[str, Any]]:
    """The dev-tuned configs of the concept set a cell was measured on (its id is ``name@version``)."""
    name = str(spec["concept_set"]).rsplit("@", 1)[0]
    return read_tuned(tuned_file(name, folder))


def method_label(method: str, config: dict[str, Any], tuned: dict[str, Any] | None = None) -> str:
    """The label of ``method`` run with ``config`` (a full config dict, as in a run spec)."""
    from bench.api.method import build_method
    from bench.core.errors import ConfigError
    from bench.core.records import sha256_json

    try:
        if tuned is not None and config == build_method(method, tuned).config.to_dict():
            return f"{method}[tuned]"
        if config == build_method(method).config.to_dict():
            return method
    except ConfigError:  # a method no longer registered, or tuned overrides it rejects: name the config
        pass
    return f"{method}+{sha256_json(config)[:6]}"


def cell_label(spec: dict[str, Any], tuned: dict[str, dict[str, Any]]) -> str:
    """A cell's label from its run spec and the concept set's tuned configs."""
    return method_label(spec["method"], spec["method_config"], tuned.get(spec["method"]))


def protocol_banner(cells: list[dict[str, Any]]) -> str | None:
    """What a report of anything but the full protocol says in its title line (None for the leaderboard's
    protocol): the declared protocol its cells ran, and that it is not the leaderboard."""
    from bench.core.protocol import PROTOCOLS, protocol_name

    names = sorted({protocol_name(c["spec"].get("protocol", {})) for c in cells})
    if names == ["full"]:
        return None
    full = PROTOCOLS["full"]
    if names == ["quick"]:
        quick = PROTOCOLS["quick"]
        what = (f"the quick protocol (make bench): evaluation seeds {list(quick.seeds)}, the first "
                f"{len(quick.seeds)} of the full protocol's {len(full.seeds)}; every other choice is the full "
                "protocol's")
    else:
        what = f"protocol(s) {', '.join(names)}, not the full protocol (evaluation seeds {list(full.seeds)})"
    return (f"Not the leaderboard: these cells ran {what}. The leaderboard (reports/, make leaderboard) runs the "
            "full protocol.")
