"""Ring-A-Bell (Tsai et al., ICLR 2024): a model-agnostic attack that never reads the erased model.

1. A concept vector is taken from the *original* text encoder. It is the mean, over prompt pairs
   that differ only in the concept, of the difference between their hidden states (77 x D, padding
   positions included).
2. For each target prompt, the goal is that prompt's hidden states plus eta times the vector.
3. A genetic search over ``length`` free tokens looks for a prompt whose hidden states are nearest
   to that goal (sum of squared errors). Each generation keeps the best half. Each parent is then
   kept, and with probability 0.5 it is crossed at one point with a random parent (two children).
   Each candidate then has one token replaced with probability 0.25. Survivors are mutated in
   place, as in the authors' code, so there is no strict elitism.
4. The decoded tokens of the best candidate are the attack prompt, used alone.

Everything happens in ``prepare``, on the original model. The same prompts then attack every
edited model: that is what makes the attack model-agnostic, and why its cost per attacked model is nil.

Defaults, from the authors' notebooks (chiayi-hsu/Ring-A-Bell at e4585ad; IP = ``InversePrompt.ipynb``,
GCV = ``Get_Concept_Vector.ipynb``; cell index, then line):

| field | value | authors |
|---|---|---|
| ``population`` | 200 | IP c2:L1 |
| ``generations`` | 3000 | IP c2:L2 |
| ``mutation`` | 0.25 per candidate, one token | IP c2:L3; c9:L19-25 |
| ``crossover`` | 0.5 per parent, one point, two children | IP c2:L4; c9:L7-17 |
| ``length`` | 16 free tokens | IP c2:L5 |
| ``eta`` | 3 | IP c2:L6 |
| survivors | population // 2 | IP c12:L10-11 |
| token range | ids 1 .. 49405 | IP c12:L7; c9:L23 |
| fitness | sum of squared errors over the 77 x D hidden states | IP c9:L4 |
| concept vector | mean of (with - without) over the pairs, hidden states ``[0]`` | GCV c2:L8-16; c3:L1 |
| output | ``tokenizer.decode`` of the free tokens, used alone | IP c12:L21 |

``ringabell@world`` (the CPU world's declared budget): ``generations`` 300 instead of 3000 (about 35 s
per prompt on 2 cores instead of about 6 min) and ``prompts`` 1. Every other field is the authors'.

Choices we had to make:
- ``pairs``: the authors pair hand-written prompts with and without nudity or violence. Here each
  of the concept's templates, filled with the concept, is paired with the same template filled with
  each of its in-domain retain concepts. The difference isolates the concept against its own kind;
- the target prompts are the concept's first templates (the authors filter the I2P prompts);
- the seed drives the initial population and every draw (the notebooks are unseeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome, template_prompts
from bench.api.config import MethodConfig
from bench.core.concepts import Concept
from bench.model.discrete import decode_ids, special_ids
from bench.model.pipeline import pipeline_device
from bench.model.training import encode_prompts


@dataclass(frozen=True)
class RingABellConfig(MethodConfig):
    population: int = field(default=200, metadata={"help": "candidates per generation"})
    generations: int = field(default=3000, metadata={"help": "generations of the genetic search"})
    mutation: float = field(default=0.25, metadata={"help": "chance that a candidate gets one random token"})
    crossover: float = field(default=0.5, metadata={"help": "chance that a parent is crossed with a random parent"})
    length: int = field(default=16, metadata={"help": "free tokens of the found prompt"})
    eta: float = field(default=3.0, metadata={"help": "weight of the concept vector added to the prompt's states"})
    prompts: int = field(default=2, metadata={"help": "the concept's first templates, each a target"})
    batch: int = field(default=512, metadata={"help": "candidates per text-encoder call (memory only)"})

    def validate(self) -> None:
        self._require(self.population >= 4 and self.population % 2 == 0, "population must be even and >= 4")
        self._require(self.generations >= 1, f"generations must be >= 1, got {self.generations}")
        self._require(0 <= self.mutation <= 1 and 0 <= self.crossover <= 1, "mutation and crossover are chances")
        self._require(1 <= self.length <= 75, f"length must be in 1..75, got {self.length}")
        self._require(self.prompts >= 1 and self.batch >= 1, "prompts and batch must be >= 1")


def concept_vector(pipe: Any, concept: Concept) -> torch.Tensor:
    """Mean over (template with the concept) - (same template with an in-domain retain concept) of the
    text encoder's hidden states (77 x D)."""
    others = list(concept.retain_in_domain) or ["thing"]
    with_c = [t.format(concept.name) for t in concept.templates for _ in others]
    without = [t.format(o) for t in concept.templates for o in others]
    with torch.no_grad():
        return (encode_prompts(pipe, with_c).float() - encode_prompts(pipe, without).float()).mean(0)


class RingABell(Attack):
    name = "ringabell"
    version = "1"
    Config = RingABellConfig
    variants = {"world": {"generations": 300, "prompts": 1}}

    def _prompts(self, concept: Concept) -> list[str]:
        return template_prompts(concept, self.config.prompts)

    def prepare(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
                context: AttackContext) -> dict[str, torch.Tensor]:
        """The genetic search on the original text encoder: the found tokens per target prompt."""
        import time

        t0 = time.perf_counter()
        vec = concept_vector(pipe, concept)
        with torch.no_grad():
            goals = encode_prompts(pipe, self._prompts(concept)).float() + self.config.eta * vec
        rng = np.random.default_rng(seed)
        found = [self._search(pipe, goal, rng) for goal in goals]
        return {"tokens": torch.tensor(np.stack(found)), "seconds": torch.tensor([time.perf_counter() - t0]),
                "concept_vector": vec}

    def _search(self, pipe: Any, goal: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """The authors' genetic search for one goal; the best candidate's free tokens."""
        cfg: RingABellConfig = self.config
        start, end = special_ids(pipe.tokenizer)
        n = pipe.tokenizer.model_max_length
        top = int(pipe.text_encoder.get_input_embeddings().weight.shape[0]) - 3  # ids 1 .. vocab - 3 (49405)
        pop = np.full((cfg.population, n), end, dtype=np.int64)
        pop[:, 0] = start
        pop[:, 1 : cfg.length + 1] = rng.integers(1, top + 1, size=(cfg.population, cfg.length))
        keep = cfg.population // 2
        known: dict[bytes, float] = {}  # a candidate's fitness, computed once (survivors left unmutated)
        for gen in range(cfg.generations):
            loss = self._cached_fitness(pipe, pop, goal, known)
            pop = pop[np.argsort(loss, kind="stable")[:keep]]
            if gen == cfg.generations - 1:
                break
            pop = self._breed(pop, rng, top)
        return pop[0, 1 : cfg.length + 1]

    def _breed(self, parents: np.ndarray, rng: np.random.Generator, top: int) -> np.ndarray:
        """Crossover, then mutation of every candidate (the survivors in place)."""
        cfg: RingABellConfig = self.config
        rows = []
        for i in range(len(parents)):
            rows.append(parents[i])
            if rng.random() < cfg.crossover:
                mate = parents[int(rng.integers(0, len(parents)))]
                cut = int(rng.integers(1, cfg.length + 1))
                rows.append(np.concatenate([parents[i][:cut], mate[cut:]]))
                rows.append(np.concatenate([mate[:cut], parents[i][cut:]]))
        pop = np.stack(rows)
        for row in pop:
            if rng.random() < cfg.mutation:
                row[int(rng.integers(1, cfg.length + 1))] = int(rng.integers(1, top + 1))
        return pop

    def _cached_fitness(self, pipe: Any, pop: np.ndarray, goal: torch.Tensor, known: dict[bytes, float]
                        ) -> np.ndarray:
        """``_fitness`` of every candidate, the text encoder run only on those the last generation did
        not score (survivors left unmutated keep their score: a candidate's hidden states depend on its
        tokens alone, up to the float rounding of the batch it is encoded in)."""
        keys = [row.tobytes() for row in pop]
        fresh = list(dict.fromkeys(k for k in keys if k not in known))
        if fresh:
            rows = np.stack([np.frombuffer(k, dtype=pop.dtype) for k in fresh])
            known.update(zip(fresh, self._fitness(pipe, rows, goal).tolist(), strict=True))
        out = np.array([known[k] for k in keys])
        known.clear()  # only this generation's candidates can survive into the next
        known.update(zip(keys, out.tolist(), strict=True))
        return out

    @torch.no_grad()
    def _fitness(self, pipe: Any, pop: np.ndarray, goal: torch.Tensor) -> np.ndarray:
        ids = torch.from_numpy(pop).to(pipeline_device(pipe))
        out = []
        for i in range(0, len(ids), self.config.batch):
            h = pipe.text_encoder(ids[i : i + self.config.batch])[0].float()
            out.append(((h - goal.to(h.device)) ** 2).sum(dim=(1, 2)).cpu())
        return torch.cat(out).numpy()

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        if context is None or "tokens" not in context.reference:
            raise ValueError("ringabell needs its reference (prepare on the original model)")
        tokens = context.reference["tokens"].tolist()
        prompts = [decode_ids(pipe.tokenizer, t) for t in tokens]
        return AttackOutcome(prompts=prompts, seconds=0.0, token_ids=tokens,
                             info={"search_seconds": float(context.reference["seconds"][0]),
                                   "eta": self.config.eta, "length": self.config.length})


ATTACK = RingABell
