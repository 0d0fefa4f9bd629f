"""Replay: the prompts another run's attacks found, tried on this model.

``python -m bench attacks export --runs DIR --out FILE`` writes every attack prompt a run's cells
found (JSONL or CSV, ``bench.report.artefacts``; read back by ``bench.core.artefacts``); ``--attacks replay:FILE`` reads them back. Each
concept gets the exported prompts recorded for a concept of the same name, optionally only those of
one ``method`` or ``attack``. Only text replays: a row without replayable text (continuous vectors, a
non-text probe) is skipped, and a concept with no row is an error naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome
from bench.api.config import MethodConfig
from bench.core.concepts import Concept
from bench.core.errors import InputError


@dataclass(frozen=True)
class ReplayConfig(MethodConfig):
    file: str = field(default="", metadata={"help": "the exported prompts (JSONL or CSV from `bench attacks export`)"})
    method: str = field(default="", metadata={"help": "only the prompts found against this method (label)"})
    attack: str = field(default="", metadata={"help": "only the prompts of this attack"})


class Replay(Attack):
    name = "replay"
    version = "1"
    Config = ReplayConfig

    def _rows(self, concept: Concept) -> list[dict[str, Any]]:
        from bench.core.artefacts import read_export

        cfg: ReplayConfig = self.config
        if not cfg.file:
            raise InputError("replay needs a file: --attacks replay:FILE (written by `python -m bench attacks export`)")
        rows = [r for r in read_export(cfg.file) if r["concept"] == concept.name and r["replayable"]
                and (not cfg.method or r["method"] == cfg.method) and (not cfg.attack or r["attack"] == cfg.attack)]
        if not rows:
            raise InputError(f"{cfg.file}: no replayable prompt for concept {concept.name!r}"
                             + (f" from method {cfg.method!r}" if cfg.method else "")
                             + (f" by attack {cfg.attack!r}" if cfg.attack else ""))
        return rows

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        rows = self._rows(concept)
        return AttackOutcome(prompts=[r["prompt"] for r in rows],
                             info={"file": self.config.file, "sources": sorted({f"{r['method']}/{r['attack']}"
                                                                                for r in rows})})

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return [(r["prompt"], 0) for r in self._rows(concept)]


ATTACK = Replay
