"""What a wider world costs before it is trained: size and generation speed of candidate architectures.

    python -m bench.devtools.worldsize [--candidate text_hidden=512,text_layers=12,max_length=32 ...]
                                       [--batch 64] [--out FILE.md]

Each candidate is world 3's pipeline (its VAE, tokenizer and sampler) with a randomly initialised text
encoder and UNet of the given shape: speed does not depend on the weights. World 3's own model is
measured first, in the same run, as the baseline. Per candidate: parameters of the text encoder (its
token table apart) and of the UNet, the model folder's safetensors size in fp32 and fp16 at the given
token-table size (``vocab``), and images per second at ``--batch`` with the world sampler (DDIM, 25
steps, classifier-free guidance), after one warm-up batch: the median of ``--repeats`` timed batches
and their range (one batch alone varied by a third between runs on 2 cores).

Candidate keys (world 3's value when left out): ``text_hidden`` (128), ``text_layers`` (6), ``text_heads``
(text_hidden / 64, at least 2), ``text_ff`` (4 x text_hidden), ``max_length`` (77: the tokens every prompt
is padded to), ``vocab`` (49,408: the token table), ``channels`` (32/64/128: the UNet's block widths,
``/``-separated), ``head_width`` (32).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Candidate:
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 0  # 0: text_hidden / 64, at least 2
    text_ff: int = 0  # 0: 4 x text_hidden
    max_length: int = 77
    vocab: int = 49_408
    channels: tuple[int, ...] = (32, 64, 128)
    head_width: int = 32

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """``key=value,key=value`` (channels as ``32/64/128``); an unknown key or a bad value is an error."""
        from bench.core.errors import InputError

        known = {f.name for f in fields(cls)}
        out = cls()
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in known:
                raise InputError(f"candidate item {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
            try:
                parsed: Any = tuple(int(v) for v in value.split("/")) if key == "channels" else int(value)
            except ValueError:
                raise InputError(f"candidate item {item!r}: {key} takes integers") from None
            out = replace(out, **{key: parsed})
        if out.text_hidden % out.heads or any(c % out.head_width for c in out.channels):
            raise InputError(f"candidate {text!r}: text_hidden must divide into its heads and every channel "
                             "width into head_width")
        return out

    @property
    def heads(self) -> int:
        return self.text_heads or max(2, self.text_hidden // 64)

    def label(self) -> str:
        return (f"text {self.text_hidden} x {self.text_layers} layers, {self.max_length} tokens, "
                f"UNet {'/'.join(map(str, self.channels))}")


def build(base: Any, cand: Candidate) -> Any:
    """World 3's pipeline with a random text encoder and UNet of ``cand``'s shape, made by the world
    build's own constructors (``bench.worldgen.train``)."""
    from diffusers import StableDiffusionPipeline

    from bench.worldgen.config import WorldConfig
    from bench.worldgen.train import make_text_encoder, make_unet

    cfg = WorldConfig().override([
        "text_encoder=joint", f"text_hidden={cand.text_hidden}", f"text_layers={cand.text_layers}",
        f"text_heads={cand.heads}", f"text_ff={cand.text_ff or 4 * cand.text_hidden}",
        f"unet_channels={','.join(map(str, cand.channels))}", f"unet_head_width={cand.head_width}"])
    torch.manual_seed(0)
    tok = copy.deepcopy(base.tokenizer)
    tok.model_max_length = cand.max_length  # every prompt padded to this many tokens
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=make_text_encoder(cfg).eval(), tokenizer=tok,
                                   unet=make_unet(cfg).eval(), scheduler=base.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe: Any, vocab: int, batch: int, sampler: Any = None, repeats: int = 3) -> dict[str, float]:
    """Parameters, folder size at a ``vocab``-row token table, and images per second at ``batch`` under
    ``sampler`` (None: the world sampler): the median of ``repeats`` timed batches, with the slowest and
    fastest."""
    from bench.core.protocol import WORLD_SAMPLER
    from bench.worldgen.sampling import generate

    sampler = sampler or WORLD_SAMPLER
    table = pipe.text_encoder.get_input_embeddings().weight
    text = sum(p.numel() for p in pipe.text_encoder.parameters()) - table.numel()
    unet = sum(p.numel() for p in pipe.unet.parameters())
    vae = sum(p.numel() for p in pipe.vae.parameters())
    total = text + vocab * table.shape[1] + unet + vae
    prompts = ["a picture of a striped red circle"] * batch
    with torch.no_grad():
        warm = min(8, batch)
        generate(pipe, prompts[:warm], list(range(warm)), sampler)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate(pipe, prompts, list(range(batch)), sampler, batch=batch)
            rates.append(batch / (time.perf_counter() - start))
    rates.sort()
    return {"text_params": text, "table_params": vocab * table.shape[1], "unet_params": unet,
            "fp32_mb": total * 4 / 1e6, "fp16_mb": total * 2 / 1e6, "images_per_s": rates[len(rates) // 2],
            "images_per_s_range": (rates[0], rates[-1])}


def table(rows: list[tuple[str, dict[str, float]]], batch: int) -> str:
    lines = [f"| model | text encoder (M, table apart) | token table (M) | UNet (M) | folder fp32 / fp16 (MB) | "
             f"images/s at batch {batch} (median; range) |", "|---|---|---|---|---|---|"]
    for label, m in rows:
        lo, hi = m["images_per_s_range"]
        lines.append(f"| {label} | {m['text_params'] / 1e6:.2f} | {m['table_params'] / 1e6:.2f} | "
                     f"{m['unet_params'] / 1e6:.2f} | {m['fp32_mb']:.0f} / {m['fp16_mb']:.0f} | "
                     f"{m['images_per_s']:.1f} ({lo:.1f}-{hi:.1f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.core.errors import BenchError
    from bench.core.paths import ROOT
    from bench.world.presets import PRESET_FOLDERS
    from bench.worldgen.sampling import load_pipeline

    p = argparse.ArgumentParser(prog="python -m bench.devtools.worldsize", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidate", action="append", default=[], metavar="KEY=VALUE,...",
                   help="a candidate architecture (repeatable; keys in the module docstring)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed batches per model (the median is reported)")
    p.add_argument("--out", default=None, help="also write the table here (.md)")
    args = p.parse_args(argv)
    try:
        cands = [Candidate.parse(c) for c in args.candidate]
        base = load_pipeline(ROOT / PRESET_FOLDERS["3"][0] / "model")
        rows = [("world 3 (its trained model)", measure(base, base.text_encoder.config.vocab_size, args.batch,
                                                               repeats=args.repeats))]
        for cand in cands:
            rows.append((cand.label() + (f", {cand.vocab} tokens in the table" if cand.vocab != 49_408 else ""),
                         measure(build(base, cand), cand.vocab, args.batch, repeats=args.repeats)))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md = table(rows, args.batch)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
