"""RECE (Gong et al., ECCV 2024): reliable and efficient concept erasure, UCE followed by rounds of
closed-form adversarial embeddings erased in closed form.

Stage 1 is UCE's closed-form edit of every UNet cross-attention key and value projection
(``attn2.to_k``, ``attn2.to_v``), as the authors' UCE checkpoints were made: the concept's prompt,
from its last word token to the end of the sequence, is sent to what each layer outputs for the
guide prompt at the aligned positions (the guide's own last word token, here the start token of the
empty prompt), the empty prompt's 77 tokens are kept::

    W1 = (l1 W0 + e sum (W0 g) c^T + p1 sum (W0 r) r^T) (l1 I + e sum c c^T + p1 sum r r^T)^-1

Each round (the authors' epoch) then asks, in closed form, which text embedding makes the edited
layers output what the original layers output for the concept (the adversarial embedding ``c*``,
regularised towards zero), for all 77 tokens of the concept's prompt ``c``, all layers at once::

    c* = c [(reg I + sum_l W_l^T W_l)^-1 (sum_l W_l^T W0_l)]^T

and erases ``c*`` as UCE erases a prompt, from the current weights, token by token against the
guide prompt's 77 tokens, with the retained prompts' 77 tokens kept::

    W <- (l W + e sum (W g) c*^T + p sum (W r) r^T) (l I + e sum c* c*^T + p sum r r^T)^-1

No images and no gradient steps: the few-shot images the harness passes are not used, and no choice
is random (``seed`` is recorded, never drawn from).

Defaults, from the authors' ``CharlesGong12/RECE`` (commit 403a67f, 2024-10-29): ``train_object.py``
(O), ``erase_methods/uce.py`` (E), ``utils/embedding_calculation/close_form_emb.py`` (C),
``erase_methods/train_uce.py`` (U, their copy of UCE, which made the ``target_ckpt`` they start from),
``README.md`` (R), ``train.py`` (N, nudity) and ``train_artists.py`` (A):

| field | default | where |
|---|---|---|
| edited modules | every UNet ``attn2`` ``to_v`` and ``to_k`` (``with_to_k=True``) | E:12-31, C:137-170 |
| ``uce_init`` | true: the rounds start from a UCE checkpoint (``--target_ckpt``) | O:126, O:273-276 |
| ``uce_lamb`` | 0.5 | U:186 (UCE ``train_erase.py`` L442 at 35e91e2) |
| ``uce_preserve_scale`` | none: ``max(0.1, 1/len(retain))`` to 3 decimals, 1.0 with the empty prompt alone | U:184, U:291-294 |
| UCE keys and values | the concept's and guide's embeddings from their last word token on, trimmed to one length | U:107-117 |
| UCE guide | ``" "`` (``''`` becomes ``' '``; the same tokens) | U:254-256, U:70-72 |
| UCE retained | ``[""] + preserve``, all 77 tokens | U:273-286, U:146-167 |
| ``rounds`` | 1 (objects and art; nudity 3, unsafe 2) | O:120, A:41, N:43, R:52-55 |
| adversarial embedding | ``close_regzero``: all 77 tokens, every layer's ``to_v`` and ``to_k``, from the current and original weights | O:133, O:310, C:187-209 |
| ``reg_scale`` | 1e-3 (``--regular_scale``; 1e-1 for nudity and "easy" objects) | O:135, R:52-55 |
| ``lamb`` | 0.1 | O:130, R:50 |
| ``erase_scale`` | 1 (the UCE checkpoints: 1 too) | O:129, U:187 |
| ``preserve_scale`` | 0.1 | O:127, R:50 |
| ``guide`` | ``" "`` (``--guided_concepts`` none; ``art`` for artists) | O:214-215, ``scripts/art.sh``:4 |
| round keys and values | ``c*``'s 77 tokens against the guide's 77 tokens (``technique='replace'``) | O:295-301, E:56-82 |
| round retained | ``[""] + preserve`` (none for objects), all 77 tokens | O:233-237, E:84-107 |
| solve | ``mat1 @ inverse(mat2)`` per matrix, float32, from the layer's current weights | E:52-54, E:109 |

Choices the authors leave to us, exposed as config fields: ``preserve`` (``"none"``, the object
script's default; ``"concept"`` adds the concept set's ``preserve`` prompts to the empty prompt in
both stages, as the art script adds every other artist, A:162-176); ``erase_scale`` is one field for
both stages (both 1 in the authors' runs), so the strength knob moves the whole method;
``expand_prompts`` (false; true erases the authors' UCE templates too, U:231-245, in both stages,
each with its own adversarial embedding, as the authors handle several concepts, O:287-313; the guide
is not put in the templates, U:254-261, unlike the ``uce`` adapter's);
``solve_dtype`` (float32 as the authors, or float64). The authors' scripts generate images after
every round and keep the round their classifier scores best on the evaluation prompts (O:316-327,
N:262-275); a method never sees the evaluation, so we run exactly ``rounds`` rounds. Their other
adversarial-embedding forms (``close_standardreg``, ``close_surrogatereg``) are not ported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from PIL import Image

from bench.api.config import MethodConfig
from bench.api.method import Eraser, Knob
from bench.core.concepts import Concept
from bench.model.crossattn import expansion_templates, kv_parameter_names, kv_parameters
from bench.model.pipeline import pipeline_device


@dataclass(frozen=True)
class ReceConfig(MethodConfig):
    rounds: int = field(default=1, metadata={"help": "adversarial rounds after UCE (the authors' epochs)"})
    reg_scale: float = field(default=1e-3, metadata={"help": "pull of the adversarial embedding towards zero"})
    lamb: float = field(default=0.1, metadata={"help": "weight of the current weights in each round's solve"})
    erase_scale: float = field(default=1.0, metadata={"help": "erase weight, in the UCE stage and every round"})
    preserve_scale: float = field(default=0.1, metadata={"help": "weight of the retained prompts in each round"})
    guide: str = field(default="", metadata={"help": "what the concept is sent to ('' = the empty prompt)"})
    preserve: Literal["none", "concept"] = field(
        default="none", metadata={"help": "retain the empty prompt only, or also the concept set's preserve prompts"})
    uce_init: bool = field(default=True, metadata={"help": "start the rounds from UCE's edit, as the authors"})
    uce_lamb: float = field(default=0.5, metadata={"help": "lamb of the UCE stage"})
    uce_preserve_scale: float | None = field(
        default=None, metadata={"help": "preserve scale of the UCE stage (None: max(0.1, 1/len(retained)), 3 decimals)"})
    expand_prompts: bool = field(
        default=False, metadata={"help": "erase the concept in the authors' UCE templates too, in both stages"})
    solve_dtype: Literal["float32", "float64"] = field(
        default="float32", metadata={"help": "precision of the solves (the authors: float32)"})

    def validate(self) -> None:
        self._require(self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}")
        self._require(self.rounds > 0 or self.uce_init, "rounds 0 without uce_init would change nothing")
        self._require(self.reg_scale > 0, f"reg_scale must be > 0 (it keeps the solve invertible), got {self.reg_scale}")
        self._require(self.lamb > 0, f"lamb must be > 0 (it keeps the solve invertible), got {self.lamb}")
        self._require(self.uce_lamb > 0, f"uce_lamb must be > 0, got {self.uce_lamb}")
        self._require(self.erase_scale >= 0, f"erase_scale must be >= 0, got {self.erase_scale}")
        self._require(self.preserve_scale >= 0, f"preserve_scale must be >= 0, got {self.preserve_scale}")
        self._require(self.uce_preserve_scale is None or self.uce_preserve_scale >= 0,
                      f"uce_preserve_scale must be >= 0, got {self.uce_preserve_scale}")


def hidden_states(pipe: Any, prompts: Sequence[str], dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """(n, 77, d) last hidden states of the padded prompts, and each prompt's token count (start and
    end tokens included)."""
    tok = pipe.tokenizer
    enc = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")
    hidden = pipe.text_encoder(enc.input_ids.to(pipeline_device(pipe)))[0]
    return hidden.to(dtype), enc.attention_mask.sum(dim=1).tolist()


def aligned(old: torch.Tensor, n_old: int, new: torch.Tensor, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' UCE pairing: both sequences from their last word token on, trimmed to one length."""
    i, j = n_old - 2, n_new - 2
    far = max(i, j)
    length = old.shape[0]
    return old[i:length - (far - i)], new[j:length - (far - j)]


def closed_form(w: torch.Tensor, keys: torch.Tensor, guide: torch.Tensor, retain: torch.Tensor, lamb: float,
                erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """The weight that sends each row of ``keys`` to ``w`` of the matching row of ``guide``, keeps ``w``
    on the rows of ``retain`` and stays near ``w`` (rows are token embeddings)."""
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    mat1 = lamb * w + erase_scale * (w @ guide.T) @ keys + preserve_scale * (w @ retain.T) @ retain
    mat2 = lamb * eye + erase_scale * keys.T @ keys + preserve_scale * retain.T @ retain
    return mat1 @ torch.inverse(mat2)


def adversarial(concept: torch.Tensor, current: Sequence[torch.Tensor], original: Sequence[torch.Tensor],
                reg_scale: float) -> torch.Tensor:
    """The embedding whose outputs through the ``current`` layers best match the ``original`` layers'
    outputs for ``concept`` (least squares over every layer, ridge ``reg_scale`` towards zero)."""
    d = concept.shape[-1]
    gram = reg_scale * torch.eye(d, dtype=concept.dtype, device=concept.device)
    cross = torch.zeros_like(gram)
    for w, w0 in zip(current, original, strict=True):
        gram += w.T @ w
        cross += w.T @ w0
    return concept @ (torch.inverse(gram) @ cross).T


class Rece(Eraser):
    name = "rece"
    version = "1"
    Config = ReceConfig
    # A closed form, not a loss: the contract suite checks the judge at the defaults ("star" seen in 8/8
    # world-3 images before, 0/8 after; see docs/methods.md, "RECE").
    erasure_check: ClassVar[dict[str, Any]] = {}  # the defaults
    strength = (Knob("erase_scale", 0.25, 4.0, help="weight of the erase term, UCE stage and rounds"),
                Knob("rounds", 1, 8, integer=True, help="adversarial rounds after the UCE stage"))
    tune_choices = {"expand_prompts": (False, True)}  # as UCE: bench tune walks the erase_scale ladder for each
    quick = {"rounds": 1}  # closed forms only: one round is the whole method at the authors' object default

    def edited_parameters(self, pipe: Any) -> list[str]:
        return kv_parameter_names(pipe)

    def _prompts(self, concept: Concept) -> tuple[list[str], list[str]]:
        cfg = self.config
        erase = [concept.name]
        if cfg.expand_prompts:
            templates = expansion_templates(concept.type)
            erase += [t.format(concept.name) for t in templates]
        retain = [""] + (list(concept.preserve) if cfg.preserve == "concept" else [])
        return erase, retain

    @torch.no_grad()
    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Any:
        from bench.model.training import Stopwatch, count_params, snapshot

        cfg = self.config
        params = kv_parameters(pipe, self.name)
        originals = snapshot(params)
        dtype = torch.float64 if cfg.solve_dtype == "float64" else torch.float32
        with Stopwatch(pipeline_device(pipe)) as sw:
            erase, retain = self._prompts(concept)
            c, n_c = hidden_states(pipe, erase, dtype)
            g, n_g = hidden_states(pipe, [cfg.guide] * len(erase), dtype)
            r = hidden_states(pipe, retain, dtype)[0].flatten(0, 1)  # every token of every retained prompt
            device = c.device
            w0 = {k: v.to(device=device, dtype=dtype) for k, v in originals.items()}
            cur = dict(w0)
            if cfg.uce_init:
                pairs = [aligned(c[i], n_c[i], g[i], n_g[i]) for i in range(len(erase))]
                keys, guide = torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs])
                ps = cfg.uce_preserve_scale
                if ps is None:  # the authors' rule (train_uce.py L291-294)
                    ps = round(max(0.1, 1 / len(retain)), 3)
                cur = {k: closed_form(w, keys, guide, r, cfg.uce_lamb, cfg.erase_scale, ps) for k, w in cur.items()}
            guide = g.flatten(0, 1)
            for _ in range(cfg.rounds):
                names = list(cur)
                keys = torch.cat([adversarial(ci, [cur[k] for k in names], [w0[k] for k in names], cfg.reg_scale)
                                  for ci in c])
                cur = {k: closed_form(w, keys, guide, r, cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
                       for k, w in cur.items()}
            for k, p in params.items():
                p.data.copy_(cur[k].to(p.dtype))
        return self.make_edit(pipe, originals, sw.seconds, count_params(params), concept, seed,
                              erase_prompts=erase, guide=cfg.guide, retained=retain)


METHOD = Rece
